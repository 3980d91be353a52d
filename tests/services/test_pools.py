"""Pool store: files through the store, rows idempotent by (pool_id, idx), flush on interruption."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from backend.core.hooks import Stopped
from backend.db.models import Pool, PoolImage
from backend.generation.imagefiles import read_png_metadata
from backend.jobs.context import JobContext
from backend.services.pools import PoolWriter, existing_indices, image_paths, pool_for_job
from backend.store import FileStore


@pytest.fixture
def ctx(api) -> JobContext:
    job = api.submit("generate_sd", {"model": "tiny", "count": 1})
    with api.db.session() as s:
        from backend.db.models import Job

        row = s.get(Job, job["id"])
        s.expunge(row)
    store = FileStore(api.settings.workspace_dir)
    return JobContext(job=row, db=api.db, settings=api.settings, store=store, stop_event=threading.Event())


@pytest.fixture
def pool_id(ctx: JobContext) -> int:
    with ctx.session() as s:
        return pool_for_job(s, ctx.job_id, name="p", kind="gan", params={"a": 1})[0]


def image(value: int, side: int = 8) -> np.ndarray:
    return np.full((side, side, 3), value, np.uint8)


def rows(ctx: JobContext, pool_id: int) -> list[PoolImage]:
    with ctx.db.read_session() as s:
        return list(s.scalars(select(PoolImage).where(PoolImage.pool_id == pool_id).order_by(PoolImage.idx)))


def test_writes_files_and_rows_idempotently(ctx: JobContext, pool_id: int) -> None:
    with PoolWriter(ctx.session, ctx.store, pool_id, review_size=16) as writer:
        writer.add(0, image(10), image(20, 64), {"prompt": "a cat", "seed": 7, "negative_prompt": "dog"})
        writer.add(1, image(30), None, {"source_path": "x/y.png"})
        assert writer.flush() == 2
        writer.add(1, image(30), None, {"source_path": "x/y.png"})  # a resumed attempt redoing idx 1
        assert writer.flush() == 0
        writer.add(2, image(40), None, {})
    got = rows(ctx, pool_id)
    assert [r.idx for r in got] == [0, 1, 2]
    assert (got[0].prompt, got[0].seed, got[0].negative_prompt) == ("a cat", 7, "dog")
    assert got[1].source_path == "x/y.png" and got[1].prompt is None
    assert (
        (got[0].file, got[0].review_file)
        == image_paths(pool_id, 0)
        == (
            f"pools/{pool_id}/0.png",
            f"pools/{pool_id}/review/0.webp",
        )
    )
    png = ctx.store.path(got[0].file).read_bytes()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), image(10))
    assert read_png_metadata(png)[1]["seed"] == 7
    assert Image.open(ctx.store.path(got[0].review_file)).size == (16, 16)  # review capped at review_size
    assert Image.open(ctx.store.path(got[1].review_file)).size == (8, 8)
    with ctx.db.read_session() as s:
        assert s.get(Pool, pool_id).count == 3
        assert existing_indices(s, pool_id) == {0, 1, 2}
        assert pool_for_job(s, ctx.job_id, name="other", kind="sd", params={}) == (pool_id, {0, 1, 2})


def test_interruption_flushes_but_a_crash_does_not(ctx: JobContext, pool_id: int) -> None:
    with pytest.raises(Stopped), PoolWriter(ctx.session, ctx.store, pool_id) as writer:
        writer.add(0, image(1), None, {})
        raise Stopped()
    with pytest.raises(RuntimeError), PoolWriter(ctx.session, ctx.store, pool_id) as writer:
        writer.add(1, image(2), None, {})
        raise RuntimeError("worker died")
    assert [r.idx for r in rows(ctx, pool_id)] == [0]


def test_rejects_bad_images(ctx: JobContext, pool_id: int) -> None:
    with PoolWriter(ctx.session, ctx.store, pool_id) as writer, pytest.raises(ValueError, match="uint8"):
        writer.add(0, np.zeros((8, 8, 3), np.float32), None, {})
