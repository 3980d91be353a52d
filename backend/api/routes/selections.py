"""/api/selections: active-learning results (picks, rounds, feature map) and their human review."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.api.deps import DatabaseDep, ReadSessionDep, SessionDep, SettingsDep, StoreDep
from backend.api.routes.datasets import zip_response
from backend.api.schemas import JobOut
from backend.core.types import DbId
from backend.db.models import PoolImage, Selection, SelectionPick
from backend.generation.prompts import MAX_SEED
from backend.jobs import queue
from backend.jobs.registry import get_kind
from backend.services import selections as service
from backend.services.rows import job_statuses

router = APIRouter(prefix="/selections", tags=["selections"])


class PickOut(BaseModel):
    image_id: int
    pool_id: int | None  # the pool the image belongs to
    prompt: str | None  # the image's prompt (None for GAN / diffusion images, which have none)
    seed: int | None  # the image's generation seed
    rank: int
    round: int
    score: float
    minority_prob: float | None  # mean MC-dropout posterior of the target class
    review: str  # pending | accepted | rejected
    near_copy: bool  # within the near-copy distance of a real training image
    nn_distance: float | None  # centred cosine distance to the nearest real training image
    replaces: int | None  # image id of the rejected pick this one replaced
    url: str


class SelectionSummary(BaseModel):
    id: int
    dataset_id: int
    job_id: int | None
    params: dict[str, Any]
    picks: int
    status: str  # the select job's status: only "succeeded" selections with picks are usable variants
    created_at: datetime


class SelectionOut(BaseModel):
    id: int
    dataset_id: int
    job_id: int | None
    params: dict[str, Any]
    info: dict[str, Any]  # target class, config, real class counts; reserve size (not the reserve itself)
    rounds: list[dict[str, Any]]
    feature_map: dict[str, Any]
    picks: list[PickOut]
    created_at: datetime


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    accept: list[DbId] = Field(default_factory=list, max_length=100_000)
    reject: list[DbId] = Field(default_factory=list, max_length=100_000)
    replace_rejected: bool = False


class ReviewOut(BaseModel):
    selection: SelectionOut
    replaced: list[list[int]]  # [rejected image id, replacement image id]
    unreplaced: list[int]  # rejected ids left without a replacement (reserve exhausted)


def _pick_out(row: SelectionPick, image: PoolImage | None) -> PickOut:
    return PickOut(
        image_id=row.image_id,
        pool_id=None if image is None else image.pool_id,
        prompt=None if image is None else image.prompt,
        seed=None if image is None else image.seed,
        rank=row.rank,
        round=row.round,
        score=row.score,
        minority_prob=row.minority_prob,
        review=row.review,
        near_copy=row.near_copy,
        nn_distance=row.nn_distance,
        replaces=(row.meta or {}).get("replaces"),
        url=f"/api/images/{row.image_id}",
    )


def _out(session: Session, sel: Selection) -> SelectionOut:
    info = dict(sel.info or {})
    info["reserve_left"] = len(info.pop("reserve", []))
    rows = service.picks(session, sel.id)
    ids = [p.image_id for p in rows]
    images = {i.id: i for i in session.scalars(select(PoolImage).where(PoolImage.id.in_(ids)))} if ids else {}
    return SelectionOut(
        id=sel.id,
        dataset_id=sel.dataset_id,
        job_id=sel.job_id,
        params=sel.params or {},
        info=info,
        rounds=sel.rounds or [],
        feature_map=sel.feature_map or {},
        picks=[_pick_out(p, images.get(p.image_id)) for p in rows],
        created_at=sel.created_at,
    )


@router.get("", response_model=list[SelectionSummary])
def list_selections(session: ReadSessionDep) -> list[SelectionSummary]:
    """Every selection, newest first, with its number of picks."""
    counts = dict(
        session.execute(select(SelectionPick.selection_id, func.count()).group_by(SelectionPick.selection_id)).all()
    )
    rows = session.scalars(select(Selection).order_by(Selection.id.desc())).all()
    statuses = job_statuses(session, [s.job_id for s in rows])
    return [
        SelectionSummary(
            id=s.id,
            dataset_id=s.dataset_id,
            job_id=s.job_id,
            params=s.params or {},
            picks=int(counts.get(s.id, 0)),
            status=statuses.get(s.job_id, "unknown"),
            created_at=s.created_at,
        )
        for s in rows
    ]


@router.get("/{selection_id}", response_model=SelectionOut)
def get_selection(selection_id: DbId, session: ReadSessionDep) -> SelectionOut:
    """Picks ordered by rank (image id, round, score, minority posterior, review state, near-copy flag),
    per-round summaries and the 2-D feature map."""
    return _out(session, service.get_selection(session, selection_id))


@router.post("/{selection_id}/review", response_model=ReviewOut)
def review_selection(selection_id: DbId, body: ReviewIn, session: SessionDep) -> ReviewOut:
    """Accept/reject picks by image id; with ``replace_rejected`` each rejected pick is replaced by the
    best unused candidate of the ranked reserve (near-copies skipped)."""
    outcome = service.review(session, selection_id, body.accept, body.reject, body.replace_rejected)
    session.commit()
    return ReviewOut(
        selection=_out(session, service.get_selection(session, selection_id)),
        replaced=[[a, b] for a, b in outcome.replaced],
        unreplaced=outcome.unreplaced,
    )


class SlotsOut(BaseModel):
    slots: dict[str, list[dict[str, Any]]]  # slot -> rows: value, candidates, picks, mean_score, acceptance_rate...
    weights: dict[str, dict[str, float]]  # slot -> value -> next round's sampling weight (smoothed, all > 0)
    candidates_with_slots: int


@router.get("/{selection_id}/slots", response_model=SlotsOut)
def selection_slots(
    selection_id: DbId,
    session: ReadSessionDep,
    smoothing: float = Query(1.0, gt=0, le=1000, description="Laplace smoothing of the next round's weights"),
) -> SlotsOut:
    """Per prompt-slot value of an SD pool: candidates, picks, mean pick score and review acceptance rate,
    plus the reweighted sampling weights a next generation round would use."""
    return SlotsOut(**service.selection_slots(session, selection_id, smoothing))


class NextRoundIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    smoothing: float = Field(1.0, gt=0, le=1000, description="additive smoothing of the slot weights (larger: flatter)")
    negative_classes: int = Field(
        0, ge=0, le=10, description="add this many classes the pool drifted to (quality panel) as negative-prompt terms"
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="job seed; default: a hash of (pool seed, selection)")
    count: int | None = Field(None, ge=1, le=1_000_000, description="images to generate; default: the pool's count")


class NextRoundOut(BaseModel):
    job: JobOut  # the queued generate_sd job
    vocabulary_id: int  # the saved, weighted vocabulary its params name
    vocabulary: dict[str, Any]  # template, slots, negative_prompt and weights {slot: {value: w}}
    negative_terms: list[str]  # classes added to the negative prompt


@router.post("/{selection_id}/next_round", response_model=NextRoundOut, status_code=status.HTTP_201_CREATED)
def next_round(
    selection_id: DbId,
    session: SessionDep,
    db: DatabaseDep,
    settings: SettingsDep,
    response: Response,
    body: NextRoundIn | None = None,
) -> NextRoundOut:
    """The closed loop: queue a ``generate_sd`` job like the selection's SD pool's, whose vocabulary draws
    each slot value in proportion to how well its images did in this selection (smoothed, never zero).
    409 while the selection is unfinished, 422 when its pools are not SD pools. The same request twice
    returns the first job (200)."""
    body = body or NextRoundIn()
    out = service.next_round(
        session,
        selection_id,
        smoothing=body.smoothing,
        negative_classes=body.negative_classes,
        seed=body.seed,
        count=body.count,
    )
    session.commit()  # the job reads its vocabulary row
    kind = get_kind("generate_sd")
    try:
        params = kind.params_model.model_validate(out["params"], context={"settings": settings})
    except ValidationError as exc:  # pool params from an older version of the kind
        errors = [{**e, "loc": ("body", "pool_params", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None
    dumped = params.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()[:16]
    try:
        job, created = queue.submit(
            db, "generate_sd", dumped, idempotency_key=f"next-round:{selection_id}:{digest}",
            max_attempts=settings.max_attempts,
        )  # fmt: skip
    except queue.IdempotencyConflict as exc:
        raise HTTPException(status_code=status.HTTP_409_CONFLICT, detail=str(exc)) from None
    if not created:
        response.status_code = status.HTTP_200_OK
    return NextRoundOut(
        job=JobOut.model_validate(job),
        vocabulary_id=out["vocabulary_id"],
        vocabulary=out["vocabulary"],
        negative_terms=out["negative_terms"],
    )


@router.get("/{selection_id}/export")
def export_selection(
    selection_id: DbId,
    session: ReadSessionDep,
    store: StoreDep,
    include_test: bool = Query(False, description="also write test/<class>/ images"),
) -> StreamingResponse:
    """The rebalanced dataset: the imbalanced training set plus this selection's accepted picks (and pending
    ones not flagged as near-copies), as an ImageFolder zip with ``metadata.jsonl`` provenance."""
    return zip_response(*service.export_selection(session, store, selection_id, include_test))
