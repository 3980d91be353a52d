"""Queue operations on the job table: submit, claim, lease renewal, finish, cancel, recovery.

Every function takes a ``Database`` and runs its own short write transaction, so claims are atomic:
on SQLite through BEGIN IMMEDIATE, on PostgreSQL through ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import json
import socket
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from backend.db.models import Job, JobLog, Worker, utcnow
from backend.db.session import Database
from backend.store import pid_alive

FINISHED = ("succeeded", "failed", "cancelled")


class IdempotencyConflict(Exception):
    """An idempotency key already names a job with another kind or other params."""

    def __init__(self, key: str, job: Job, fields: list[str]) -> None:
        self.key, self.job, self.fields = key, job, fields
        super().__init__(
            f"idempotency key {key!r} was already used for job {job.id} with a different "
            f"{', '.join(fields)}; send the same request to get that job again, or use a new key"
        )


def _differences(job: Job, kind: str, params: dict[str, Any]) -> list[str]:
    """What differs between a stored job and a new submit: ``kind`` and/or ``params.<name>`` entries."""
    if job.kind != kind:
        return ["kind"]
    stored = job.params or {}
    params = json.loads(json.dumps(params))  # as the JSON column gives it back: tuples become lists
    return [f"params.{name}" for name in sorted(set(stored) | set(params)) if stored.get(name) != params.get(name)]


def _same_or_conflict(job: Job, key: str, kind: str, params: dict[str, Any]) -> Job:
    fields = _differences(job, kind, params)
    if fields:
        raise IdempotencyConflict(key, job, fields)
    return job


def submit(
    db: Database,
    kind: str,
    params: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    max_attempts: int = 3,
) -> tuple[Job, bool]:
    """Queue a job. Returns (job, created).

    A known idempotency key with the same kind and params returns the existing job (a retried click);
    with anything else it raises IdempotencyConflict, since silently returning the first job would
    hide that the second request was never run. ``params`` are compared after validation, so both
    sides carry the same defaults.
    """
    if idempotency_key:
        with db.read_session() as s:
            existing = s.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
            if existing is not None:
                return _same_or_conflict(existing, idempotency_key, kind, params), False
    try:
        with db.session() as s:
            job = Job(kind=kind, params=params, idempotency_key=idempotency_key, max_attempts=max_attempts)
            s.add(job)
            s.flush()
            return job, True
    except IntegrityError:
        if not idempotency_key:
            raise
        # Two submits with this key raced; the other one won.
        with db.read_session() as s:
            existing = s.scalars(select(Job).where(Job.idempotency_key == idempotency_key)).one()
            return _same_or_conflict(existing, idempotency_key, kind, params), False


def claim(db: Database, worker_id: str, lease_s: float, kinds: list[str] | None = None) -> Job | None:
    """Atomically move the oldest queued job to running for ``worker_id``; None when the queue is empty.

    A job that has already been started ``max_attempts`` times (its worker keeps dying) is failed here
    instead of being run again.
    """
    while True:
        with db.session() as s:
            q = select(Job).where(Job.status == "queued").order_by(Job.id).limit(1)
            if kinds:
                q = q.where(Job.kind.in_(kinds))
            if not db.sqlite:
                q = q.with_for_update(skip_locked=True)
            job = s.scalars(q).first()
            if job is None:
                return None
            now = utcnow()
            if job.attempts >= job.max_attempts:
                job.status = "failed"
                job.error = (
                    f"gave up after {job.attempts} attempts: the worker running this job stopped "
                    "unexpectedly each time (killed, out of memory, or crashed)"
                )
                job.finished_at = now
                job.updated_at = now
                continue
            job.status = "running"
            job.worker_id = worker_id
            job.attempts += 1
            job.lease_expires_at = now + timedelta(seconds=lease_s)
            job.started_at = job.started_at or now
            job.updated_at = now
            job.eta_s = None
            s.flush()
            return job


def renew_lease(db: Database, job_id: int, worker_id: str, lease_s: float, fields: dict[str, Any]) -> bool:
    """Extend the lease and write progress fields; False if this worker no longer owns the job."""
    now = utcnow()
    with db.session() as s:
        res = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == "running")
            .values(lease_expires_at=now + timedelta(seconds=lease_s), updated_at=now, **fields)
        )
        return res.rowcount == 1


def cancel_requested(db: Database, job_id: int) -> bool:
    with db.read_session() as s:
        return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def finish(db: Database, job_id: int, worker_id: str, status: str, **fields: Any) -> bool:
    """Move an owned running job to a final state (or back to queued); False if ownership was lost."""
    now = utcnow()
    values: dict[str, Any] = {"status": status, "updated_at": now, **fields}
    if status in FINISHED:
        values["finished_at"] = now
        values["eta_s"] = None
    if status == "queued":
        values.update(worker_id=None, lease_expires_at=None)
    with db.session() as s:
        res = s.execute(
            update(Job).where(Job.id == job_id, Job.worker_id == worker_id, Job.status == "running").values(**values)
        )
        return res.rowcount == 1


def request_cancel(db: Database, job_id: int) -> Job | None:
    """Cancel a queued job at once; ask a running one to stop at its next chunk boundary."""
    with db.session() as s:
        q = select(Job).where(Job.id == job_id)
        if not db.sqlite:
            q = q.with_for_update()
        job = s.scalar(q)
        if job is None:
            return None
        now = utcnow()
        if job.status == "queued":
            job.status = "cancelled"
            job.finished_at = now
            job.message = "cancelled before it started"
        elif job.status == "running":
            job.cancel_requested = True
        job.updated_at = now
        s.flush()
        return job


def retry(db: Database, job_id: int) -> Job | None:
    """Queue a failed or cancelled job again; it resumes from its last checkpoint."""
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            return None
        if job.status in ("failed", "cancelled"):
            job.status = "queued"
            job.attempts = 0
            job.cancel_requested = False
            job.error = job.traceback = None
            job.finished_at = None
            job.worker_id = None
            job.message = "queued again (retry)"
            job.updated_at = utcnow()
        s.flush()
        return job


def requeue_expired(db: Database) -> int:
    """Jobs whose lease ran out (their worker died) go back to the queue, or to cancelled if asked."""
    now = utcnow()
    with db.session() as s:
        n = s.execute(
            update(Job)
            .where(Job.status == "running", Job.lease_expires_at < now, Job.cancel_requested.is_(True))
            .values(
                status="cancelled",
                finished_at=now,
                updated_at=now,
                worker_id=None,
                message="cancelled (its worker stopped)",
            )
        ).rowcount
        n += s.execute(
            update(Job)
            .where(Job.status == "running", Job.lease_expires_at < now)
            .values(
                status="queued",
                worker_id=None,
                lease_expires_at=None,
                updated_at=now,
                message="re-queued: its worker stopped responding",
            )
        ).rowcount
        return n


def recover_dead_local_workers(db: Database) -> int:
    """On start: release jobs held by workers on this host whose process no longer exists."""
    host = socket.gethostname()
    with db.session() as s:
        dead = [w.id for w in s.scalars(select(Worker).where(Worker.hostname == host)) if not pid_alive(w.pid)]
        if not dead:
            return 0
        now = utcnow()
        n = s.execute(
            update(Job)
            .where(Job.status == "running", Job.worker_id.in_(dead))
            .values(
                status="queued",
                worker_id=None,
                lease_expires_at=None,
                updated_at=now,
                message="re-queued: recovered after its worker died",
            )
        ).rowcount
        s.execute(delete(Worker).where(Worker.id.in_(dead)))
        return n


def add_logs(db: Database, job_id: int, lines: list[tuple[str, str]]) -> None:
    if not lines:
        return
    with db.session() as s:
        s.add_all(JobLog(job_id=job_id, level=level, message=msg) for level, msg in lines)
