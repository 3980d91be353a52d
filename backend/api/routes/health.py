"""GET /api/health: database status, live workers, the compute device and the executor (local or Ray).

Health stays open under ``--auth`` (load balancers and the start-up wait poll it), so what it tells an
anonymous caller is only that the service is up: ``status``, ``version``, the device, how many workers
are live, whether the database answers and which executor runs the jobs. Where the database is (its URL:
user, host, database), its errors, the workers' hosts and PIDs and the Ray cluster's address and size
are shown only to a caller with the credentials (or to anyone when the server runs without ``--auth``,
where the whole API is open anyway).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import select

from backend import __version__
from backend.api.deps import DatabaseDep, SettingsDep
from backend.api.middleware import credentials_match
from backend.db.models import Worker, utcnow
from backend.jobs import ray_executor

router = APIRouter(tags=["health"])


@router.get("/health")
def health(request: Request, db: DatabaseDep, settings: SettingsDep) -> dict[str, Any]:
    """``ok`` or ``degraded`` and the executor for anyone; the details with credentials (see the module)."""
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
    executor = ray_executor.describe(settings.ray_address)
    public = {
        "status": "ok" if database["ok"] else "degraded",
        "version": __version__,
        "database": {"ok": database["ok"]},
        "live_workers": len(workers),
        "device": settings.device,
        "executor": {k: executor[k] for k in ("executor", "ok") if k in executor},
    }
    if settings.auth and not credentials_match(request.headers.get("authorization"), settings.auth):
        return public
    return {**public, "database": database, "workers": workers, "executor": executor}
