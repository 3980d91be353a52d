"""The heartbeat of a running job: renews its lease, flushes progress and logs, watches for cancel."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from backend.db.session import Database
from backend.jobs import queue
from backend.jobs.context import JobContext

log = logging.getLogger("rebalance.worker")


class Heartbeat(threading.Thread):
    """Renews the running job's lease, flushes progress/logs and watches for cancellation."""

    TICK_S = 0.5  # cancel is noticed within a tick plus the handler's chunk time

    def __init__(
        self,
        db: Database,
        worker_id: str,
        lease_s: float,
        ctx: JobContext,
        stop_event: threading.Event,
        on_tick: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{ctx.job_id}")
        self.db = db
        self.worker_id = worker_id
        self.lease_s = lease_s
        self.ctx = ctx
        self.stop_event = stop_event
        self.on_tick = on_tick  # the worker's own liveness beat
        self.done = threading.Event()
        self.cancelled = False
        self.lost = False
        self._flush_lock = threading.Lock()

    def flush(self) -> None:
        with self._flush_lock:
            fields, logs = self.ctx.take_pending()
            queue.add_logs(self.db, self.ctx.job_id, logs)
            if not queue.renew_lease(self.db, self.ctx.job_id, self.worker_id, self.lease_s, fields):
                self.lost = True
                self.stop_event.set()

    def run(self) -> None:
        while not self.done.wait(self.TICK_S):
            try:
                self.flush()
                if queue.cancel_requested(self.db, self.ctx.job_id):
                    self.cancelled = True
                    self.stop_event.set()
                self.on_tick()
            except Exception:  # a transient DB error must not kill the heartbeat
                log.exception("heartbeat failed for job %s", self.ctx.job_id)
