"""Run a job handler in-process against the test app's database, to kill it at an exact point."""

from __future__ import annotations

import threading

from backend.db.models import Job
from backend.jobs.context import JobContext
from backend.store import FileStore


def context_for(api, job_id: int, stop: threading.Event | None = None) -> JobContext:
    """The JobContext a worker would build for ``job_id`` (checkpoint and attempt as stored)."""
    with api.db.session() as s:
        job = s.get(Job, job_id)
        s.expunge(job)
    store = FileStore(api.settings.workspace_dir)
    return JobContext(job=job, db=api.db, settings=api.settings, store=store, stop_event=stop or threading.Event())


class Killed(Exception):
    """Stands in for SIGKILL: the handler stops dead, nothing after the raise runs."""


def die_on_checkpoint(ctx: JobContext, n: int) -> JobContext:
    """Make the ``n``-th ``ctx.save_checkpoint`` call (1-based) raise Killed instead of saving: the job
    dies after that step's output is written and before its checkpoint records it."""
    save, calls = ctx.save_checkpoint, [0]

    def save_or_die(state: dict) -> None:
        calls[0] += 1
        if calls[0] == n:
            raise Killed()
        save(state)

    ctx.save_checkpoint = save_or_die
    return ctx
