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


def test_a_preview_thunk_is_only_made_when_the_throttle_lets_it_through(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """SD calls ``preview`` at every denoising step; the latent→RGB picture must not be computed for the
    steps whose picture the half-second throttle drops (it was made at every step, then thrown away)."""
    import numpy as np

    from backend.store import FileStore

    clock = Clock()
    monkeypatch.setattr(context_module.time, "monotonic", clock)
    job = SimpleNamespace(id=7, kind="generate_sd", attempts=1, checkpoint=None, progress=0.0)
    store = FileStore(tmp_path)
    ctx = JobContext(job=job, db=None, settings=None, store=store, stop_event=threading.Event())  # type: ignore[arg-type]
    made: list[float] = []

    def picture() -> np.ndarray:
        made.append(clock.now)
        return np.full((8, 8, 3), 128, np.uint8)

    for t in (1.0, 1.1, 1.2, 1.6, 1.7, 2.2):
        clock.now = t
        ctx.preview(picture)
    assert made == [1.0, 1.6, 2.2]
    assert (tmp_path / context_module.preview_path(7)).stat().st_size > 0
