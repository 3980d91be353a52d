"""The row a job creates, found again when the job resumes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db.models import Job

T = TypeVar("T")


def row_for_job(session: Session, model: type[T], job_id: int, create: Callable[[], T]) -> T:
    """The ``model`` row of ``job_id`` from an earlier attempt, or a new one from ``create()`` (flushed,
    so its id is set). A job resumed after a crash thereby keeps writing into the same dataset, pool,
    selection, GAN or benchmark instead of starting a second one."""
    row = session.scalars(select(model).where(model.job_id == job_id).order_by(model.id)).first()  # type: ignore[attr-defined]
    if row is None:
        row = create()
        session.add(row)
        session.flush()
    return row


def job_statuses(session: Session, job_ids: list[int | None]) -> dict[int, str]:
    """The status of each job that made a row (``queued`` … ``succeeded``), so lists can tell a usable
    result from a failed or unfinished one."""
    ids = sorted({i for i in job_ids if i is not None})
    if not ids:
        return {}
    return {i: status for i, status in session.execute(select(Job.id, Job.status).where(Job.id.in_(ids))).all()}
