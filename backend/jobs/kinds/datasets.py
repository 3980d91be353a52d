"""Job kind ``prepare_dataset`` and the helpers other handlers use to open a dataset and build variants."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from sqlalchemy import select

from backend.config import PathNotAllowed
from backend.data.cache import DecodedDataset, build_cache, load_cache
from backend.data.imbalance import apply_imbalance
from backend.data.safezip import extract_zip
from backend.data.sources import load_cifar10, load_digits, scan_imagefolder
from backend.data.variants import Variant
from backend.data.variants import build_variant as build_data_variant
from backend.db.models import Dataset
from backend.jobs.context import JobContext
from backend.jobs.errors import JobError
from backend.jobs.registry import job_kind
from backend.store import FileStore

UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_SKIPPED_LISTED = 200  # names kept in the job result / dataset info; the count is always exact


def upload_path(store: FileStore, upload_id: str) -> Path:
    """Where ``POST /api/datasets/upload`` stores an archive."""
    return store.path(f"uploads/{upload_id}.zip")


class PrepareDatasetParams(BaseModel):
    """Params of ``prepare_dataset``. ``path``: a directory (imagefolder) or an upload id (zip)."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["cifar10", "imagefolder", "zip", "digits"]
    path: str | None = Field(None, max_length=4096)
    name: str | None = Field(None, min_length=1, max_length=255)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # for <class>/* folders and digits
    image_size: tuple[int, int] | None = None  # (h, w); default: the images' own size, else 32x32
    seed: int = 0
    download: bool = True  # cifar10 only

    @field_validator("image_size")
    @classmethod
    def _check_size(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not all(8 <= v <= 1024 for v in value):
            raise ValueError("image_size must be [h, w] with 8 <= h, w <= 1024")
        return value

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        source = info.data.get("source")
        if source in ("imagefolder", "zip") and not value:
            raise ValueError(f"path is required for source {source!r}")
        if source in ("cifar10", "digits") and value:
            raise ValueError(f"source {source!r} takes no path")
        if source == "zip" and value and not UPLOAD_ID.match(value):
            raise ValueError("for source 'zip', path is the upload_id returned by POST /api/datasets/upload")
        settings = (info.context or {}).get("settings")
        if source == "imagefolder" and value and settings is not None:
            settings.is_allowed(value)  # PathNotAllowed is a ValueError naming --allow-dir
        return value


class _HasSessionAndStore(Protocol):
    store: FileStore

    def session(self) -> Any: ...


def dataset_from_row(store: FileStore, row: Dataset) -> DecodedDataset:
    """Open the decoded cache of a dataset row (memory-mapped)."""
    path = store.path(f"cache/{row.cache_key}")
    if not (path / "meta.json").exists():
        raise JobError(f"the decoded cache of dataset {row.id} is missing; prepare the dataset again")
    return load_cache(path)


def load_dataset(ctx: JobContext | _HasSessionAndStore, dataset_id: int) -> DecodedDataset:
    """The decoded dataset ``dataset_id`` for a job handler (or anything with ``session()`` and ``store``)."""
    with ctx.session() as s:
        row = s.get(Dataset, dataset_id)
        if row is None:
            raise JobError(f"dataset {dataset_id} not found")
        return dataset_from_row(ctx.store, row)


def build_variant(ds: DecodedDataset, variant: str, imbalance: dict | None) -> Variant:
    """A classical variant of ``ds`` (see ``backend.data.variants``); bad names or specs -> ``JobError``."""
    try:
        imb = None if imbalance is None else apply_imbalance(ds.train_y, ds.classes, imbalance)
        return build_data_variant(variant, ds, imb)
    except ValueError as exc:
        raise JobError(str(exc)) from exc


def extract_upload(ctx: JobContext, upload_id: str) -> tuple[Path, list[tuple[str, str]]]:
    """Extract an uploaded zip once into ``uploads/<id>/`` (atomically); returns the dir and skipped entries.

    The refused entries are kept beside it in ``uploads/<id>.extract.json`` so a second job on the same
    upload reports them too.
    """
    archive = upload_path(ctx.store, upload_id)
    dest = ctx.store.path(f"uploads/{upload_id}")
    report = f"uploads/{upload_id}.extract.json"
    if dest.is_dir() and ctx.store.exists(report):
        return dest, [tuple(s) for s in ctx.store.read_json(report)["skipped"]]
    if not archive.exists():
        raise JobError(f"upload {upload_id} not found; upload the zip with POST /api/datasets/upload first")
    shutil.rmtree(dest, ignore_errors=True)  # a crash between rename and report: extract again
    tmp = ctx.store.path(f"uploads/.{upload_id}.{uuid.uuid4().hex[:8]}")
    try:
        ctx.progress(0.0, "extracting the archive")
        result = extract_zip(archive, tmp)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    ctx.store.write_json(report, {"skipped": [list(s) for s in result.skipped], "files": len(result.extracted)})
    return dest, result.skipped


@job_kind("prepare_dataset", PrepareDatasetParams)
def prepare_dataset(ctx: JobContext, params: PrepareDatasetParams) -> dict[str, Any]:
    """Decode a dataset (cifar10 | imagefolder | zip | digits) into the cache and register it."""
    with ctx.session() as s:  # a retry after a crash past the insert returns the same row
        existing = s.scalar(select(Dataset).where(Dataset.job_id == ctx.job_id))
        if existing is not None:
            return {"dataset_id": existing.id, **(existing.info or {}).get("job_summary", {})}
    skipped: list[tuple[str, str]] = []
    path: str | None = None
    try:
        if params.source == "cifar10":
            ctx.progress(0.0, "loading CIFAR-10 (downloading on first use)")
            source: Any = load_cifar10(ctx.store.path("downloads/cifar10"), download=params.download)
        elif params.source == "digits":
            source = load_digits(params.test_fraction, params.seed)
        elif params.source == "imagefolder":
            root = ctx.settings.is_allowed(params.path or "")
            path = str(root)
            source = scan_imagefolder(root, params.test_fraction, params.seed, params.image_size)
        else:
            assert params.path is not None
            path = params.path
            folder, skipped = extract_upload(ctx, params.path)
            source = scan_imagefolder(folder, params.test_fraction, params.seed, params.image_size)
        ds = build_cache(source, ctx.store.path("cache"), progress=ctx.progress, should_stop=ctx.should_stop)
    except InterruptedError:
        ctx.raise_if_stopped()
        raise
    except PathNotAllowed as exc:
        raise JobError(str(exc)) from exc
    except ValueError as exc:
        raise JobError(str(exc)) from exc
    skipped = skipped + [tuple(s) for s in ds.info.get("skipped", [])]
    summary = {"skipped_count": len(skipped), "skipped": [f"{n}: {why}" for n, why in skipped[:MAX_SKIPPED_LISTED]]}
    info = {
        "mean": ds.info.get("mean"),
        "std": ds.info.get("std"),
        "split": getattr(source, "split", "given"),
        "test_fraction": params.test_fraction,
        "seed": params.seed,
        "job_summary": summary,
    }
    with ctx.session() as s:
        row = Dataset(
            name=params.name or _default_name(params, path),
            source=params.source,
            path=path,
            cache_key=ds.key,
            classes=ds.classes,
            train_counts=ds.train_counts(),
            test_counts=ds.test_counts(),
            image_size=list(ds.image_size),
            info=info,
            job_id=ctx.job_id,
        )
        s.add(row)
        s.flush()
        dataset_id = row.id
    ctx.log(f"dataset {dataset_id}: {len(ds.train_y):,} train / {len(ds.test_y):,} test, {len(skipped)} skipped")
    return {"dataset_id": dataset_id, **summary}


def _default_name(params: PrepareDatasetParams, path: str | None) -> str:
    if params.source == "imagefolder" and path:
        return Path(path).name or "imagefolder"
    if params.source == "zip":
        return f"upload {str(params.path)[:8]}"
    return params.source
