"""CUDA out-of-memory back-off shared by the generators: halve the batch and retry, down to one image."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def is_oom(exc: BaseException) -> bool:
    """True for CUDA (or other accelerator) out-of-memory errors, whichever exception type carries them."""
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def release_cached_memory() -> None:
    """Hand the caching allocator's free blocks back, so the retry sees the memory the failed call freed."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def halving_batches(
    count: int,
    batch_size: int,
    fn: Callable[[int, int], T],
    on_batch_size: Callable[[int, str], None] | None = None,
    what: str = "batch",
) -> list[T]:
    """Call ``fn(start, n)`` over ``[0, count)`` in batches of ``batch_size``; returns the results in order.

    On out-of-memory the failed batch is retried at half the size (and later batches keep the smaller
    size); the new size is reported through ``on_batch_size(size, message)``. Only an OOM at size 1
    fails, with a ValueError that says so. ``fn`` must not depend on how items are batched (e.g. eval-mode
    generators), so back-off never changes the output.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    out: list[T] = []
    start = 0
    while start < count:
        n = min(batch_size, count - start)
        try:
            out.append(fn(start, n))
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_oom(exc):
                raise
            del exc  # drop the traceback's references to the failed call's tensors before freeing
            release_cached_memory()
            if n == 1:
                raise ValueError(f"out of GPU memory at {what} size 1; use a smaller model or resolution") from None
            batch_size = n // 2
            if on_batch_size is not None:
                on_batch_size(batch_size, f"CUDA out of memory: {what} size halved to {batch_size}")
            continue
        start += n
    return out
