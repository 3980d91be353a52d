"""/api/diffusions: diffusion models trained here, their loss curves and per-epoch class grids
(training: job `train_diffusion`; sampling into a pool: job `generate_diffusion`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel
from sqlalchemy import select

from backend.api.deps import ReadSessionDep, StoreDep, not_found
from backend.core.types import DbId, DbOffset
from backend.db.models import Diffusion, Job
from backend.services.diffusions import get_diffusion as diffusion_row
from backend.services.diffusions import model_path, samples_path

router = APIRouter(prefix="/diffusions", tags=["diffusions"])


class EpochLoss(BaseModel):
    epoch: int
    loss: float | None  # mean noise-prediction MSE of the epoch (the loss curve)
    steps: int  # optimiser steps done by the end of the epoch


class DiffusionOut(BaseModel):
    id: int
    name: str
    job_id: int | None
    job_status: str | None
    params: dict[str, Any]
    classes: list[str]
    epochs_done: int
    created_at: datetime


class DiffusionDetail(DiffusionOut):
    history: list[EpochLoss]
    info: dict[str, Any]
    samples: list[str]  # URL of each finished epoch's per-class grid, oldest first
    model_path: str | None  # the newest saved diffusers folder, relative to the workspace


def _summary(session: ReadSessionDep, row: Diffusion) -> dict[str, Any]:
    status = None if row.job_id is None else session.scalar(select(Job.status).where(Job.id == row.job_id))
    return {
        "id": row.id,
        "name": row.name,
        "job_id": row.job_id,
        "job_status": status,
        "params": row.params or {},
        "classes": row.classes or [],
        "epochs_done": row.epochs_done,
        "created_at": row.created_at,
    }


@router.get("", response_model=list[DiffusionOut])
def list_diffusions(
    session: ReadSessionDep, offset: DbOffset = 0, limit: int = Query(100, ge=1, le=1000)
) -> list[DiffusionOut]:
    rows = session.scalars(select(Diffusion).order_by(Diffusion.id.desc()).offset(offset).limit(limit))
    return [DiffusionOut(**_summary(session, row)) for row in rows]


@router.get("/{diffusion_id}", response_model=DiffusionDetail)
def get_diffusion(diffusion_id: DbId, session: ReadSessionDep, store: StoreDep) -> DiffusionDetail:
    """Params, classes, per-epoch losses, source summary, sample-grid URLs and the saved model's folder."""
    row = diffusion_row(session, diffusion_id)
    grids = [e for e in range(1, row.epochs_done + 1) if store.path(samples_path(diffusion_id, e)).is_file()]
    return DiffusionDetail(
        **_summary(session, row),
        history=[EpochLoss(**h) for h in row.history or []],
        info=row.info or {},
        samples=[f"/api/diffusions/{diffusion_id}/samples/{e}" for e in grids],
        model_path=model_path(diffusion_id, row.epochs_done) if row.epochs_done else None,
    )


@router.get("/{diffusion_id}/samples/{epoch}", response_class=FileResponse)
def get_samples(diffusion_id: DbId, epoch: int, session: ReadSessionDep, store: StoreDep) -> FileResponse:
    """PNG grid after `epoch`: a row per class (the first 16), the same noise in every column and epoch."""
    row = diffusion_row(session, diffusion_id)
    path = store.path(samples_path(diffusion_id, epoch))
    if not 1 <= epoch <= row.epochs_done or not path.is_file():
        raise not_found(f"diffusion {diffusion_id} epoch", epoch)
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "public, max-age=86400, immutable"})
