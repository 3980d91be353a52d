"""/api/gans: trained DCGANs, their loss history and per-epoch sample grids (training: job `train_gan`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel
from sqlalchemy import select

from backend.api.deps import ReadSessionDep, StoreDep, not_found
from backend.core.types import DbId, DbOffset
from backend.db.models import Gan, Job
from backend.services.gans import get_gan as gan_row
from backend.services.gans import samples_path

router = APIRouter(prefix="/gans", tags=["gans"])


class EpochLoss(BaseModel):
    epoch: int
    d_loss: float | None
    g_loss: float | None


class GanOut(BaseModel):
    id: int
    name: str
    job_id: int | None
    job_status: str | None
    params: dict[str, Any]
    epochs_done: int
    created_at: datetime


class GanDetail(GanOut):
    history: list[EpochLoss]
    info: dict[str, Any]
    samples: list[str]  # URL of each finished epoch's fixed-noise grid, oldest first


def _job_status(session: ReadSessionDep, job_id: int | None) -> str | None:
    return None if job_id is None else session.scalar(select(Job.status).where(Job.id == job_id))


def _summary(session: ReadSessionDep, row: Gan) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "job_id": row.job_id,
        "job_status": _job_status(session, row.job_id),
        "params": row.params or {},
        "epochs_done": row.epochs_done,
        "created_at": row.created_at,
    }


@router.get("", response_model=list[GanOut])
def list_gans(session: ReadSessionDep, offset: DbOffset = 0, limit: int = Query(100, ge=1, le=1000)) -> list[GanOut]:
    rows = session.scalars(select(Gan).order_by(Gan.id.desc()).offset(offset).limit(limit))
    return [GanOut(**_summary(session, row)) for row in rows]


@router.get("/{gan_id}", response_model=GanDetail)
def get_gan(gan_id: DbId, session: ReadSessionDep) -> GanDetail:
    """Params, epochs done, per-epoch D/G losses, source summary and sample-grid URLs."""
    row = gan_row(session, gan_id)
    samples = [f"/api/gans/{gan_id}/samples/{e}" for e in range(1, row.epochs_done + 1)]
    return GanDetail(
        **_summary(session, row),
        history=[EpochLoss(**h) for h in row.history or []],
        info=row.info or {},
        samples=samples,
    )


@router.get("/{gan_id}/samples/{epoch}", response_class=FileResponse)
def get_samples(gan_id: DbId, epoch: int, session: ReadSessionDep, store: StoreDep) -> FileResponse:
    """PNG grid of 64 samples from the run's fixed noise after `epoch`."""
    row = gan_row(session, gan_id)
    path = store.path(samples_path(gan_id, epoch))
    if not 1 <= epoch <= row.epochs_done or not path.is_file():
        raise not_found(f"gan {gan_id} epoch", epoch)
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "public, max-age=86400, immutable"})
