"""Run one product job to its end in the benchmark's own process, as a user's worker would (shared by the
benchmark scripts that go through the product's jobs)."""

from __future__ import annotations

import time
from typing import Any

from backend.config import Settings
from backend.jobs import queue
from backend.jobs.worker import JobWorker


def run(db: Any, settings: Settings, kind: str, params: dict[str, Any], show_result: bool = False) -> dict[str, Any]:
    """Submit and run one job; its result (exits with the job's error if it failed). Prints its wall time."""
    job, _ = queue.submit(db, kind, params)
    t0 = time.perf_counter()
    JobWorker(settings, db=db, worker_id=f"bench-{job.id}").run_once()
    with db.read_session() as s:
        row = s.get(type(job), job.id)
        if row.status != "succeeded":
            raise SystemExit(f"{kind} job failed: {row.error}")
        shown = f"  {dict(row.result)}" if show_result else ""
        print(f"  {kind:18s} {time.perf_counter() - t0:6.1f} s{shown}", flush=True)
        return dict(row.result)
