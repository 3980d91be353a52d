"""MC-dropout scoring of a candidate pool: the backbone runs once, only the head runs T times.

Models follow the contract of ``backend.training.models``: ``model.features(x) -> (N, F)`` with no
dropout inside, and ``model.head = Sequential(Dropout(p), Linear(F, C))``. With the backbone in eval
mode the features are deterministic, so T stochastic passes of the whole network equal one backbone
pass plus T stochastic head passes -- at the cost of one ``Linear`` per extra pass instead of a whole
CNN, and the T head passes run as one call on T stacked copies of the features. The backbone runs under
bf16 autocast on CUDA and on CPUs with native bf16, fp32 elsewhere (``scoring_precision``).
``full_pass_probs`` is the naive reference (tests and the benchmark compare against it).

Memory: ``score_pool`` streams the pool in batches of ``batch_size`` images from any uint8 NHWC source
(an array, a ``np.memmap`` or ``NpyRows``), normalises each batch on the fly, and keeps only the
per-candidate scalar summaries of ``acquisition.SUMMARY_KEYS`` (5 float32 per image, 20 bytes) --
never the (T, N, C) probabilities or the (N, F) features of the whole pool. Features that a later
step needs (diversity among the top candidates, near-copy checks, the feature map) are recomputed
with ``extract_features`` for just those positions, which costs a forward pass over a few hundred
images instead of holding N x F floats.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn as nn

from backend.core.hooks import Stopped
from backend.data.transforms import normalize
from backend.selection.acquisition import EPIG_KEY, SUMMARY_KEYS, summarize
from backend.selection.epig import epig

Progress = Callable[[float, str | None], None]


class ImageSource(Protocol):
    """uint8 (N, H, W, 3) images addressable by slice and by an integer index array."""

    shape: tuple[int, ...]

    def __len__(self) -> int: ...

    def __getitem__(self, key: slice | np.ndarray) -> np.ndarray: ...


class NpyRows:
    """Rows of a ``.npy`` file read with ``os.pread``: resident memory stays at one batch.

    A ``np.memmap`` keeps every page it has touched mapped into the process, so streaming an 80,000
    image pool through one grows the resident set to the whole file; explicit reads do not.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            self._offset = fh.tell()
        if fortran or dtype != np.uint8 or len(shape) != 4:
            raise ValueError(f"{self.path}: expected a C-ordered uint8 (N, H, W, C) array, got {dtype} {shape}")
        self.shape = tuple(shape)
        self.dtype = np.dtype(np.uint8)
        self._row = int(np.prod(shape[1:]))

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, fd: int, start: int, stop: int) -> np.ndarray:
        n = max(0, stop - start)
        buf = os.pread(fd, n * self._row, self._offset + start * self._row)
        return np.frombuffer(buf, dtype=np.uint8).reshape(n, *self.shape[1:]).copy()

    def __getitem__(self, key: slice | np.ndarray | Sequence[int]) -> np.ndarray:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if isinstance(key, slice):
                start, stop, step = key.indices(len(self))
                if step != 1:
                    raise ValueError("NpyRows supports contiguous slices only")
                return self._read(fd, start, stop)
            idx = np.asarray(key, dtype=np.int64)
            out = np.empty((len(idx), *self.shape[1:]), dtype=np.uint8)
            for i, j in enumerate(idx):
                out[i] = self._read(fd, int(j), int(j) + 1)[0]
            return out
        finally:
            os.close(fd)


def iter_batches(
    source: ImageSource, batch_size: int, indices: np.ndarray | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(offset, uint8 batch)``; ``offset`` counts positions in ``indices`` (or the source)."""
    n = len(source) if indices is None else len(indices)
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        if indices is None:
            yield start, np.asarray(source[start:stop])
        else:
            # Sorted reads are sequential on disk; the inverse permutation restores the caller's order.
            chunk = np.asarray(indices[start:stop], dtype=np.int64)
            order = np.argsort(chunk, kind="stable")
            batch = np.asarray(source[chunk[order]])
            out = np.empty_like(batch)
            out[order] = batch
            yield start, out


def to_input(batch: np.ndarray, mean: Sequence[float], std: Sequence[float], device: str) -> torch.Tensor:
    """uint8 (B, H, W, 3) numpy -> normalised float (B, 3, H, W) on ``device``."""
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device, non_blocking=True).permute(0, 3, 1, 2)
    # channels_last: cuDNN's NHWC tensor-core kernels on CUDA, oneDNN's blocked kernels on CPU.
    return normalize(x, mean, std).contiguous(memory_format=torch.channels_last)


@contextlib.contextmanager
def mc_dropout_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode everywhere (BatchNorm uses running stats) except dropout layers; restores modes after.

    Also leaves the weights in channels_last, as the trainer does: a model loaded from a checkpoint or
    built elsewhere would otherwise have its NCHW weights reordered for the channels_last input on every
    convolution call (backbone 1.2-1.6x slower on a 2-core CPU). The function computed is the same.
    """
    model.to(memory_format=torch.channels_last)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.train()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.train(mode)


@contextlib.contextmanager
def seeded(seed: int, device: str) -> Iterator[None]:
    """Seed torch's RNG for the dropout masks without disturbing the caller's RNG state."""
    devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def scoring_bf16(device: str) -> bool:
    """Whether the backbone runs under bf16 autocast: on CUDA, and on CPUs with native bf16 (AVX512-BF16
    or AMX), where oneDNN's bf16 convolutions beat fp32; elsewhere bf16 would be emulated, so fp32."""
    if device.startswith("cuda"):
        return True
    from backend.training.trainer import cpu_has_native_bf16  # the one definition of "native"

    return cpu_has_native_bf16()


def scoring_precision(device: str) -> str:
    """``"bf16"`` or ``"fp32"``: the backbone arithmetic ``score_pool`` uses on ``device``."""
    return "bf16" if scoring_bf16(device) else "fp32"


def _backbone(model: nn.Module, x: torch.Tensor, device: str, bf16: bool | None = None) -> torch.Tensor:
    # bf16 autocast where it is native (see ``scoring_bf16``): the convolutions dominate; the head then
    # runs in float32 on the features.
    bf16 = scoring_bf16(device) if bf16 is None else bf16
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
        feats = model.features(x)
    return feats.float()


def _head_passes(model: nn.Module, feats: torch.Tensor, mc_samples: int) -> torch.Tensor:
    """(B, F) features -> (T, B, C) probabilities: the T dropout passes as one head call.

    Each (pass, image) row gets its own dropout mask, as in T separate passes; one call instead of T
    small ones (on a 2-core CPU the loop cost as much as the backbone). For the usual head
    ``Sequential(Dropout(p), Linear)`` the masks are ``rand >= p`` drawn in one call: the same Bernoulli
    masks as ``nn.Dropout``, without its per-element Bernoulli sampler (4x slower on a CPU, where it took
    a third of the scoring time). Masks come from the same RNG in another order than T full passes draw
    them, so results equal ``full_pass_probs`` in distribution, not bitwise (``_head_passes_sequential``
    does).
    """
    b = feats.shape[0]
    layers = list(model.head) if isinstance(model.head, nn.Sequential) else []
    if (
        len(layers) == 2
        and isinstance(layers[0], nn.Dropout)
        and isinstance(layers[1], nn.Linear)
        and 0.0 < layers[0].p < 1.0
        and layers[0].training
    ):
        p = layers[0].p
        keep = torch.rand(mc_samples, b, feats.shape[1], device=feats.device) >= p
        logits = layers[1](feats * keep * (1.0 / (1.0 - p)))  # (T, B, C)
        return torch.softmax(logits.float(), dim=2)
    logits = model.head(feats.repeat(mc_samples, 1))  # row t * B + i: pass t, image i
    return torch.softmax(logits.float(), dim=1).view(mc_samples, b, -1)


def _head_passes_sequential(model: nn.Module, feats: torch.Tensor, mc_samples: int) -> torch.Tensor:
    """(B, F) -> (T, B, C), one head call per pass: draws the masks in the same order as T full passes,
    which makes head-only scoring bitwise equal to the naive reference (the tests' exact check)."""
    return torch.stack([torch.softmax(model.head(feats), dim=1) for _ in range(mc_samples)])


def shared_masks(model: nn.Module, mc_samples: int, seed: int, device: str) -> torch.Tensor:
    """T dropout masks (T, F) for the head's input, scaled by 1 / (1 - p), drawn from their own generator.

    One mask per pass shared by every image is one weight sample theta_t (a dropped feature is a
    dropped row of the linear layer), which EPIG's joint p(y, y* | theta_t) needs; the per-image masks
    of ``_head_passes`` are independent across images. The own generator leaves the global RNG (and so
    every other summary) exactly as without EPIG.
    """
    drop, linear = model.head[0], model.head[-1]
    if not isinstance(drop, nn.modules.dropout._DropoutNd) or not isinstance(linear, nn.Linear):
        raise ValueError("EPIG needs model.head = Sequential(Dropout(p), Linear(F, C))")
    gen = torch.Generator().manual_seed(seed)
    keep = (torch.rand(mc_samples, linear.in_features, generator=gen) >= drop.p).float() / (1.0 - drop.p)
    return keep.to(device)


def shared_mask_probs(model: nn.Module, feats: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(B, F) features, (T, F) masks -> (T, B, C) probabilities under the T shared weight samples."""
    return torch.softmax(model.head[-1](feats[None] * masks[:, None]), dim=2)


@torch.no_grad()
def target_probs(
    model: nn.Module,
    source: ImageSource,
    mean: Sequence[float],
    std: Sequence[float],
    masks: torch.Tensor,
    *,
    device: str = "cpu",
    batch_size: int = 512,
) -> np.ndarray:
    """Shared-mask probabilities (T, M, C) of the target set (the kept real minority images; M small)."""
    feats = extract_features(model, source, mean, std, device=device, batch_size=batch_size)
    return shared_mask_probs(model, torch.from_numpy(feats).to(device), masks).cpu().numpy()


@torch.no_grad()
def extract_features(
    model: nn.Module,
    source: ImageSource,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    indices: np.ndarray | None = None,
    device: str = "cpu",
    batch_size: int = 512,
) -> np.ndarray:
    """Deterministic backbone features (M, F) float32 for ``indices`` (default: the whole source)."""
    chunks = []
    with mc_dropout_mode(model):
        for _, batch in iter_batches(source, batch_size, indices):
            chunks.append(_backbone(model, to_input(batch, mean, std, device), device).cpu().numpy())
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(chunks)


@torch.no_grad()
def mc_probs(
    model: nn.Module,
    source: ImageSource,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    mc_samples: int = 20,
    device: str = "cpu",
    batch_size: int = 512,
    seed: int = 0,
    sequential: bool = False,
) -> np.ndarray:
    """Head-only MC-dropout probabilities (T, N, C) of a small source (the whole tensor is returned).

    ``sequential``: one head call per pass, bitwise equal to ``full_pass_probs`` (see ``_head_passes``).
    """
    out = []
    passes = _head_passes_sequential if sequential else _head_passes
    with mc_dropout_mode(model), seeded(seed, device):
        for _, batch in iter_batches(source, batch_size):
            feats = _backbone(model, to_input(batch, mean, std, device), device)
            out.append(passes(model, feats, mc_samples).cpu().numpy())
    return np.concatenate(out, axis=1)


@torch.no_grad()
def full_pass_probs(
    model: nn.Module,
    source: ImageSource,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    mc_samples: int = 20,
    device: str = "cpu",
    batch_size: int = 512,
    seed: int = 0,
) -> np.ndarray:
    """Naive reference: T full stochastic forward passes per batch -> (T, N, C)."""
    out = []
    bf16 = scoring_bf16(device)  # the same arithmetic as score_pool's backbone
    with mc_dropout_mode(model), seeded(seed, device):
        for _, batch in iter_batches(source, batch_size):
            x = to_input(batch, mean, std, device)
            passes = []
            for _ in range(mc_samples):
                # A whole forward pass each time, in score_pool's arithmetic: the backbone under bf16 autocast
                # where native, the head in float32 (a bf16 head would differ on CPUs with native bf16).
                logits = model.head(_backbone(model, x, device, bf16))
                passes.append(torch.softmax(logits, dim=1))
            out.append(torch.stack(passes).cpu().numpy())
    return np.concatenate(out, axis=1)


@torch.no_grad()
def score_pool(
    model: nn.Module,
    source: ImageSource,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    target: int,
    mc_samples: int = 20,
    device: str = "cpu",
    batch_size: int = 512,
    seed: int = 0,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    targets: ImageSource | None = None,
) -> dict[str, np.ndarray]:
    """Stream the pool and return per-candidate summaries {key: (N,) float32} (see ``SUMMARY_KEYS``).

    Equal to ``acquisition.summarize(mc_probs(...), target)`` for the same seed and batch size, but the
    memory held is the summaries plus one batch, whatever the pool size. With ``targets`` (uint8
    (M, H, W, 3), the kept real minority images) the summary also holds ``"epig"`` (N,): the target
    set's (T, M, C) shared-mask probabilities are computed once and each batch's (T, B, C) is scored
    against them. Raises ``Stopped`` if ``should_stop()`` turns True between batches.
    """
    if mc_samples < 1:
        raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
    n = len(source)
    keys = (*SUMMARY_KEYS, EPIG_KEY) if targets is not None else SUMMARY_KEYS
    summary = {key: np.empty(n, dtype=np.float32) for key in keys}
    masks = targ = None
    if targets is not None:
        masks = shared_masks(model, mc_samples, seed + 1, device)
        with mc_dropout_mode(model):
            targ = target_probs(model, targets, mean, std, masks, device=device, batch_size=batch_size)
    bf16 = scoring_bf16(device)
    with mc_dropout_mode(model), seeded(seed, device):
        for start, batch in iter_batches(source, batch_size):
            if should_stop is not None and should_stop():
                raise Stopped("stopped while scoring the pool")
            feats = _backbone(model, to_input(batch, mean, std, device), device, bf16)
            probs = _head_passes(model, feats, mc_samples).cpu().numpy()
            for key, values in summarize(probs, target).items():
                summary[key][start : start + len(batch)] = values
            if masks is not None:
                shared = shared_mask_probs(model, feats, masks).cpu().numpy()
                summary[EPIG_KEY][start : start + len(batch)] = epig(shared, targ)
            if progress is not None:
                progress((start + len(batch)) / max(n, 1), f"scored {start + len(batch)}/{n} candidates")
    return summary
