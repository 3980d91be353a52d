"""/api/selections: active-learning results (picks, rounds, feature map) and their human review."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.api.deps import ReadSessionDep, SessionDep, StoreDep, not_found
from backend.api.errors import field_error
from backend.data.export import export_zip
from backend.data.images import decode_image
from backend.data.variants import with_synthetic
from backend.db.models import Dataset, PoolImage, Selection, SelectionPick
from backend.jobs.errors import JobError
from backend.jobs.kinds.datasets import build_variant, dataset_from_row
from backend.jobs.kinds.selection import selected_image_ids
from backend.selection.review import apply_review

router = APIRouter(prefix="/selections", tags=["selections"])


class PickOut(BaseModel):
    image_id: int
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

    accept: list[int] = Field(default_factory=list, max_length=100_000)
    reject: list[int] = Field(default_factory=list, max_length=100_000)
    replace_rejected: bool = False


class ReviewOut(BaseModel):
    selection: SelectionOut
    replaced: list[list[int]]  # [rejected image id, replacement image id]
    unreplaced: list[int]  # rejected ids left without a replacement (reserve exhausted)


def _pick_out(row: SelectionPick) -> PickOut:
    return PickOut(
        image_id=row.image_id,
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


def _picks(session: Session, selection_id: int) -> list[SelectionPick]:
    return list(
        session.scalars(
            select(SelectionPick).where(SelectionPick.selection_id == selection_id).order_by(SelectionPick.rank)
        )
    )


def _out(session: Session, sel: Selection) -> SelectionOut:
    info = dict(sel.info or {})
    info["reserve_left"] = len(info.pop("reserve", []))
    return SelectionOut(
        id=sel.id,
        dataset_id=sel.dataset_id,
        job_id=sel.job_id,
        params=sel.params or {},
        info=info,
        rounds=sel.rounds or [],
        feature_map=sel.feature_map or {},
        picks=[_pick_out(p) for p in _picks(session, sel.id)],
        created_at=sel.created_at,
    )


@router.get("", response_model=list[SelectionSummary])
def list_selections(session: ReadSessionDep) -> list[SelectionSummary]:
    """Every selection, newest first, with its number of picks."""
    counts = dict(
        session.execute(select(SelectionPick.selection_id, func.count()).group_by(SelectionPick.selection_id)).all()
    )
    rows = session.scalars(select(Selection).order_by(Selection.id.desc())).all()
    return [
        SelectionSummary(
            id=s.id,
            dataset_id=s.dataset_id,
            job_id=s.job_id,
            params=s.params or {},
            picks=int(counts.get(s.id, 0)),
            created_at=s.created_at,
        )
        for s in rows
    ]


@router.get("/{selection_id}", response_model=SelectionOut)
def get_selection(selection_id: int, session: ReadSessionDep) -> SelectionOut:
    """Picks ordered by rank (image id, round, score, minority posterior, review state, near-copy flag),
    per-round summaries and the 2-D feature map."""
    sel = session.get(Selection, selection_id)
    if sel is None:
        raise not_found("selection", selection_id)
    return _out(session, sel)


@router.post("/{selection_id}/review", response_model=ReviewOut)
def review_selection(selection_id: int, body: ReviewIn, session: SessionDep) -> ReviewOut:
    """Accept/reject picks by image id; with ``replace_rejected`` each rejected pick is replaced by the
    best unused candidate of the ranked reserve (near-copies skipped)."""
    sel = session.get(Selection, selection_id)
    if sel is None:
        raise not_found("selection", selection_id)
    rows = _picks(session, selection_id)
    picks = [
        {
            "image_id": r.image_id,
            "rank": r.rank,
            "round": r.round,
            "review": r.review,
            "replaces": (r.meta or {}).get("replaces"),
        }
        for r in rows
    ]
    known = {r.image_id for r in rows}
    for name in ("accept", "reject"):
        unknown = [i for i in getattr(body, name) if i not in known]
        if unknown:
            raise field_error(("body", name), f"image ids {unknown} are not picks of selection {selection_id}")
    both = sorted(set(body.accept) & set(body.reject))
    if both:
        raise field_error(("body", "reject"), f"image ids {both} are both accepted and rejected")
    reserve = list((sel.info or {}).get("reserve", []))
    outcome = apply_review(picks, reserve, body.accept, body.reject, body.replace_rejected)
    by_id = {r.image_id: r for r in rows}
    for p in outcome.picks:
        row = by_id.get(p["image_id"])
        if row is not None:
            row.review = p["review"]
            continue
        session.add(
            SelectionPick(
                selection_id=selection_id,
                image_id=p["image_id"],
                rank=p["rank"],
                round=p["round"],
                score=p["score"],
                minority_prob=p.get("minority_prob"),
                review=p["review"],
                near_copy=bool(p.get("near_copy", False)),
                nn_distance=p.get("nn_distance"),
                meta={"pool_index": p.get("index"), "replaces": p["replaces"]},
            )
        )
    sel.info = {**(sel.info or {}), "reserve": outcome.reserve}
    session.commit()
    return ReviewOut(
        selection=_out(session, sel),
        replaced=[[a, b] for a, b in outcome.replaced],
        unreplaced=outcome.unreplaced,
    )


@router.get("/{selection_id}/export")
def export_selection(
    selection_id: int,
    session: ReadSessionDep,
    store: StoreDep,
    include_test: bool = Query(False, description="also write test/<class>/ images"),
) -> FileResponse:
    """The rebalanced dataset: the imbalanced training set plus this selection's accepted picks (and pending
    ones not flagged as near-copies), as an ImageFolder zip with ``metadata.jsonl`` provenance."""
    sel = session.get(Selection, selection_id)
    if sel is None:
        raise not_found("selection", selection_id)
    ids = selected_image_ids(session, selection_id)
    if not ids:
        raise HTTPException(status.HTTP_409_CONFLICT, f"selection {selection_id} has no accepted or pending picks")
    dataset = session.get(Dataset, sel.dataset_id)
    if dataset is None:
        raise not_found("dataset", sel.dataset_id)
    target = (sel.info or {}).get("target_class")
    digest = hashlib.sha256(json.dumps([dataset.cache_key, sel.params, ids, include_test]).encode()).hexdigest()[:16]
    out = store.path(f"exports/selection{selection_id}-{digest}.zip")
    if not out.exists():
        try:
            ds = dataset_from_row(store, dataset)
            base = build_variant(ds, "imbalanced", sel.params.get("imbalance"))
        except JobError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        if target not in ds.classes:
            raise HTTPException(status.HTTP_409_CONFLICT, f"selection {selection_id} has not finished")
        rows = {r.id: r for r in session.scalars(select(PoolImage).where(PoolImage.id.in_(ids)))}
        ordered = [rows[i] for i in ids if i in rows]
        images = np.stack([decode_image(store.path(r.file), size=ds.image_size) for r in ordered])
        provenance = [
            {"image_id": r.id, "pool_id": r.pool_id, "prompt": r.prompt, "seed": r.seed, "source_path": r.source_path}
            for r in ordered
        ]
        variant = with_synthetic(base, images, provenance, ds.classes.index(target), name=f"selection{selection_id}")
        test = (ds.test_x, ds.test_y) if include_test else None
        export_zip(variant, ds.classes, out, test=test)
    return FileResponse(out, media_type="application/zip", filename=f"{dataset.name}-selection{selection_id}.zip")
