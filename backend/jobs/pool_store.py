"""Pools on disk and in the database, shared by every job that makes candidate images (SD, GAN, import).

Files: `pools/<pool_id>/<idx>.png` (dataset resolution, with metadata chunks) and
`pools/<pool_id>/review/<idx>.webp`, written atomically through the store. Rows: one `PoolImage` per
(pool_id, idx), inserted idempotently. Jobs write a chunk (files, then rows), commit, then save their
checkpoint: a crash can lose the chunk in flight but never duplicate an image, because a resumed
attempt skips `existing_indices` and re-adding an index overwrites the same files and row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.db.models import Pool, PoolImage
from backend.generation.imagefiles import AsyncEncoder, encode_png, encode_webp
from backend.jobs.errors import JobInterrupted

if TYPE_CHECKING:
    from backend.jobs.context import JobContext

ROW_FIELDS = ("prompt", "negative_prompt", "seed", "source_path")  # meta keys that get their own column


def create_pool(session: Session, *, name: str, kind: str, job_id: int | None, params: dict) -> Pool:
    """Insert a pool (flushed, so `pool.id` is set; committed with the session)."""
    pool = Pool(name=name, kind=kind, job_id=job_id, params=params, count=0, info={})
    session.add(pool)
    session.flush()
    return pool


def pool_for_job(session: Session, job_id: int) -> Pool | None:
    """The pool a job created in an earlier attempt, if any (lets a resume reuse it)."""
    return session.scalars(select(Pool).where(Pool.job_id == job_id).order_by(Pool.id)).first()


def existing_indices(session: Session, pool_id: int) -> set[int]:
    return set(session.scalars(select(PoolImage.idx).where(PoolImage.pool_id == pool_id)))


def image_paths(pool_id: int, idx: int) -> tuple[str, str]:
    """Store-relative (dataset PNG, review WebP) paths of image `idx` of a pool."""
    return f"pools/{pool_id}/{idx}.png", f"pools/{pool_id}/review/{idx}.webp"


class PoolWriter:
    """Buffers images of a pool, encodes and writes their files on a thread pool, and inserts their
    rows on `flush()`.

    `add(idx, image, review, meta)`: `image` is the H x W x 3 uint8 dataset-resolution copy,
    `review` a larger copy for the gallery (None: the review WebP is made from `image`), `meta` the
    JSON metadata (its prompt / negative_prompt / seed / source_path also fill their columns).
    Leaving the `with` block normally (or through a job interruption) flushes what was added.
    """

    def __init__(self, ctx: JobContext, pool_id: int, review_size: int = 256, workers: int = 2) -> None:
        self.ctx = ctx
        self.pool_id = pool_id
        self.review_size = review_size
        self._encoder = AsyncEncoder(workers)
        self._rows: dict[int, dict[str, Any]] = {}

    def _write_files(self, idx: int, image: np.ndarray, review: np.ndarray, meta: dict) -> None:
        png, webp = image_paths(self.pool_id, idx)
        self.ctx.store.write_bytes(png, encode_png(image, meta))
        self.ctx.store.write_bytes(webp, encode_webp(review, self.review_size))

    def add(self, idx: int, image: np.ndarray, review: np.ndarray | None, meta: dict[str, Any]) -> None:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image {idx}: expected H x W x 3 uint8, got {image.dtype} {image.shape}")
        review = image if review is None else review
        self._encoder.submit(self._write_files, idx, image, review, meta)
        png, webp = image_paths(self.pool_id, idx)
        row = {key: meta.get(key) for key in ROW_FIELDS}
        row.update(file=png, review_file=webp, width=int(image.shape[1]), height=int(image.shape[0]), meta=meta)
        self._rows[idx] = row

    def flush(self) -> int:
        """Wait for the files, then insert the rows not yet in the pool and update its count.
        Returns the number of rows inserted."""
        self._encoder.wait()  # files first: a row never points at a missing file
        rows, self._rows = self._rows, {}
        if not rows:
            return 0
        with self.ctx.session() as session:
            present = set(
                session.scalars(
                    select(PoolImage.idx).where(PoolImage.pool_id == self.pool_id, PoolImage.idx.in_(list(rows)))
                )
            )
            new = [PoolImage(pool_id=self.pool_id, idx=idx, **row) for idx, row in rows.items() if idx not in present]
            session.add_all(new)
            session.flush()
            total = session.scalar(select(func.count()).where(PoolImage.pool_id == self.pool_id))
            pool = session.get(Pool, self.pool_id)
            if pool is not None:
                pool.count = int(total or 0)
        return len(new)

    def __enter__(self) -> PoolWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            if exc_type is None or issubclass(exc_type, JobInterrupted):
                self.flush()  # cancel keeps what was made
        finally:
            self._encoder.close()
