"""/api/datasets: upload archives, list and inspect datasets, preview imbalance specs, export variants."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import zipfile
from datetime import datetime
from typing import Any

from fastapi import APIRouter, File, HTTPException, Query, UploadFile, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import select

from backend.api.deps import DatabaseDep, ReadSessionDep, SettingsDep, StoreDep, not_found
from backend.api.errors import field_error
from backend.api.schemas import JobOut
from backend.data.export import export_zip
from backend.data.imbalance import ImbalanceSpec, apply_imbalance
from backend.data.variants import VARIANTS
from backend.db.models import Dataset, Job
from backend.jobs import queue
from backend.jobs.errors import JobError
from backend.jobs.kinds.datasets import PrepareDatasetParams, build_variant, dataset_from_row, upload_path

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
async def upload_zip(store: StoreDep, settings: SettingsDep, file: UploadFile = File(...)) -> UploadOut:
    """Store a zip (ImageFolder layout) for ``prepare_dataset`` with ``source: zip, path: <upload_id>``."""
    upload_id = uuid.uuid4().hex
    dest = upload_path(store, upload_id)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    limit = int(settings.max_upload_mb * 1e6)
    size = 0
    try:
        with open(tmp, "wb") as out:
            while chunk := await file.read(UPLOAD_CHUNK):
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
        params = PrepareDatasetParams.model_validate(body, context={"settings": settings})
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None
    job, _ = queue.submit(db, "prepare_dataset", params.model_dump(mode="json"), max_attempts=settings.max_attempts)
    return job


@router.get("", response_model=list[DatasetOut])
def list_datasets(session: ReadSessionDep) -> list[Dataset]:
    return list(session.scalars(select(Dataset).order_by(Dataset.id)).all())


def _row(session: Any, dataset_id: int) -> Dataset:
    row = session.get(Dataset, dataset_id)
    if row is None:
        raise not_found("dataset", dataset_id)
    return row


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: int, session: ReadSessionDep) -> Dataset:
    return _row(session, dataset_id)


def _spec_error(exc: ValueError) -> RequestValidationError:
    msg = str(exc)
    field = "keep" if msg.startswith("keep=") else "minority"
    return field_error(("body", field), msg)


@router.post("/{dataset_id}/imbalance/preview", response_model=ImbalancePreview)
def preview_imbalance(
    dataset_id: int, spec: ImbalanceSpec, session: ReadSessionDep, store: StoreDep
) -> ImbalancePreview:
    """Per-class training counts before and after ``spec`` (422 naming the field on a bad spec)."""
    ds = _open(store, _row(session, dataset_id))
    try:
        result = apply_imbalance(ds.train_y, ds.classes, spec)
    except ValueError as exc:
        raise _spec_error(exc) from None
    after = result.counts(ds.train_y, len(ds.classes))
    return ImbalancePreview(
        before=ds.train_counts(),
        after={c: int(n) for c, n in zip(ds.classes, after, strict=True)},
        removed=len(result.removed_idx),
        minority=[ds.classes[i] for i in result.minority_classes],
    )


def _open(store: Any, row: Dataset) -> Any:
    try:
        return dataset_from_row(store, row)
    except JobError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None


@router.get("/{dataset_id}/export")
def export_dataset(
    dataset_id: int,
    session: ReadSessionDep,
    store: StoreDep,
    variant: str = Query("imbalanced", description=f"one of {', '.join(VARIANTS)}"),
    imbalance: str | None = Query(None, description='imbalance spec as JSON, e.g. {"minority": "cat", "keep": 50}'),
    include_test: bool = Query(False, description="also write test/<class>/ images"),
) -> FileResponse:
    """The variant as an ImageFolder zip with ``metadata.jsonl`` (built on first request, then reused)."""
    row = _row(session, dataset_id)
    if variant not in VARIANTS:
        raise field_error(("query", "variant"), f"unknown variant {variant!r}; choose one of {list(VARIANTS)}")
    spec: dict | None = None
    if imbalance:
        try:
            spec = ImbalanceSpec.model_validate(json.loads(imbalance)).model_dump()
        except (json.JSONDecodeError, ValidationError) as exc:
            raise field_error(("query", "imbalance"), f"invalid imbalance spec: {exc}") from None
    elif variant != "full":
        raise field_error(("query", "imbalance"), f"variant {variant!r} needs an imbalance spec")
    ds = _open(store, row)
    digest = hashlib.sha256(json.dumps([row.cache_key, variant, spec, include_test]).encode()).hexdigest()[:16]
    out = store.path(f"exports/dataset{dataset_id}-{variant}-{digest}.zip")
    if not out.exists():
        try:
            v = build_variant(ds, variant, spec)
        except JobError as exc:
            raise field_error(("query", "imbalance"), str(exc)) from None
        test = (ds.test_x, ds.test_y) if include_test else None
        export_zip(v, ds.classes, out, test=test)
    return FileResponse(out, media_type="application/zip", filename=f"{row.name}-{variant}.zip")
