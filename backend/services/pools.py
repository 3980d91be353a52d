"""Pools: candidate images on disk and in the database, written by every generator and by imports.

Files: `pools/<pool_id>/<idx>.png` (dataset resolution, with metadata chunks) and
`pools/<pool_id>/review/<idx>.webp`, written atomically through the store. Rows: one `PoolImage` per
(pool_id, idx), inserted idempotently. Jobs write a chunk (files, then rows), commit, then save their
checkpoint: a crash can lose the chunk in flight but never duplicate an image, because a resumed
attempt skips `existing_indices` and re-adding an index overwrites the same files and row.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from backend.core.hooks import NO_HOOKS, Hooks, Stopped
from backend.core.types import INT32_MAX
from backend.data.images import ImageDecodeError, decode_image
from backend.db.models import Pool, PoolImage
from backend.generation.imagefiles import AsyncEncoder, encode_png, encode_webp
from backend.selection.scoring import NpyRows
from backend.services.errors import NotFound, NotReady
from backend.services.rows import row_for_job
from backend.store import FileStore

SessionFactory = Callable[[], AbstractContextManager[Session]]  # a committing session, e.g. JobContext.session

ROW_FIELDS = ("prompt", "negative_prompt", "seed", "source_path")  # meta keys that get their own column


def pool_for_job(session: Session, job_id: int, *, name: str, kind: str, params: dict) -> tuple[int, set[int]]:
    """The pool job ``job_id`` writes (created on its first attempt) and the indices it already holds."""
    pool = row_for_job(
        session, Pool, job_id, lambda: Pool(name=name, kind=kind, job_id=job_id, params=params, count=0, info={})
    )
    return pool.id, existing_indices(session, pool.id)


def orphan_pool_dirs(session: Session, pools_root: Path) -> list[Path]:
    """Directories ``pools/<id>/`` whose pool row does not exist."""
    if not pools_root.is_dir():
        return []
    dirs = {int(p.name): p for p in pools_root.iterdir() if p.name.isdigit() and p.is_dir() and not p.is_symlink()}
    if not dirs:
        return []
    ids = [i for i in dirs if i <= INT32_MAX]  # a larger name cannot be a row id (nor a query parameter)
    known = set(session.scalars(select(Pool.id).where(Pool.id.in_(ids)))) if ids else set()
    return [p for i, p in sorted(dirs.items()) if i not in known]


def existing_indices(session: Session, pool_id: int) -> set[int]:
    return set(session.scalars(select(PoolImage.idx).where(PoolImage.pool_id == pool_id)))


def pool_rows(session: Session, pool_ids: list[int], field: str = "pool_ids") -> list[PoolImage]:
    """Every image of ``pool_ids``, pool by pool in the order given, each pool by index."""
    for pid in pool_ids:
        if session.get(Pool, pid) is None:
            raise NotFound("pool", pid)
    rows = session.scalars(
        select(PoolImage).where(PoolImage.pool_id.in_(pool_ids)).order_by(PoolImage.pool_id, PoolImage.idx)
    ).all()
    order = {pid: i for i, pid in enumerate(pool_ids)}
    return sorted(rows, key=lambda r: (order[r.pool_id], r.idx))


def first_images(session: Session, pool_id: int, count: int) -> list[PoolImage]:
    """The first ``count`` images of a pool by index (a random-from-pool variant)."""
    if session.get(Pool, pool_id) is None:
        raise NotFound("pool", pool_id)
    rows = session.scalars(
        select(PoolImage).where(PoolImage.pool_id == pool_id).order_by(PoolImage.idx).limit(count)
    ).all()
    if len(rows) < count:
        raise NotReady(f"pool {pool_id} holds {len(rows)} images; the variant asks for count={count}")
    return list(rows)


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

    def __init__(
        self, session: SessionFactory, store: FileStore, pool_id: int, review_size: int = 256, workers: int = 2
    ) -> None:
        self.session = session
        self.store = store
        self.pool_id = pool_id
        self.review_size = review_size
        self._encoder = AsyncEncoder(workers)
        self._rows: dict[int, dict[str, Any]] = {}

    def _write_files(self, idx: int, image: np.ndarray, review: np.ndarray, meta: dict) -> None:
        png, webp = image_paths(self.pool_id, idx)
        self.store.write_bytes(png, encode_png(image, meta))
        self.store.write_bytes(webp, encode_webp(review, self.review_size))

    def add(self, idx: int, image: np.ndarray, review: np.ndarray | None, meta: dict[str, Any]) -> None:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image {idx}: expected H x W x 3 uint8, got {image.dtype} {image.shape}")
        review = image if review is None else review
        self._encoder.submit(self._write_files, idx, image, review, meta)
        png, webp = image_paths(self.pool_id, idx)
        row = {key: meta.get(key) for key in ROW_FIELDS}
        row.update(file=png, review_file=webp, width=int(image.shape[1]), height=int(image.shape[0]), meta=meta)
        self._rows[idx] = row

    def add_encoded(self, idx: int, png: bytes, webp: bytes, width: int, height: int, meta: dict[str, Any]) -> None:
        """Like ``add`` for an image already encoded elsewhere (a Ray actor): same paths, same row."""
        png_path, webp_path = image_paths(self.pool_id, idx)
        self._encoder.submit(self._write_encoded, png_path, png, webp_path, webp)
        row = {key: meta.get(key) for key in ROW_FIELDS}
        row.update(file=png_path, review_file=webp_path, width=width, height=height, meta=meta)
        self._rows[idx] = row

    def _write_encoded(self, png_path: str, png: bytes, webp_path: str, webp: bytes) -> None:
        self.store.write_bytes(png_path, png)
        self.store.write_bytes(webp_path, webp)

    def flush(self) -> int:
        """Wait for the files, then insert the rows not yet in the pool and update its count.
        Returns the number of rows inserted."""
        self._encoder.wait()  # files first: a row never points at a missing file
        rows, self._rows = self._rows, {}
        if not rows:
            return 0
        with self.session() as session:
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
            if exc_type is None or issubclass(exc_type, Stopped):
                self.flush()  # cancel keeps what was made
        finally:
            self._encoder.close()


def decode_pool(
    store: FileStore, files: list[str], size: tuple[int, int], rel: str, hooks: Hooks = NO_HOOKS
) -> NpyRows:
    """Decode pool images once into ``rel`` (a uint8 .npy) and stream it with ``NpyRows``."""
    path = store.path(rel)
    if path.exists():
        rows = NpyRows(path)
        if rows.shape == (len(files), *size, 3):
            return rows
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    header = {"descr": "|u1", "fortran_order": False, "shape": (len(files), *size, 3)}
    # Written row by row through a plain file (not a memmap): memory stays at one image whatever the pool.
    with open(tmp, "wb") as fh:
        np.lib.format.write_array_header_2_0(fh, header)
        for i, f in enumerate(files):
            try:
                fh.write(np.ascontiguousarray(decode_image(store.path(f), size=size)).tobytes())
            except (ImageDecodeError, OSError) as exc:
                raise NotReady(f"pool image file {f} cannot be read: {exc}") from exc
            if i % 500 == 0:
                hooks.progress(0.0, f"decoding candidates {i}/{len(files)}")
                hooks.stop_point("while decoding candidates")
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)  # a half-written decode is never mistaken for a finished one
    return NpyRows(path)


@contextmanager
def dropped_if_left_empty(session: SessionFactory, pool_id: int) -> Iterator[None]:
    """Around a generation: if it raises before writing any image, its empty pool row is deleted, so
    failed runs leave nothing in the pool lists (a retry creates the pool again)."""
    try:
        yield
    except BaseException:
        with session() as s:
            if not existing_indices(s, pool_id):
                s.execute(delete(Pool).where(Pool.id == pool_id))
        raise
