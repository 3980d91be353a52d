"""The worker loop: claim a job, run its handler with a heartbeat, record the outcome, repeat."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from types import FrameType
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete

from backend.config import Settings
from backend.core.allocator import keep_freed_memory
from backend.core.hooks import Stopped
from backend.db.models import Job, Worker, utcnow
from backend.db.session import Database
from backend.jobs import queue
from backend.jobs.context import JobContext
from backend.jobs.errors import JobError
from backend.jobs.heartbeat import Heartbeat
from backend.jobs.registry import get_kind, load_kinds
from backend.services.errors import DomainError
from backend.store import FileStore

log = logging.getLogger("rebalance.worker")


def _error_message(exc: BaseException) -> str:
    """The job's error line: the exception, plus what to do about it when that is known."""
    text = f"{type(exc).__name__}: {exc}"
    # Matched by name and text so this module stays free of torch; covers torch.OutOfMemoryError and
    # the RuntimeError older CUDA paths raise.
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (
            f"out of GPU memory: {first[:300]} -- lower batch_size (or the resolution, image_size or model"
            " size), or free the GPU from other processes, then submit again"
        )
    return text


class JobWorker:
    """One worker. ``run_forever`` serves until SIGTERM/SIGINT; ``run_once`` runs at most one job."""

    def __init__(self, settings: Settings, db: Database | None = None, worker_id: str | None = None) -> None:
        self.settings = settings
        self.db = db or Database(settings.database_url)
        self.store = FileStore(settings.workspace_dir)
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.shutdown = threading.Event()
        self._job_stop: threading.Event | None = None
        self._last_beat = 0.0
        load_kinds(settings.plugins)

    # -- registration ----------------------------------------------------------------------------
    def register(self) -> None:
        queue.recover_dead_local_workers(self.db)
        with self.db.session() as s:
            s.merge(Worker(id=self.id, hostname=socket.gethostname(), pid=os.getpid(), status="idle"))

    def unregister(self) -> None:
        with self.db.session() as s:
            s.execute(delete(Worker).where(Worker.id == self.id))

    def beat(self, status: str | None = None, job_id: int | None = None) -> None:
        now = time.monotonic()
        if status is None and now - self._last_beat < 2.0:
            return
        self._last_beat = now
        with self.db.session() as s:
            w = s.get(Worker, self.id)
            if w is None:
                w = Worker(id=self.id, hostname=socket.gethostname(), pid=os.getpid())
                s.add(w)
            w.heartbeat_at = utcnow()
            if status is not None:
                w.status = status
                w.current_job_id = job_id

    # -- signals ---------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("worker %s: signal %s, checkpointing and exiting", self.id, signum)
            self.request_shutdown()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def request_shutdown(self) -> None:
        self.shutdown.set()
        if self._job_stop is not None:
            self._job_stop.set()

    # -- loop ------------------------------------------------------------------------------------
    def run_forever(self) -> None:
        self.register()
        try:
            while not self.shutdown.is_set():
                if self.run_once() is None:
                    self.beat()
                    self.shutdown.wait(self.settings.poll_s)
        finally:
            self.unregister()

    def run_once(self) -> int | None:
        """Claim and run one job; returns its id, or None when there was nothing to do."""
        queue.requeue_expired(self.db)
        job = queue.claim(self.db, self.id, self.settings.lease_s)
        if job is None:
            return None
        self.beat("busy", job.id)
        try:
            self._run(job)
        finally:
            self.beat("idle", None)
        return job.id

    def _run(self, job: Job) -> None:
        kind = get_kind(job.kind)
        if kind is None:
            queue.finish(self.db, job.id, self.id, "failed", error=f"unknown job kind {job.kind!r} on this worker")
            return
        stop = threading.Event()
        self._job_stop = stop
        if self.shutdown.is_set():
            stop.set()
        ctx = JobContext(job=job, db=self.db, settings=self.settings, store=self.store, stop_event=stop)
        hb = Heartbeat(self.db, self.id, self.settings.lease_s, ctx, stop, on_tick=self.beat)
        ctx.flush_progress = hb.flush
        hb.start()
        outcome: tuple[str, dict[str, Any]]
        try:
            params = kind.params_model.model_validate(job.params, context={"settings": self.settings})
            result = kind.handler(ctx, params)
            outcome = ("succeeded", {"result": result or {}, "progress": 1.0, "message": "done"})
        except Stopped:
            outcome = self._interrupted(hb)
        except (JobError, DomainError) as exc:
            outcome = ("failed", {"error": str(exc), "message": "failed"})
        except ValidationError as exc:
            outcome = ("failed", {"error": f"invalid params: {exc}", "message": "failed"})
        except Exception as exc:
            if stop.is_set() and not hb.lost:
                outcome = self._interrupted(hb)  # the handler noticed the stop in its own way
            else:
                outcome = (
                    "failed",
                    {
                        "error": _error_message(exc),
                        "traceback": traceback.format_exc(),
                        "message": "failed",
                    },
                )
        finally:
            hb.done.set()
            hb.join()
            self._job_stop = None
        status, fields = outcome
        if hb.lost:
            log.warning("job %s: lease lost; another worker owns it now", job.id)
            return
        fields_pending, logs = ctx.take_pending()
        queue.add_logs(self.db, job.id, logs)
        if status != "succeeded":
            fields = {**{k: v for k, v in fields_pending.items() if k == "progress"}, **fields}
        if status == "failed":
            queue.add_logs(self.db, job.id, [("error", fields.get("traceback") or fields["error"])])
        queue.finish(self.db, job.id, self.id, status, **fields)

    def _interrupted(self, hb: Heartbeat) -> tuple[str, dict[str, Any]]:
        if hb.cancelled or queue.cancel_requested(self.db, hb.ctx.job_id):
            return "cancelled", {"message": "cancelled; output made so far is kept"}
        # Graceful shutdown: release the job so another worker resumes it; this start does not count.
        return "queued", {
            "message": "released by a stopping worker; will resume from its checkpoint",
            "attempts": max(hb.ctx.attempt - 1, 0),
        }


def run_worker(settings: Settings) -> None:
    """Entry point of a worker process (``python app.py worker`` and the embedded workers)."""
    keep_freed_memory()  # embedded workers are spawned fresh: they never ran the server's ``prepare``
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    worker = JobWorker(settings)
    worker.install_signal_handlers()
    log.info("worker %s serving %s", worker.id, worker.db.safe_url)
    worker.run_forever()
