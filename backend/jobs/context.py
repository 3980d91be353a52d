"""JobContext: what a running handler gets — progress, logs, checkpoints, stop checks, storage."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.orm import Session

from backend.config import Settings
from backend.core.hooks import Hooks
from backend.db.models import Job
from backend.db.session import Database
from backend.store import FileStore


def preview_path(job_id: int) -> str:
    """Where a job's picture of its work in progress is kept, relative to the workspace store."""
    return f"jobs/{int(job_id)}/preview.webp"


class JobContext:
    """Handed to a job handler. Progress and logs are buffered and flushed by the worker's heartbeat
    (so a fast loop never hammers the database); checkpoints are written immediately."""

    def __init__(
        self,
        *,
        job: Job,
        db: Database,
        settings: Settings,
        store: FileStore,
        stop_event: threading.Event,
    ) -> None:
        self.job_id = job.id
        self.kind = job.kind
        self.attempt = job.attempts
        self.checkpoint: dict[str, Any] = dict(job.checkpoint or {})
        self.settings = settings
        self.store = store
        self.db = db
        self._stop_event = stop_event
        self._lock = threading.Lock()
        self._pending: dict[str, Any] = {}
        self._logs: list[tuple[str, str]] = []
        self._t0 = time.monotonic()
        self._p0 = float(job.progress or 0.0)
        self._first: tuple[float, float] | None = None  # (time, fraction) of the first report of real progress
        self._preview_at = 0.0
        self.flush_progress: Callable[[], None] | None = None  # set by the worker's heartbeat

    # -- storage ---------------------------------------------------------------------------------
    @contextmanager
    def session(self) -> Iterator[Session]:
        """A write session that commits on exit."""
        with self.db.session() as s:
            yield s

    # -- progress and logs -----------------------------------------------------------------------
    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress in [0, 1]; the ETA is extrapolated from this attempt's rate."""
        fraction = min(max(float(fraction), 0.0), 1.0)
        now = time.monotonic()
        elapsed, done = now - self._t0, fraction - self._p0
        eta = elapsed * (1.0 - fraction) / done if done > 1e-6 and elapsed > 0.5 else None
        if self._first is None and done > 1e-6:
            self._first = (now, fraction)
        elif self._first is not None and fraction - self._first[1] > 1e-6:
            # From the first report of real progress on, the rate leaves out the start-up (loading a pipeline,
            # decoding a dataset) that the first report's own estimate had to include.
            t1, f1 = self._first
            eta = (now - t1) * (1.0 - fraction) / (fraction - f1)
        with self._lock:
            self._pending["progress"] = fraction
            self._pending["eta_s"] = None if eta is None else round(eta, 1)
            if message is not None:
                self._pending["message"] = message[:2000]

    def log(self, message: str, level: str = "info") -> None:
        with self._lock:
            self._logs.append((level, message[:10_000]))

    def take_pending(self) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        """For the heartbeat: the progress fields and log lines accumulated since the last flush."""
        with self._lock:
            fields, logs = self._pending, self._logs
            self._pending, self._logs = {}, []
        return fields, logs

    # -- stopping --------------------------------------------------------------------------------
    def should_stop(self) -> bool:
        """True when the job was cancelled, its worker is shutting down, or it lost its lease."""
        return self._stop_event.is_set()

    PREVIEW_EVERY_S = 0.5  # a preview is a small WebP; the studio polls every 2 s

    def preview(self, image: Any) -> None:
        """Keep ``image`` (H x W x 3 uint8, or a no-argument callable that makes one) as this job's
        picture of the work in progress (``GET /api/jobs/{id}/preview``); at most one write per
        ``PREVIEW_EVERY_S``. A callable is only called when the picture is written, so a caller at every
        denoising step pays for the picture at most twice a second."""
        now = time.monotonic()
        if now - self._preview_at < self.PREVIEW_EVERY_S:
            return
        self._preview_at = now
        if callable(image):
            image = image()
        from backend.generation.imagefiles import encode_webp

        self.store.write_bytes(preview_path(self.job_id), encode_webp(image, max_size=512))

    @property
    def hooks(self) -> Hooks:
        """This job's progress, log, stop and preview callbacks, for core code (which knows nothing of jobs)."""
        return Hooks(progress=self.progress, should_stop=self.should_stop, log=self.log, preview=self.preview)

    def stop_point(self, where: str = "") -> None:
        """Raise ``Stopped`` if the job must stop (the worker then cancels or releases it)."""
        self.hooks.stop_point(where)

    # -- checkpoints -----------------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Persist resume state now (call it after the chunk's output is committed)."""
        self.checkpoint = dict(state)
        if self.flush_progress is not None:
            self.flush_progress()
        with self.db.session() as s:
            job = s.get(Job, self.job_id)
            if job is not None:
                job.checkpoint = self.checkpoint
