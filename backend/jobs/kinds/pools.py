"""Job kind ``import_pool``: images made elsewhere (a folder or an uploaded zip) become a pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from backend.config import PathNotAllowed
from backend.core.types import PathText
from backend.data.images import ImageDecodeError, decode_image, image_files
from backend.db.models import Pool
from backend.jobs.context import JobContext
from backend.jobs.errors import JobError
from backend.jobs.registry import job_kind
from backend.services.datasets import UPLOAD_ID, check_upload, extract_upload
from backend.services.pools import PoolWriter, dropped_if_left_empty, pool_for_job

IMPORT_CHUNK = 256  # images per committed chunk of import_pool
MAX_SKIPPED_LISTED = 200


class ImportPoolParams(BaseModel):
    """Exactly one of ``path`` (a folder under the allowed directories) or ``upload_id`` (a zip uploaded
    with POST /api/datasets/upload)."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(None, max_length=4096)
    upload_id: PathText | None = None
    name: str | None = Field(None, min_length=1, max_length=255)
    image_size: int | None = Field(None, ge=8, le=1024)  # square side to resize to; default: keep each size

    @field_validator("upload_id")
    @classmethod
    def _check_upload(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not UPLOAD_ID.match(value):
            raise ValueError("upload_id must be the id returned by POST /api/datasets/upload")
        settings = (info.context or {}).get("settings")
        if value is not None and settings is not None:
            check_upload(settings.workspace_dir, value)
        return value

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        settings = (info.context or {}).get("settings")
        if value and settings is not None:
            settings.is_allowed(value)  # PathNotAllowed is a ValueError naming --allow-dir
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ImportPoolParams:
        if (self.path is None) == (self.upload_id is None):
            raise ValueError("give exactly one of path or upload_id")
        return self


def _import_root(ctx: JobContext, params: ImportPoolParams) -> tuple[Path, list[tuple[str, str]]]:
    if params.path is not None:
        try:
            root = ctx.settings.is_allowed(params.path)
        except PathNotAllowed as exc:
            raise JobError(str(exc)) from exc
        if not root.is_dir():
            raise JobError(f"path {params.path!r} is not a directory")
        return root, []
    # The same extraction prepare_dataset and train_gan use: once per upload, then reused.
    return extract_upload(ctx.store, params.upload_id or "", ctx.hooks)


@job_kind("import_pool", ImportPoolParams)
def import_pool(ctx: JobContext, params: ImportPoolParams) -> dict[str, Any]:
    """Turn a folder or uploaded zip of images made elsewhere into a pool (source_path kept per image)."""
    root, skipped = _import_root(ctx, params)
    skipped = list(skipped)
    files = image_files(root, skipped)
    if not files:
        raise JobError("no image files found (png, jpg, jpeg, webp, bmp, ...)")
    with ctx.session() as session:
        pool_id, done = pool_for_job(
            session,
            ctx.job_id,
            name=params.name or (Path(params.path).name if params.path else f"upload {params.upload_id}"),
            kind="imported",
            params=params.model_dump(mode="json"),
        )
    with dropped_if_left_empty(ctx.session, pool_id):
        size = (params.image_size, params.image_size) if params.image_size else None
        todo = [i for i in range(len(files)) if i not in done]
        with PoolWriter(ctx.session, ctx.store, pool_id) as writer:
            for c in range(0, len(todo), IMPORT_CHUNK):
                for i in todo[c : c + IMPORT_CHUNK]:
                    rel = files[i].relative_to(root).as_posix()
                    try:
                        image = decode_image(files[i], size=size)
                    except ImageDecodeError as exc:
                        skipped.append((rel, str(exc)))
                        continue
                    writer.add(i, image, None, {"source_path": rel, "import_job_id": ctx.job_id, "index": i})
                writer.flush()
                ctx.save_checkpoint({"pool_id": pool_id})
                ctx.progress(min(1.0, (c + IMPORT_CHUNK) / max(len(todo), 1)), f"imported {len(done) + c} files")
                ctx.stop_point()
        with ctx.session() as session:
            pool = session.get(Pool, pool_id)
            count = pool.count
            pool.info = {**(pool.info or {}), "skipped_count": len(skipped), "skipped": skipped[:MAX_SKIPPED_LISTED]}
        if skipped:
            ctx.log(f"skipped {len(skipped)} files: " + ", ".join(s[0] for s in skipped[:20]), "warning")
        return {
            "pool_id": pool_id,
            "count": count,
            "skipped_count": len(skipped),
            "skipped": [list(s) for s in skipped[:MAX_SKIPPED_LISTED]],
        }
