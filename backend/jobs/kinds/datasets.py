"""Job kind ``prepare_dataset``: decode a dataset source into the cache and register it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from sqlalchemy import select

from backend.core.types import ImageSide, Seed
from backend.data.cache import build_cache
from backend.data.sources import load_cifar10, load_digits, scan_imagefolder
from backend.db.models import Dataset
from backend.jobs.context import JobContext
from backend.jobs.errors import JobError
from backend.jobs.registry import job_kind
from backend.services.datasets import UPLOAD_ID, check_upload, discard_extraction, extract_upload
from backend.services.errors import DomainError

MAX_SKIPPED_LISTED = 200  # names kept in the job result / dataset info; the count is always exact


class PrepareDatasetParams(BaseModel):
    """Params of ``prepare_dataset``. ``path``: a directory (imagefolder) or an upload id (zip)."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["cifar10", "imagefolder", "zip", "digits"]
    path: str | None = Field(None, max_length=4096)
    name: str | None = Field(None, min_length=1, max_length=255)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # for <class>/* folders and digits
    image_size: tuple[ImageSide, ImageSide] | None = None  # (h, w); default: the images' own size, else 32x32
    seed: Seed = 0
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
        if source == "zip" and value and settings is not None:
            check_upload(settings.workspace_dir, value)
        return value


@job_kind("prepare_dataset", PrepareDatasetParams)
def prepare_dataset(ctx: JobContext, params: PrepareDatasetParams) -> dict[str, Any]:
    """Decode a dataset (cifar10 | imagefolder | zip | digits) into the cache and register it."""
    with ctx.session() as s:  # a retry after a crash past the insert returns the same row
        existing = s.query(Dataset).filter(Dataset.job_id == ctx.job_id).first()
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
            folder, skipped = extract_upload(ctx.store, params.path, ctx.hooks)
            source = scan_imagefolder(folder, params.test_fraction, params.seed, params.image_size)
        ds = build_cache(source, ctx.store.path("cache"), hooks=ctx.hooks)
    except (ValueError, DomainError) as exc:  # PathNotAllowed is a ValueError naming --allow-dir
        if params.source == "zip":
            discard_extraction(ctx.store, params.path or "")  # a failed registration leaves no files
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
    name = params.name or _default_name(params, path)
    with ctx.session() as s:
        # The same images (same source, same split) registered again -- the Dataset tab, then an experiment's
        # dataset stage -- reuse the row instead of listing two datasets nothing tells apart. A registration
        # that names itself differently asked for a row of its own.
        same_images = select(Dataset).where(Dataset.cache_key == ds.key, Dataset.source == params.source)
        if params.name is not None:
            same_images = same_images.where(Dataset.name == params.name)
        same = s.scalars(same_images.order_by(Dataset.id)).first()
        if same is not None:
            ctx.log(f"the same images are registered as dataset {same.id} ({same.name}): reused")
            return {"dataset_id": same.id, "reused": True, **summary}
        row = Dataset(
            name=name,
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
