"""/api/pools (candidate pools and their images) and /api/images (image bytes, by id only)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel
from sqlalchemy import func, select

from backend.api.deps import ReadSessionDep, StoreDep, not_found
from backend.core.types import DbId, DbOffset
from backend.db.models import Pool, PoolImage

router = APIRouter(prefix="/pools", tags=["pools"])
images_router = APIRouter(prefix="/images", tags=["images"])


class PoolOut(BaseModel):
    id: int
    name: str
    kind: str
    count: int
    job_id: int | None
    params: dict[str, Any]
    # the two-sample test (job assess_pool, or a select job over the pool): {domain_auc, method, n_real,
    # n_synthetic, flagged, reason, label, ...}; null until one ran
    assessment: dict[str, Any] | None = None
    created_at: datetime


class ImageOut(BaseModel):
    id: int
    pool_id: int
    idx: int
    prompt: str | None
    negative_prompt: str | None
    seed: int | None
    width: int
    height: int
    source_path: str | None
    meta: dict[str, Any]
    url: str
    review_url: str


class ImagePage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[ImageOut]


def _pool(row: Pool) -> PoolOut:
    return PoolOut(
        id=row.id,
        name=row.name,
        kind=row.kind,
        count=row.count,
        job_id=row.job_id,
        params=row.params or {},
        assessment=(row.info or {}).get("assessment"),
        created_at=row.created_at,
    )


def _image(row: PoolImage) -> ImageOut:
    return ImageOut(
        id=row.id,
        pool_id=row.pool_id,
        idx=row.idx,
        prompt=row.prompt,
        negative_prompt=row.negative_prompt,
        seed=row.seed,
        width=row.width,
        height=row.height,
        source_path=row.source_path,
        meta=row.meta or {},
        url=f"/api/images/{row.id}",
        review_url=f"/api/images/{row.id}/review",
    )


@router.get("", response_model=list[PoolOut])
def list_pools(
    session: ReadSessionDep,
    kind: str | None = None,
    offset: DbOffset = 0,
    limit: int = Query(100, ge=1, le=1000),
) -> list[PoolOut]:
    query = select(Pool).order_by(Pool.id.desc()).offset(offset).limit(limit)
    if kind:
        query = query.where(Pool.kind == kind)
    return [_pool(row) for row in session.scalars(query)]


@router.get("/{pool_id}", response_model=PoolOut)
def get_pool(pool_id: DbId, session: ReadSessionDep) -> PoolOut:
    row = session.get(Pool, pool_id)
    if row is None:
        raise not_found("pool", pool_id)
    return _pool(row)


@router.get("/{pool_id}/images", response_model=ImagePage)
def list_images(
    pool_id: DbId,
    session: ReadSessionDep,
    offset: DbOffset = 0,
    limit: int = Query(100, ge=1, le=1000),
) -> ImagePage:
    """Images in generation order (`idx`)."""
    if session.get(Pool, pool_id) is None:
        raise not_found("pool", pool_id)
    total = session.scalar(select(func.count()).where(PoolImage.pool_id == pool_id)) or 0
    rows = session.scalars(
        select(PoolImage).where(PoolImage.pool_id == pool_id).order_by(PoolImage.idx).offset(offset).limit(limit)
    )
    return ImagePage(total=int(total), offset=offset, limit=limit, items=[_image(r) for r in rows])


def _file(session: ReadSessionDep, store: StoreDep, image_id: int, review: bool) -> FileResponse:
    row = session.get(PoolImage, image_id)
    if row is None:
        raise not_found("image", image_id)
    rel = (row.review_file or row.file) if review else row.file
    path = store.path(rel)  # rows only hold store-relative paths; the store refuses escapes
    if not path.is_file():
        raise not_found("file of image", image_id)
    media = {".png": "image/png", ".webp": "image/webp", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
    return FileResponse(
        path,
        media_type=media.get(path.suffix.lower(), "application/octet-stream"),
        headers={"Cache-Control": "public, max-age=86400, immutable"},
    )


@images_router.get("/{image_id}", response_class=FileResponse)
def image_bytes(image_id: DbId, session: ReadSessionDep, store: StoreDep) -> FileResponse:
    """The dataset-resolution file (PNG with generation parameters)."""
    return _file(session, store, image_id, review=False)


@images_router.get("/{image_id}/review", response_class=FileResponse)
def review_bytes(image_id: DbId, session: ReadSessionDep, store: StoreDep) -> FileResponse:
    """The review copy (WebP, at most the pool's review_size px)."""
    return _file(session, store, image_id, review=True)
