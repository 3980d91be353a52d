"""/api/concepts: Stable Diffusion personalised on real images (job `personalize_sd`), their loss curves
and sample grids; `generate_sd` uses one through `concept_id`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel
from sqlalchemy import select

from backend.api.deps import ReadSessionDep, StoreDep, not_found
from backend.core.types import DbId, DbOffset
from backend.db.models import Concept, Job
from backend.services.concepts import artifact_path, samples_path
from backend.services.concepts import get_concept as concept_row

router = APIRouter(prefix="/concepts", tags=["concepts"])


class LossPoint(BaseModel):
    step: int  # optimiser steps done at the end of the stretch
    loss: float | None  # mean noise-prediction MSE over the stretch (the loss curve)


class ConceptOut(BaseModel):
    id: int
    name: str
    job_id: int | None
    job_status: str | None
    method: str  # textual_inversion | lora
    base_model: str  # generate_sd must use this model with the concept
    token: str  # the word prompts use for the concept
    steps: int  # steps asked for
    steps_done: int
    created_at: datetime


class ConceptDetail(ConceptOut):
    params: dict[str, Any]
    history: list[LossPoint]
    info: dict[str, Any]
    samples: list[str]  # URL of each saved sample grid, oldest first
    artifact_path: str | None  # diffusers-readable weights + concept.json, relative to the workspace


def _summary(session: ReadSessionDep, row: Concept) -> dict[str, Any]:
    status = None if row.job_id is None else session.scalar(select(Job.status).where(Job.id == row.job_id))
    return {
        "id": row.id,
        "name": row.name,
        "job_id": row.job_id,
        "job_status": status,
        "method": row.method,
        "base_model": row.base_model,
        "token": row.token,
        "steps": int((row.params or {}).get("steps", row.steps_done)),
        "steps_done": row.steps_done,
        "created_at": row.created_at,
    }


@router.get("", response_model=list[ConceptOut])
def list_concepts(
    session: ReadSessionDep, offset: DbOffset = 0, limit: int = Query(100, ge=1, le=1000)
) -> list[ConceptOut]:
    rows = session.scalars(select(Concept).order_by(Concept.id.desc()).offset(offset).limit(limit))
    return [ConceptOut(**_summary(session, row)) for row in rows]


@router.get("/{concept_id}", response_model=ConceptDetail)
def get_concept(concept_id: DbId, session: ReadSessionDep, store: StoreDep) -> ConceptDetail:
    """Method, base model, token, steps, loss curve, source summary and sample-grid URLs."""
    row = concept_row(session, concept_id)
    steps = [h["step"] for h in row.history or [] if store.path(samples_path(concept_id, h["step"])).is_file()]
    return ConceptDetail(
        **_summary(session, row),
        params=row.params or {},
        history=[LossPoint(**h) for h in row.history or []],
        info=row.info or {},
        samples=[f"/api/concepts/{concept_id}/samples/{s}" for s in steps],
        artifact_path=artifact_path(concept_id) if row.steps_done else None,
    )


@router.get("/{concept_id}/samples/{step}", response_class=FileResponse)
def get_samples(concept_id: DbId, step: int, session: ReadSessionDep, store: StoreDep) -> FileResponse:
    """PNG row of images of the token after `step` steps, the same seeds in every grid."""
    row = concept_row(session, concept_id)
    path = store.path(samples_path(concept_id, step))
    if not 1 <= step <= row.steps_done or not path.is_file():
        raise not_found(f"concept {concept_id} step", step)
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "public, max-age=86400, immutable"})
