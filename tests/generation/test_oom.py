"""CUDA out-of-memory back-off: the batch halves, the output does not change, size 1 fails clearly.

There is no GPU here, so a forward pre-hook plays the card's memory limit: it raises the very exception
torch raises on CUDA (``torch.OutOfMemoryError``) whenever a real network is called on a batch larger
than the limit. Everything else -- the generators, the pipeline, the back-off -- is the shipped code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from backend.generation.diffusion import generate, load_pipeline
from backend.generation.gan import GanConfig, Generator, sample_images
from backend.generation.oom import halving_batches, is_oom
from backend.generation.prompts import default_vocabulary


@contextmanager
def memory_limit(module: nn.Module, max_batch: int) -> Iterator[list[int]]:
    """Make ``module`` raise CUDA's OOM error on batches above ``max_batch``; yields the batch sizes seen."""
    seen: list[int] = []

    def hook(_module: nn.Module, args: tuple) -> None:
        seen.append(args[0].shape[0])
        if args[0].shape[0] > max_batch:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {args[0].shape[0]} images")

    handle = module.register_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def test_halving_batches_retries_smaller_and_keeps_order() -> None:
    calls: list[tuple[int, int]] = []
    reports: list[int] = []

    def fn(start: int, n: int) -> list[int]:
        calls.append((start, n))
        if n > 3:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return list(range(start, start + n))

    out = halving_batches(10, 8, fn, lambda size, _msg: reports.append(size))
    assert [i for part in out for i in part] == list(range(10))
    assert reports == [4, 2]  # 8 -> 4 -> 2, then every later batch stays at 2
    assert calls[:3] == [(0, 8), (0, 4), (0, 2)] and all(n <= 2 for _, n in calls[3:])


def test_halving_batches_gives_up_at_one_and_passes_other_errors_through() -> None:
    def always_oom(start: int, n: int) -> None:
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(ValueError, match="out of GPU memory at test batch size 1"):
        halving_batches(4, 4, always_oom, what="test batch")

    def broken(start: int, n: int) -> None:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        halving_batches(4, 4, broken)
    assert is_oom(torch.OutOfMemoryError("x")) and not is_oom(RuntimeError("shape mismatch"))


def test_gan_sampling_backs_off_without_changing_images() -> None:
    torch.manual_seed(0)
    config = GanConfig(image_size=32, width=0.125)
    generator = Generator(config.nz, config.width, config.image_size).eval()
    reference = sample_images(generator, 20, seed=3, device="cpu", batch_size=16)
    reports: list[int] = []
    with memory_limit(generator, max_batch=5) as seen:
        limited = sample_images(
            generator, 20, seed=3, device="cpu", batch_size=16, on_batch_size=lambda s, _m: reports.append(s)
        )
    assert reports == [8, 4] and max(seen) == 16 and all(n <= 4 for n in seen[3:])
    # Eval-mode BatchNorm: an image depends only on its own noise, so the smaller batches change nothing
    # beyond float summation order.
    assert np.abs(reference.astype(int) - limited.astype(int)).max() <= 1


def test_sd_generation_backs_off_and_reports_the_new_batch_size(tmp_path: Path) -> None:
    pipe = load_pipeline("tiny", mode="txt2img", device="cpu", workspace=tmp_path)
    items = default_vocabulary("cat").sample(4, seed=1)
    params = {"steps": 2, "guidance": 7.5, "resolution": 64, "output_size": 32}
    reference = generate(pipe, items, batch_size=4, **params)
    reports: list[tuple[int, str]] = []
    # Classifier-free guidance runs the UNet on 2 x images: a limit of 2 fits one image at a time.
    with memory_limit(pipe.unet, max_batch=2) as seen:
        limited = generate(pipe, items, batch_size=4, on_batch_size=lambda s, m: reports.append((s, m)), **params)
    assert [s for s, _ in reports] == [2, 1] and "halved to 1" in reports[-1][1]
    assert max(seen) == 8 and seen[-1] == 2
    assert [g.item.index for g in limited] == [0, 1, 2, 3]
    for a, b in zip(reference, limited, strict=True):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1
    with memory_limit(pipe.unet, max_batch=1), pytest.raises(ValueError, match="out of GPU memory at batch size 1"):
        generate(pipe, items[:1], batch_size=1, **params)
