"""/api/datasets: upload archives, list and inspect datasets, preview imbalance specs, export variants."""

from __future__ import annotations

import json
import os
import uuid
import zipfile
from datetime import datetime
from typing import Any

from fastapi import APIRouter, File, HTTPException, Query, UploadFile, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select

from backend.api.deps import DatabaseDep, ReadSessionDep, SettingsDep, StoreDep
from backend.api.errors import field_error
from backend.api.schemas import JobOut
from backend.core.types import DbId
from backend.data.imbalance import ImbalanceSpec, kept_counts
from backend.data.longtail import FillTarget, fill_plan
from backend.data.variants import VARIANTS
from backend.db.models import Dataset, Job
from backend.jobs import queue
from backend.jobs.registry import get_kind
from backend.services import datasets as service
from backend.services.errors import Invalid

router = APIRouter(prefix="/datasets", tags=["datasets"])

UPLOAD_CHUNK = 1 << 20


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    source: str
    path: str | None
    classes: list[str]
    train_counts: dict[str, int]
    test_counts: dict[str, int]
    image_size: list[int]
    job_id: int | None
    created_at: datetime


class UploadOut(BaseModel):
    upload_id: str
    size: int


class ImbalancePreview(BaseModel):
    before: dict[str, int]
    after: dict[str, int]
    removed: int
    minority: list[str]


@router.post("/upload", response_model=UploadOut, status_code=status.HTTP_201_CREATED)
def upload_zip(store: StoreDep, settings: SettingsDep, file: UploadFile = File(...)) -> UploadOut:
    """Store a zip (ImageFolder layout) for ``prepare_dataset`` with ``source: zip, path: <upload_id>``.

    A plain ``def``: FastAPI runs it on a worker thread, so the copy, fsync and zip check of a large upload
    never hold the event loop (which serves every other request, the studio's included)."""
    upload_id = uuid.uuid4().hex
    dest = service.upload_path(store, upload_id)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    limit = int(settings.max_upload_mb * 1e6)
    size = 0
    try:
        with open(tmp, "wb") as out:
            while chunk := file.file.read(UPLOAD_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, f"upload larger than {settings.max_upload_mb:g} MB")
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if not zipfile.is_zipfile(tmp):
            raise field_error(("body", "file"), "the upload is not a zip archive")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return UploadOut(upload_id=upload_id, size=size)


@router.post("", response_model=JobOut, status_code=status.HTTP_201_CREATED)
def prepare(body: dict[str, Any], db: DatabaseDep, settings: SettingsDep) -> Job:
    """Queue ``prepare_dataset`` (same params as ``POST /api/jobs``), checking ``path`` against the allowed dirs."""
    try:
        params = get_kind("prepare_dataset").params_model.model_validate(body, context={"settings": settings})
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None
    job, _ = queue.submit(db, "prepare_dataset", params.model_dump(mode="json"), max_attempts=settings.max_attempts)
    return job


@router.get("", response_model=list[DatasetOut])
def list_datasets(session: ReadSessionDep) -> list[Dataset]:
    return list(session.scalars(select(Dataset).order_by(Dataset.id)).all())


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: DbId, session: ReadSessionDep) -> Dataset:
    return service.get_row(session, dataset_id)


def _spec_error(exc: Invalid) -> RequestValidationError:
    """Name the spec's own field: ``keep`` for a keep count the data cannot meet, else ``minority``."""
    field = (
        "keep" if exc.message.startswith("keep=") else "profile" if exc.message.startswith("profile") else "minority"
    )
    return field_error(("body", field), exc.message)


@router.post("/{dataset_id}/imbalance/preview", response_model=ImbalancePreview)
def preview_imbalance(
    dataset_id: DbId, spec: ImbalanceSpec, session: ReadSessionDep, store: StoreDep
) -> ImbalancePreview:
    """Per-class training counts before and after ``spec`` (422 naming the field on a bad spec)."""
    ds = service.open_dataset(session, store, dataset_id)
    try:
        return ImbalancePreview(**service.imbalance_preview(ds, spec))
    except Invalid as exc:
        raise _spec_error(exc) from None


class FillRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    imbalance: ImbalanceSpec | None = Field(None, description="the imbalance whose training counts are filled up")
    fill: FillTarget = Field("to_head", description="'to_head' (the largest class's count) or {'per_class': N}")


class FillPlanOut(BaseModel):
    target: int  # images every class reaches
    counts: dict[str, int]  # real training images per class after the imbalance
    need: dict[str, int]  # synthetic images per class to reach the target
    total: int
    groups: dict[str, list[str]]  # shot groups of the counts: many (> 100), medium (20-100), few (< 20)
    thresholds: dict[str, int]


@router.post("/{dataset_id}/fill_plan", response_model=FillPlanOut)
def plan_fill(dataset_id: DbId, body: FillRequest, session: ReadSessionDep) -> FillPlanOut:
    """How many synthetic images each class needs to reach ``fill`` after ``imbalance`` (a long tail or any
    multi-class imbalance), before anything runs: 422 naming the field for a target below a class's count
    or a dataset with fewer than 2 classes. The experiment config's ``diffusion.fill`` launches this plan."""
    row = session.get(Dataset, dataset_id)
    if row is None:
        raise HTTPException(status_code=404, detail=f"dataset {dataset_id} not found")
    classes = list(row.classes or [])
    counts = dict(row.train_counts or {})
    try:
        if body.imbalance is not None:
            counts = kept_counts(body.imbalance, counts, classes)
        return FillPlanOut(**fill_plan(counts, body.fill))
    except ValueError as exc:
        field, _, message = str(exc).partition(": ")
        where = ("body", *field.split(".")) if field.startswith("fill") else ("body", "imbalance", field)
        raise field_error(where, message or str(exc)) from None


@router.get("/{dataset_id}/export")
def export_dataset(
    dataset_id: DbId,
    session: ReadSessionDep,
    store: StoreDep,
    variant: str = Query("imbalanced", description=f"one of {', '.join(VARIANTS)}"),
    imbalance: str | None = Query(None, description='imbalance spec as JSON, e.g. {"minority": "cat", "keep": 50}'),
    include_test: bool = Query(False, description="also write test/<class>/ images"),
) -> StreamingResponse:
    """The variant as an ImageFolder zip with ``metadata.jsonl``, streamed as it is encoded."""
    spec: dict | None = None
    if imbalance:
        try:
            spec = ImbalanceSpec.model_validate(json.loads(imbalance)).model_dump()
        except (json.JSONDecodeError, ValidationError) as exc:
            raise field_error(("query", "imbalance"), f"invalid imbalance spec: {exc}") from None
    try:
        name, chunks = service.export_variant(session, store, dataset_id, variant, spec, include_test)
    except Invalid as exc:
        raise field_error(("query", exc.field), exc.message) from None
    return zip_response(name, chunks)


def zip_response(filename: str, chunks: Any) -> StreamingResponse:
    """A zip download streamed from a sync iterator (Starlette runs it in a thread, off the event loop)."""
    return StreamingResponse(
        chunks, media_type="application/zip", headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )
