"""JobContext's progress: the ETA a job's card shows."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from backend.jobs import context as context_module
from backend.jobs.context import JobContext


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_eta_leaves_out_the_start_up_once_real_progress_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 30.1: "ETA from the first step". Loading a pipeline took 10 s, then each 10 % takes 1 s: from the
    second report on, the estimate is the work's own rate (8 s left at 20 %), not one diluted by the start-up
    (44 s from the job's start)."""
    clock = Clock()
    monkeypatch.setattr(context_module.time, "monotonic", clock)
    job = SimpleNamespace(id=1, kind="generate_sd", attempts=1, checkpoint=None, progress=0.0)
    ctx = JobContext(job=job, db=None, settings=None, store=None, stop_event=threading.Event())  # type: ignore[arg-type]
    clock.now = 10.0
    ctx.progress(0.1, "step 1/10")
    assert ctx.take_pending()[0]["eta_s"] == 90.0  # one report: only the time since the start to go by
    clock.now = 11.0
    ctx.progress(0.2, "step 2/10")
    assert ctx.take_pending()[0]["eta_s"] == 8.0
    clock.now = 12.0
    ctx.progress(0.2)  # a second without progress: the rate since the first report halves
    assert ctx.take_pending()[0]["eta_s"] == 16.0
