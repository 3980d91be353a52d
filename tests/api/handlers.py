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
