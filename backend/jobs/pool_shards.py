"""Filling a candidate pool in shards: the loop every generator kind shares.

A generator kind says how to make images (a :class:`~backend.jobs.ray_executor.ShardSpec` whose worker
yields :class:`PoolItem` lists for a piece of indices) and :func:`fill_pool` does the rest: splits the
missing indices into pieces of ``chunk_size`` and the pieces into shards, runs them through the executor
(here, or on Ray actors), writes every part through the pool's store and rows as it arrives, reports
progress and images/s summed over all shards, checkpoints after each piece and stops when asked.

The rows are the record of what exists: a resumed job passes only the indices not in the pool, and a
retried piece (a Ray actor restarted after its process died) rewrites the same files and skips the rows
already there, so the pool ends with each index exactly once.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from backend.generation.imagefiles import encode_png, encode_webp
from backend.jobs.context import JobContext
from backend.jobs.ray_executor import ShardSpec, default_shards, run_shards, split
from backend.services.pools import PoolWriter


@dataclass
class PoolItem:
    """One generated image: arrays (made in this process) or encoded files (made on a Ray actor)."""

    idx: int
    meta: dict[str, Any]
    image: np.ndarray | None = None  # H x W x 3 uint8 at dataset resolution
    review: np.ndarray | None = None  # larger copy for the gallery; None: made from `image`
    png: bytes | None = None
    webp: bytes | None = None
    width: int = 0
    height: int = 0


def encode_items(items: list[PoolItem], review_size: int) -> list[PoolItem]:
    """Encode on the shard's host, so only compressed files cross the object store (and the job's
    process does no pixel work)."""
    out = []
    for item in items:
        review = item.image if item.review is None else item.review
        h, w = item.image.shape[:2]
        png, webp = encode_png(item.image, item.meta), encode_webp(review, review_size)
        out.append(PoolItem(item.idx, item.meta, png=png, webp=webp, width=int(w), height=int(h)))
    return out


def encoded_on_actor(review_size: int) -> functools.partial:
    """The ``ShardSpec.encode`` of a pool generator (a partial of a module function: Ray pickles it)."""
    return functools.partial(encode_items, review_size=review_size)


def add_item(writer: PoolWriter, item: PoolItem) -> None:
    """Write one made image through the pool's writer: arrays here, or files encoded on a Ray actor."""
    if item.png is None:
        writer.add(item.idx, item.image, item.review, item.meta)
    else:
        writer.add_encoded(item.idx, item.png, item.webp, item.width, item.height, item.meta)


class PoolParams(Protocol):
    """What every generator kind's params say about filling its pool."""

    count: int
    chunk_size: int
    review_size: int
    shards: int | None


def fill_pool(
    ctx: JobContext,
    pool_id: int,
    worker: Callable[..., Any],
    work: Any,
    params: PoolParams,
    *,
    done: int,
    todo: list[int],
) -> None:
    """Make the images ``todo`` (``done`` of ``params.count`` exist already) into pool ``pool_id``:
    ``worker(work, ...)`` makes them (a ``ShardSpec`` worker), encoded where they are made."""
    spec = ShardSpec(worker, work, encode=encoded_on_actor(params.review_size))
    count, chunk_size, review_size, shards = params.count, params.chunk_size, params.review_size, params.shards
    address = ctx.settings.ray_address
    pieces = [todo[c : c + chunk_size] for c in range(0, len(todo), chunk_size)]
    parts = split(pieces, shards or default_shards(address))
    if address:
        ctx.log(f"{len(todo)} images in {len(parts)} shard(s) on Ray ({address})")
    t0, made, rate = time.monotonic(), 0, 0.0

    with PoolWriter(ctx.session, ctx.store, pool_id, review_size=review_size) as writer:

        def on_result(items: list[PoolItem]) -> None:
            nonlocal made, rate
            for item in items:
                add_item(writer, item)
            # Rows per part, not per piece: the pool's count and newest thumbnails, the progress bar and
            # its ETA move while the job runs.
            writer.flush()
            made += len(items)
            rate = made / max(time.monotonic() - t0, 1e-9)
            total = done + made
            ctx.progress(total / count, f"{total}/{count} images, {rate:.2f} images/s")
            ctx.stop_point()  # the writer's exit keeps the finished images

        def on_piece(piece: list[int]) -> None:
            ctx.save_checkpoint({"pool_id": pool_id, "done": done + made})
            ctx.log(f"{done + made}/{count} images in pool {pool_id} ({rate:.2f} images/s)")

        run_shards(
            spec,
            parts,
            on_result=on_result,
            on_piece=on_piece,
            should_stop=ctx.should_stop,
            address=address,
            hooks=ctx.hooks,
            device=ctx.settings.device,
        )
