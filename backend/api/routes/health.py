"""GET /api/health: database status, live workers, the compute device and the executor (local or Ray)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from backend import __version__
from backend.api.deps import DatabaseDep, SettingsDep
from backend.db.models import Worker, utcnow
from backend.jobs import ray_executor

router = APIRouter(tags=["health"])


@router.get("/health")
def health(db: DatabaseDep, settings: SettingsDep) -> dict[str, Any]:
    database: dict[str, Any] = {"url": db.safe_url, "dialect": db.engine.dialect.name}
    workers: list[dict[str, Any]] = []
    try:
        db.ping()
        database["ok"] = True
        cutoff = utcnow() - timedelta(seconds=max(10.0, settings.lease_s))
        with db.read_session() as s:
            for w in s.scalars(select(Worker).where(Worker.heartbeat_at >= cutoff).order_by(Worker.started_at)):
                workers.append(
                    {
                        "id": w.id,
                        "hostname": w.hostname,
                        "pid": w.pid,
                        "status": w.status,
                        "current_job_id": w.current_job_id,
                        "heartbeat_at": w.heartbeat_at.isoformat(),
                    }
                )
    except Exception as exc:  # health must answer even when the database does not
        database.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    return {
        "status": "ok" if database["ok"] else "degraded",
        "version": __version__,
        "database": database,
        "workers": workers,
        "live_workers": len(workers),
        "device": settings.device,
        "executor": ray_executor.describe(settings.ray_address),
    }
