"""The classifier trainer: one readable loop in the spirit of airbench, in two steps.

``fit`` trains on a training set and returns the weights of the chosen epoch; ``evaluate`` measures
per-class accuracy of a model on held-out images (a validation split while fitting, the test set once
afterwards). Sections in reading order: configuration -> data (uint8 tensors resident on the device,
batched augmentation, no DataLoader) -> loss -> schedule -> evaluation -> fit -> checkpoint state.

Honest evaluation: ``fit`` never sees the test set. The validation split is handed in by the caller (the
benchmark carves one per dataset, imbalance and seed and gives the same one to every variant; see
``validation_split``), and any training image byte-identical to a validation image is dropped, so no copy
of a validation image (an oversampled repeat, the same picture under another index) trains. The epoch is
``select_epoch``: "last" (the end of the schedule, no selection) or "best_balanced" (best mean per-class
validation accuracy, so a minority class of a few images counts as much as a class of thousands).

Repeatability: the same config and seed give bitwise-identical results on CPU (same thread count); a run
resumed from a checkpointed state continues exactly as if it had not stopped. On CUDA, cuDNN picks
algorithms per shape, so runs agree closely but not bitwise.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from backend.core.hooks import NO_HOOKS, Hooks
from backend.data.transforms import normalize, random_crop_flip, strong_augment
from backend.training.metrics import mean_class_accuracy, overall_accuracy, per_class_accuracy
from backend.training.models import Classifier, ModelName, build_model

CHECKPOINT_KIND = "trainer"  # the ``kind`` of ``backend.core.checkpoint.save_state`` for a fit state


def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bf16 convolutions in hardware (AVX512-BF16 or AMX), not emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


log = logging.getLogger(__name__)


def uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether forward passes run under bf16 autocast.

    "auto": always on CUDA (no loss scaling needed: bf16 has fp32's exponent range) and on CPUs with
    native bf16, where it is about 1.45x faster for ``small`` on 2 cores; elsewhere bf16 would be
    emulated, i.e. slower than fp32. "fp32" and "bf16" force one or the other.
    """
    if precision == "auto":
        return device.type == "cuda" or cpu_has_native_bf16()
    return precision == "bf16"


def uses_compile(setting: str, steps: int, device: torch.device | None = None, bf16: bool = False) -> bool:
    """Whether ``fit`` compiles its training forward (``TrainConfig.compile``).

    "auto" compiles where it was measured to pay (benchmarks/bench_train.py, 2-core CPU with native bf16):
    fp32 on a CPU, 1.2x per epoch for ``small``, for runs of ``COMPILE_MIN_STEPS``+ steps (a first compile
    takes ~35 s). Not bf16 on a CPU (compiled was 0.9x eager there) and not yet CUDA (not measured: no GPU
    was lent); "on" forces it anywhere."""
    if setting != "auto":
        return setting == "on"
    cpu = device is None or device.type == "cpu"
    return cpu and not bf16 and steps >= COMPILE_MIN_STEPS and shutil.which(_cxx()) is not None


def _cxx() -> str:
    """The C++ compiler torch.compile's CPU backend (inductor) calls."""
    try:
        from torch._inductor import config as inductor_config

        return str(inductor_config.cpp.cxx[-1])
    except (ImportError, AttributeError, IndexError, TypeError):
        return os.environ.get("CXX", "g++")


# ----------------------------------------------------------------------------------------------------
# Configuration


# The knobs users set, as types the benchmark and selection params reuse: each limit and meaning lives here.
Epochs = Annotated[int, Field(ge=1, le=1000, description="passes over the training split")]
# ge=2: BatchNorm cannot train on a single example.
BatchSize = Annotated[int, Field(ge=2, le=8192, description="examples per SGD step (a partial last batch is dropped)")]
LearningRate = Annotated[float, Field(gt=0, le=10, description="peak learning rate per batch of 256 examples")]
LossName = Literal["ce", "class_weighted", "logit_adjusted"]
LOSSES = get_args(LossName)
SelectEpoch = Annotated[
    Literal["last", "best_balanced"],
    Field(description="weights kept: last = end of schedule; best_balanced = best mean per-class validation accuracy"),
]
Compile = Annotated[
    Literal["auto", "on", "off"],
    Field(
        description="torch.compile the training forward: auto = fp32 on a CPU for runs of 2,000+ steps with a "
        "C++ compiler present (measured 1.2x per epoch for `small`; a first compile takes ~35 s), else off; "
        "on = always (bf16 on a CPU measured slower compiled; CUDA not measured yet)"
    ),
]
COMPILE_MIN_STEPS = 2000
# A run set in optimiser steps (``TrainConfig.steps``) is cut into at most this many evaluation periods (its
# "epochs" in the history, checkpoints and ``select_epoch``), so a tiny training set is not validated after
# every one of its few-step passes.
MAX_PERIODS = 30
Steps = Annotated[
    int,
    Field(
        ge=1,
        le=1_000_000,
        description="optimiser steps of the run, whatever the size of its training set (replaces epochs)",
    ),
]
MinSide = Annotated[
    int,
    Field(
        ge=0,
        le=512,
        description="images with a side shorter than this are upscaled (bilinear) to it before training and "
        "testing, so padded crops and the network's pooling suit tiny images (8x8 digits); 0 = never",
    ),
]
Precision = Annotated[
    Literal["auto", "fp32", "bf16"],
    Field(description="autocast: auto = bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX), else fp32"),
]
# DiffuLT (Shao et al. 2024) down-weights generated examples in the loss; 1 treats them as real ones.
SyntheticWeight = Annotated[
    float,
    Field(gt=0, le=10, description="loss weight of a synthetic example relative to a real one (DiffuLT uses < 1)"),
]
# SYNAuG (Ye-Bin et al. 2023): after training on the mix, re-fit only the classifier layer on real images.
FinetuneRealEpochs = Annotated[
    int,
    Field(
        ge=0,
        le=1000,
        description="after the mixed training, epochs fitting only the last layer on real images (SYNAuG); 0 = off",
    ),
]


# The benchmark's default schedule (``auto_steps``): the study's 100 passes over the dataset's training images,
# within a floor that lets a small set converge and a per-device ceiling that keeps a run to about a minute
# of ``small`` on 2 CPU cores (~8,000 images/s) or the study's 100 CIFAR-10 epochs at batch 256 on a GPU.
AUTO_PASSES = 100
AUTO_STEPS = {"cpu": (500, 6000), "cuda": (500, 20000)}  # device -> (floor, ceiling)
DEFAULT_BATCH = {"cpu": 64, "cuda": 256}  # device -> the benchmark's default batch size


def auto_steps(num_images: int, batch_size: int, device: str) -> int:
    """Optimiser steps of a benchmark run when none are given: ``AUTO_PASSES`` passes over ``num_images``
    (the dataset's training images, the same number for every variant) at ``batch_size``, clamped to the
    device's ``AUTO_STEPS`` range. Measured: README "Benchmark schedule"."""
    floor, ceiling = AUTO_STEPS["cuda" if device.startswith("cuda") else "cpu"]
    return int(min(max(AUTO_PASSES * num_images // max(batch_size, 1), floor), ceiling))


def default_batch(device: str) -> int:
    return DEFAULT_BATCH["cuda" if device.startswith("cuda") else "cpu"]


def run_schedule(
    steps: int | None, epochs: int | None, batch_size: int | None, num_images: int, device: str
) -> tuple[int, int]:
    """(steps, batch_size) of every run of a benchmark over a dataset of ``num_images`` training images:
    ``steps`` as given; else ``epochs`` passes of those images; else :func:`auto_steps`."""
    batch = batch_size or default_batch(device)
    if steps is not None:
        return steps, batch
    if epochs is not None:
        return max(1, epochs * max(num_images // batch, 1)), batch
    return auto_steps(num_images, batch, device), batch


def default_classifier(model: str | None, device: str) -> str:
    """The study's ResNet18 on a GPU; the fast ``small`` CNN on CPU, unless a model was named."""
    return model or ("resnet18_cifar" if device.startswith("cuda") else "small")


# Measured optimiser steps per second of a whole benchmark run (training, per-period validation, the fit check
# and the test), by (device, model), at the default batch: ``small`` on the 2-core AMD Zen 5 VM, bf16 (the
# digits experiment, 20 runs of 2,246 steps in 608 s). None: not measured on that device yet.
STEPS_PER_SECOND: dict[tuple[str, str], float | None] = {("cpu", "small"): 74.0}


def estimate_seconds(steps: int, runs: int, device: str, model: str) -> float | None:
    """Seconds ``runs`` benchmark runs of ``steps`` steps take at the measured rate (None where unmeasured)."""
    rate = STEPS_PER_SECOND.get(("cuda" if device.startswith("cuda") else "cpu", model))
    return None if not rate else steps * runs / rate


class TrainConfig(BaseModel):
    """Every hyperparameter of a training run, with its unit. Stored with every result and checkpoint."""

    model_config = ConfigDict(extra="forbid")

    model: ModelName = "small"  # classifier name in backend.training.models.MODELS
    epochs: Epochs = 30
    # A fixed number of optimiser steps instead of epochs: every training set, large or small, gets the
    # same amount of optimisation (a benchmark compares variants of different sizes; see ``periods``).
    steps: Steps | None = None
    batch_size: BatchSize = 256
    lr: LearningRate = 0.1  # scaled linearly with batch_size
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD heavy-ball momentum
    weight_decay: float = Field(5e-4, ge=0)  # L2 coefficient applied by SGD to every parameter, per step
    warmup_epochs: int | None = Field(None, ge=0)  # linear warm-up, in epochs; None -> min(5, epochs // 10)
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # share of each target's mass spread uniformly over classes
    loss: LossName = "ce"  # see ``make_loss``
    logit_adjust_tau: float = 1.0  # weight of the log-prior offset for loss="logit_adjusted" (Menon et al.: 1)
    dropout: float = Field(0.0, ge=0, lt=1)  # dropout probability in the classifier head (MC-dropout uses > 0)
    select_epoch: SelectEpoch = "last"  # which epoch's weights ``fit`` returns
    seed: int = 0  # seeds weights, data order, augmentation and dropout
    device: str = "cpu"  # "cpu" or "cuda"; channels_last memory format on both
    precision: Precision = "auto"  # autocast dtype; see ``uses_bf16``
    compile: Compile = "auto"  # torch.compile the training forward; see ``uses_compile``
    eval_batch_size: int = Field(1024, ge=1)  # examples per forward pass during evaluation
    min_side: MinSide = 0  # upscale smaller images to this side before training and testing (0 = never)
    # Recipes for training on synthetic images (recorded with every result):
    synthetic_weight: SyntheticWeight = 1.0  # loss weight of a synthetic example relative to a real one
    finetune_real_epochs: FinetuneRealEpochs = 0  # last-layer epochs on real images only, after ``epochs``

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.warmup_epochs is not None and self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs {self.warmup_epochs} exceeds epochs {self.epochs}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device: expected 'cpu' or 'cuda', got {self.device!r}")
        return self

    @property
    def warmup(self) -> int:
        """Warm-up epochs actually used: the study's 5 for 50+ epochs, one per ten epochs below that."""
        return min(5, self.epochs // 10) if self.warmup_epochs is None else self.warmup_epochs

    def periods(self, steps_per_epoch: int) -> tuple[int, int]:
        """(periods, steps per period) of the main phase for a training set of ``steps_per_epoch`` batches.

        Without ``steps``: one period per epoch. With ``steps``: periods of at least one pass over the data
        and at most ``MAX_PERIODS`` of them; the last period may be shorter, so the total is exactly ``steps``.
        """
        if self.steps is None:
            return self.epochs, steps_per_epoch
        per = max(steps_per_epoch, math.ceil(self.steps / MAX_PERIODS))
        return math.ceil(self.steps / per), per

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimiser steps of the main phase (without the real-only fine-tune)."""
        return self.steps if self.steps is not None else self.epochs * steps_per_epoch

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a plain dict; unknown keys raise ValueError naming them."""
        unknown = sorted(set(values) - set(cls.model_fields))
        if unknown:
            raise ValueError(f"unknown training config keys: {', '.join(unknown)}")
        return cls(**values)


@dataclass
class FitResult:
    """Outcome of ``fit``: the model with the chosen epoch's weights and the per-epoch history."""

    model: Classifier  # weights of epoch ``epoch``, in eval mode, on the config's device
    history: list[dict[str, Any]]  # per epoch: epoch, train_loss, train_acc, val_acc, val_balanced (%), lr, seconds
    epoch: int  # 1-based epoch whose weights ``model`` holds
    num_train: int  # training images after dropping copies of validation images
    num_val: int
    config: dict[str, Any]
    seconds: float
    steps: int = 0  # optimiser steps of the main phase (the real-only fine-tune's not counted)
    # mean per-class accuracy (%) of the returned weights on the real training images, unaugmented (at most
    # FIT_SAMPLE per class): how well the run fit its own data; low = under-trained (``UNDER_TRAINED_BELOW``)
    train_balanced: float | None = None

    @property
    def val_acc(self) -> float | None:
        """Overall validation accuracy % of the chosen epoch (None without a validation split)."""
        return self.history[self.epoch - 1]["val_acc"]


@dataclass
class Scores:
    """Accuracy of a model on labelled images, in percent."""

    accuracy: float  # share of all images classified correctly (NaN for no images)
    per_class: list[float | None]  # recall per class index; None for a class without images
    confusion: list[list[int]]  # rows = true class, columns = predicted class
    # bool (N,): image i classified correctly, in the order given (the verdict's paired bootstrap needs it)
    correct: np.ndarray | None = None

    @property
    def balanced(self) -> float:
        """Mean per-class accuracy over the classes present (NaN for no images)."""
        return mean_class_accuracy(np.asarray(self.confusion))


# ----------------------------------------------------------------------------------------------------
# Data


@dataclass
class _Data:
    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int64 (N,)
    strong_mask: np.ndarray  # bool (N,): apply strong_augment at train time
    synthetic: np.ndarray  # bool (N,): a generated example (``Variant.origin == "synthetic"``)
    class_weights: np.ndarray | None
    num_classes: int | None


def _unpack(data: Any) -> _Data:
    """Accept a ``backend.data.variants.Variant`` (duck-typed) or an ``(images, labels[, strong])`` tuple."""
    if isinstance(data, tuple | list):
        images, labels = data[0], data[1]
        strong = data[2] if len(data) > 2 else None
        weights, classes, origin = None, None, None
    else:
        images, labels = data.images, data.labels
        strong = getattr(data, "strong_aug_mask", None)
        weights = getattr(data, "class_weights", None)
        classes = getattr(data, "classes", None)
        origin = getattr(data, "origin", None)
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) != n:
        raise ValueError(f"training images must be uint8 (N,H,W,3) matching {n} labels, got {images.shape}")
    return _Data(
        images=images,
        labels=labels,
        strong_mask=np.zeros(n, bool) if strong is None else np.asarray(strong, dtype=bool),
        synthetic=np.zeros(n, bool) if origin is None else np.asarray(origin) == "synthetic",
        class_weights=None if weights is None else np.asarray(weights, dtype=np.float32),
        num_classes=len(classes) if classes is not None else None,
    )


def _digests(images: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(np.ascontiguousarray(im).tobytes(), digest_size=16).digest() for im in images]


def copies_of(images: np.ndarray, others: np.ndarray) -> np.ndarray:
    """bool (N,): ``images[i]`` is byte-identical to some image of ``others``."""
    if len(others) == 0:
        return np.zeros(len(images), bool)
    seen = set(_digests(others))
    return np.fromiter((d in seen for d in _digests(images)), dtype=bool, count=len(images))


def validation_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a stratified, seeded validation split of ``fraction`` of ``labels``.

    scikit-learn's stratified shuffle split (its ``train_test_split``), so each class gives about its
    share. A class with a single sample cannot be split and always trains. ``fraction`` 0: no split.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if fraction <= 0 or len(labels) == 0:
        return np.zeros(0, np.int64)
    splittable = np.flatnonzero(np.bincount(labels)[labels] >= 2)
    try:
        from sklearn.model_selection import train_test_split  # scikit-learn costs a second to import

        _, val = train_test_split(
            splittable, test_size=fraction, stratify=labels[splittable], random_state=seed, shuffle=True
        )
    except ValueError as exc:  # e.g. fewer validation images than classes
        raise ValueError(f"val_fraction: cannot split {len(labels)} images with {fraction}: {exc}") from exc
    return np.sort(val)


def _to_device_nchw(images: np.ndarray, device: torch.device, min_side: int = 0) -> torch.Tensor:
    """uint8 NHWC (possibly memory-mapped) -> uint8 NCHW tensor resident on ``device``, upscaled so that
    its shorter side is at least ``min_side`` (see ``upscaled``)."""
    arr = np.ascontiguousarray(images)
    if not arr.flags.writeable:  # read-only memory maps: torch wants writable memory
        arr = arr.copy()
    return upscaled(torch.from_numpy(arr).to(device).permute(0, 3, 1, 2).contiguous(), min_side)


def upscaled(x: torch.Tensor, min_side: int) -> torch.Tensor:
    """uint8 (N, C, H, W) resized (bilinear, aspect kept) so its shorter side is ``min_side``; unchanged when
    it already is at least that (or ``min_side`` is 0).

    Why: the trainer's 4-pixel padded crop shifts an 8x8 digit by half its width, and ``small`` pools an
    8x8 input down to 1x1 after three stages. Measured on the digits as 8x8 PNGs (benchmarks/bench_train.py
    --schedule): see README "Benchmark schedule"."""
    h, w = x.shape[-2:]
    if min_side <= 0 or min(h, w) >= min_side or len(x) == 0:
        return x
    scale = min_side / min(h, w)
    size = (max(min_side, round(h * scale)), max(min_side, round(w * scale)))
    out = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------------------------------------
# Loss


def make_loss(
    config: TrainConfig, train_labels: np.ndarray, num_classes: int, class_weights: np.ndarray | None, device
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy with the configured imbalance remedy, optionally weighted per example.

    ce: plain cross-entropy; a variant that carries ``class_weights`` is still trained with them.
    class_weighted: per-class weights, inverse frequency (N / (K n_c), absent classes 0) unless the
        variant supplies its own.
    logit_adjusted: Menon et al. 2021 logit-adjusted loss: tau * log(prior_c) is added to the logits during
        training only, so the plain logits at test time are the balanced predictor (class counts floored
        at 1 so an absent class gets a finite prior).
    """
    counts = np.bincount(train_labels, minlength=num_classes).astype(np.float64)
    weights = class_weights
    if weights is None and config.loss == "class_weighted":
        present = max(int((counts > 0).sum()), 1)
        weights = np.where(counts > 0, counts.sum() / (present * np.maximum(counts, 1)), 0.0)
    w = None if weights is None else torch.as_tensor(weights, dtype=torch.float32, device=device)
    offset = None
    if config.loss == "logit_adjusted":
        prior = np.maximum(counts, 1) / counts.sum()
        offset = config.logit_adjust_tau * torch.as_tensor(np.log(prior), dtype=torch.float32, device=device)

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor, sample_weight: torch.Tensor | None = None) -> torch.Tensor:
        logits = logits.float()
        if offset is not None:
            logits = logits + offset
        if sample_weight is None:
            return F.cross_entropy(logits, targets, weight=w, label_smoothing=config.label_smoothing)
        # Per-example weights (synthetic_weight): the weighted mean, normalised like cross_entropy's own
        # class-weighted mean, so a batch of only real examples gives exactly the unweighted loss.
        per = F.cross_entropy(logits, targets, weight=w, label_smoothing=config.label_smoothing, reduction="none")
        norm = sample_weight if w is None else sample_weight * w[targets]
        return (per * sample_weight).sum() / norm.sum().clamp_min(1e-12)

    return loss_fn


# ----------------------------------------------------------------------------------------------------
# Schedule


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Linear warm-up from peak/warmup_steps to peak, then one cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


# ----------------------------------------------------------------------------------------------------
# Evaluation


def _prepare(x_u8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    # channels_last picks the fastest convolution kernels: cuDNN's NHWC tensor-core ones on CUDA and
    # oneDNN's blocked ones on CPU (1.7x for ``small`` on 2 cores, same fp32 arithmetic).
    return normalize(x_u8, mean, std).contiguous(memory_format=torch.channels_last)


def _sgd(params, **kwargs) -> torch.optim.SGD:
    """SGD with the multi-tensor ``foreach`` kernels: one dispatch for all parameters instead of a
    per-parameter loop, same arithmetic. (``fused=True`` broke the bitwise equality of a resumed run
    with an uninterrupted one on CPU -- tests/training/test_trainer.py -- so it is not used.)"""
    return torch.optim.SGD(params, foreach=True, **kwargs)


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    images: np.ndarray,
    *,
    mean,
    std,
    batch_size: int = 1024,
    precision: str = "auto",
    min_side: int = 0,
) -> np.ndarray:
    """int64 (N,) argmax classes of ``model`` for uint8 (N, H, W, 3) ``images``, without augmentation.

    mean/std: per-channel statistics in 0-1 units, as used in training. Runs on the model's device.
    min_side: the training config's (images are upscaled exactly as in training).
    """
    device = next(model.parameters()).device
    bf16 = uses_bf16(precision, device)
    mean_t, std_t = (torch.as_tensor(v, dtype=torch.float32, device=device) for v in (mean, std))
    was_training = model.training
    model.eval()
    preds = []
    for start in range(0, len(images), batch_size):
        x = _to_device_nchw(images[start : start + batch_size], device, min_side)
        with _autocast(device, bf16):
            preds.append(model(_prepare(x, mean_t, std_t)).argmax(1).cpu())
    model.train(was_training)
    return torch.cat(preds).numpy() if preds else np.zeros(0, np.int64)


def evaluate(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    mean,
    std,
    num_classes: int,
    batch_size: int = 1024,
    precision: str = "auto",
    min_side: int = 0,
) -> Scores:
    """Accuracy of ``model`` on ``images`` with int ``labels`` (see :func:`predict`)."""
    pred = predict(model, images, mean=mean, std=std, batch_size=batch_size, precision=precision, min_side=min_side)
    labels = np.asarray(labels, dtype=np.int64)
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(labels, pred, labels=np.arange(num_classes))
    per_class = [None if math.isnan(a) else float(a) for a in per_class_accuracy(cm)]
    return Scores(accuracy=overall_accuracy(cm), per_class=per_class, confusion=cm.tolist(), correct=pred == labels)


def evaluate_as_trained(model: torch.nn.Module, images, labels, config: TrainConfig, *, mean, std, k: int) -> Scores:
    """:func:`evaluate` with the batch size, precision and upscaling ``config`` trained with."""
    return evaluate(
        model,
        images,
        labels,
        mean=mean,
        std=std,
        num_classes=k,
        batch_size=config.eval_batch_size,
        precision=config.precision,
        min_side=config.min_side,
    )


def chosen_epoch(history: list[dict[str, Any]], select_epoch: str) -> int:
    """The 1-based epoch ``select_epoch`` picks from ``history``: the last, or the best mean per-class
    validation accuracy ("best_balanced"; ties go to the later epoch, which has seen more steps)."""
    if select_epoch == "last":
        return len(history)
    best = 0
    for i, h in enumerate(history):
        if h["val_balanced"] >= history[best]["val_balanced"]:
            best = i
    return best + 1


# ----------------------------------------------------------------------------------------------------
# Fit


def fit(
    data: Any,
    config: TrainConfig,
    *,
    mean,
    std,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    num_classes: int | None = None,
    hooks: Hooks = NO_HOOKS,
    resume: dict[str, Any] | None = None,
) -> FitResult:
    """Train ``config.model`` on ``data`` (a Variant or (images, labels[, strong_mask])).

    val: (uint8 (M, H, W, 3), labels (M,)) measured after every epoch; training images byte-identical to
    one of them are dropped. mean/std: per-channel stats in 0-1 units (the full set's, as the study
    normalises every variant alike). ``hooks.progress`` gets every step, ``hooks.stop_point`` raises
    ``Stopped`` between steps, ``hooks.checkpoint`` gets a resumable state after every epoch (persist it
    with ``backend.core.checkpoint.save_state(state, CHECKPOINT_KIND)``); pass it back as ``resume`` to
    continue exactly where it stopped.
    """
    started = time.perf_counter()
    d = _unpack(data)
    vx, vy = (np.zeros((0, *d.images.shape[1:]), np.uint8), np.zeros(0, np.int64)) if val is None else val
    vy = np.asarray(vy, dtype=np.int64)
    k = num_classes or d.num_classes or int(max(d.labels.max(initial=0), vy.max(initial=0))) + 1
    if d.labels.min(initial=0) < 0 or d.labels.max(initial=0) >= k or vy.max(initial=0) >= k:
        raise ValueError(f"labels must lie in [0, {k})")
    if d.class_weights is not None and d.class_weights.shape != (k,):
        raise ValueError(f"class_weights: expected {k} values, got {d.class_weights.shape}")
    if config.select_epoch == "best_balanced" and len(vy) == 0:
        raise ValueError("select_epoch: 'best_balanced' needs a validation split")
    keep = np.flatnonzero(~copies_of(d.images, vx))
    if len(keep) == 0:
        raise ValueError("the training set is empty")
    device = torch.device(config.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device: 'cuda' requested but no CUDA device is available")
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN time its kernels once

    x_train = _to_device_nchw(d.images[keep], device, config.min_side)
    y_train = torch.from_numpy(d.labels[keep]).to(device)
    strong = torch.from_numpy(d.strong_mask[keep]).to(device)
    any_strong = bool(strong.any())
    mean_t, std_t = (torch.as_tensor(v, dtype=torch.float32, device=device) for v in (mean, std))

    # -- network, optimiser, loss ------------------------------------------------------------------
    torch.manual_seed(config.seed)  # weights and dropout masks (dropout draws from the global RNG)
    model: Classifier = build_model(config.model, k, dropout=config.dropout).to(device)
    model = model.to(memory_format=torch.channels_last)
    bf16 = uses_bf16(config.precision, device)
    peak_lr = config.lr * config.batch_size / 256
    optimizer = _sgd(model.parameters(), lr=peak_lr, momentum=config.momentum, weight_decay=config.weight_decay)
    loss_fn = make_loss(config, d.labels[keep], k, d.class_weights, device)
    n = len(keep)
    bs = min(config.batch_size, n)
    steps_per_epoch = max(n // bs, 1)
    periods, period_steps = config.periods(steps_per_epoch)
    total_steps = config.total_steps(steps_per_epoch)
    if config.steps is None:
        warmup_steps = config.warmup * steps_per_epoch
    elif config.warmup_epochs is None:
        warmup_steps = total_steps // 20  # the study's 5 warm-up epochs of 100
    else:
        warmup_steps = min(config.warmup_epochs * steps_per_epoch, total_steps)
    generator = torch.Generator().manual_seed(config.seed)  # data order + augmentation, drawn on CPU
    synthetic = d.synthetic[keep]
    sample_weight = None  # None keeps the plain loss (and bitwise results) when the recipe is off
    if config.synthetic_weight != 1.0 and synthetic.any():
        sample_weight = torch.from_numpy(np.where(synthetic, config.synthetic_weight, 1.0).astype(np.float32))
        sample_weight = sample_weight.to(device)

    # The optional real-only last-layer phase (SYNAuG): the backbone frozen in eval mode, the head re-fit on
    # the real images with the configured loss under their own prior, from a tenth of the peak lr, cosine.
    real = np.flatnonzero(~synthetic)
    if config.finetune_real_epochs and len(real) < 2:
        raise ValueError("finetune_real_epochs: needs at least 2 real training images")
    ft_bs = min(config.batch_size, max(len(real), 1))
    ft_steps_per_epoch = max(len(real) // ft_bs, 1)
    ft_total_steps = ft_steps_per_epoch * config.finetune_real_epochs
    ft_loss_fn = make_loss(config, d.labels[keep][real], k, d.class_weights, device) if ft_total_steps else None
    real_t = torch.from_numpy(real).to(device)
    head_optimizer = _sgd(
        model.head.parameters(), lr=peak_lr / 10, momentum=config.momentum, weight_decay=config.weight_decay
    )
    all_steps = total_steps + ft_total_steps

    # The compiled module shares the model's parameters: the optimiser, state_dict, checkpoints and evaluation
    # all use ``model`` itself; only the training forward runs compiled.
    forward: Any = model
    compiled_ok = False
    if uses_compile(config.compile, all_steps, device, bf16):
        forward = torch.compile(model)

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": 0, "model": None}  # kept only for select_epoch="best_balanced"
    start_epoch = 0
    if resume is not None:
        start_epoch = _restore(resume, config, model, optimizer, head_optimizer, generator, history, best)

    # -- loop ------------------------------------------------------------------------------------------
    total_epochs = periods + config.finetune_real_epochs
    for epoch in range(start_epoch, total_epochs):
        t0 = time.perf_counter()
        finetune = epoch >= periods
        if finetune:  # BatchNorm statistics and features stay those of the mixed training
            model.eval()
            model.head.train()
            pool, batch, steps, opt = real_t, ft_bs, ft_steps_per_epoch, head_optimizer
        else:
            model.train()
            pool, batch, opt = None, bs, optimizer
            steps = min(period_steps, total_steps - epoch * period_steps)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        size = n if pool is None else len(pool)
        # A period of more steps than one pass draws as many fresh permutations as it needs, back to back.
        passes = 1 if finetune else max(1, math.ceil(steps * batch / size))
        perm = torch.cat([torch.randperm(size, generator=generator) for _ in range(passes)]).to(device)
        if pool is not None:
            perm = pool[perm]
        for i in range(steps):
            hooks.stop_point(f"during epoch {epoch + 1}")
            if finetune:
                ft_step = (epoch - periods) * steps + i
                lr = lr_at(ft_step, ft_total_steps, 0, peak_lr / 10)
                done = total_steps + ft_step + 1
            else:
                step = epoch * period_steps + i
                lr = lr_at(step, total_steps, warmup_steps, peak_lr)
                done = step + 1
            for group in opt.param_groups:
                group["lr"] = lr
            idx = perm[i * batch : (i + 1) * batch]
            xb, yb = x_train[idx], y_train[idx]
            if any_strong:
                mask = strong[idx]
                if bool(mask.any()):
                    xb[mask] = strong_augment(xb[mask], generator=generator)
            xb = _prepare(random_crop_flip(xb, pad=4, flip=True, generator=generator), mean_t, std_t)
            with _autocast(device, bf16):
                if finetune:
                    with torch.no_grad():
                        feats = model.features(xb)
                    logits = model.head(feats)
                elif forward is not model and not compiled_ok:
                    try:  # the first compiled call compiles; a toolchain problem must not fail the run
                        logits = forward(xb)
                        compiled_ok = True
                    except Exception as exc:  # noqa: BLE001 - any compiler failure: train eagerly instead
                        log.warning("torch.compile failed (%s: %s); training without it", type(exc).__name__, exc)
                        forward = model
                        logits = model(xb)
                else:
                    logits = forward(xb)
            if finetune:
                loss = ft_loss_fn(logits, yb)
            else:
                loss = loss_fn(logits, yb, None if sample_weight is None else sample_weight[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            # Accumulate on the device: a .item() per step would stall the GPU pipeline.
            loss_sum += loss.detach() * len(yb)
            correct += (logits.argmax(1) == yb).sum()
            seen += len(yb)
            if finetune:
                label = f"real-only fine-tune {epoch + 1 - periods}/{config.finetune_real_epochs}"
            elif config.steps is not None:
                label = f"step {done}/{total_steps}"
            else:
                label = f"epoch {epoch + 1}/{config.epochs}"
            hooks.progress(done / all_steps, label)

        scores = None
        if len(vy):
            scores = evaluate_as_trained(model, vx, vy, config, mean=mean, std=std, k=k)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": float(loss_sum.item() / seen),
                "train_acc": float(100.0 * correct.item() / seen),
                "val_acc": None if scores is None else scores.accuracy,
                "val_balanced": None if scores is None else scores.balanced,
                "lr": lr,
                "steps": done,  # optimiser steps taken so far (the fine-tune's included)
                "seconds": time.perf_counter() - t0,
                "phase": "finetune_real" if finetune else "train",
            }
        )
        if config.select_epoch != "last" and chosen_epoch(history, config.select_epoch) == epoch + 1:
            best = {"epoch": epoch + 1, "model": _cpu_copy(model.state_dict())}
        if hooks.checkpoint is not None:
            hooks.checkpoint(_snapshot(epoch + 1, config, model, optimizer, head_optimizer, generator, history, best))

    if best["model"] is not None:
        model.load_state_dict(best["model"])
    model.eval()
    fit_idx = keep[_per_class_sample(d.labels[keep], ~synthetic, FIT_SAMPLE, config.seed)]
    fit_scores = evaluate_as_trained(model, d.images[fit_idx], d.labels[fit_idx], config, mean=mean, std=std, k=k)
    return FitResult(
        model=model,
        history=history,
        epoch=chosen_epoch(history, config.select_epoch),
        num_train=n,
        num_val=len(vy),
        config=config.to_dict(),
        seconds=time.perf_counter() - started,
        steps=total_steps,
        train_balanced=None if math.isnan(fit_scores.balanced) else float(fit_scores.balanced),
    )


FIT_SAMPLE = 500  # real training images per class the fit is measured on
# A run whose returned weights classify fewer than this share (mean per class, %) of their own real training
# images correctly has not fit its data: its result says more about the schedule than the variant.
UNDER_TRAINED_BELOW = 90.0


def _per_class_sample(labels: np.ndarray, eligible: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Sorted positions of at most ``cap`` eligible examples per class, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels[eligible]):
        idx = np.flatnonzero(eligible & (labels == c))
        out.append(idx if len(idx) <= cap else rng.choice(idx, cap, replace=False))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


# ----------------------------------------------------------------------------------------------------
# Checkpoint state (a nest of tensors and JSON values; ``backend.core.checkpoint`` stores it)


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _clone_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    # optimizer.state_dict() hands out the live momentum buffers, which the next step updates in place.
    return {
        "state": {
            pid: {k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v for k, v in s.items()}
            for pid, s in state["state"].items()
        },
        "param_groups": [dict(g) for g in state["param_groups"]],
    }


def _snapshot(epoch, config, model, optimizer, head_optimizer, generator, history, best) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "config": config.to_dict(),
        "model": _cpu_copy(model.state_dict()),
        "optimizer": _clone_optimizer_state(optimizer.state_dict()),
        "head_optimizer": _clone_optimizer_state(head_optimizer.state_dict()),
        "rng": {
            "data": generator.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.device(config.device).type == "cuda" else None,
        },
        "history": [dict(h) for h in history],
        "best": dict(best),
    }


def _restore(state, config, model, optimizer, head_optimizer, generator, history, best) -> int:
    """Load a snapshot into the live objects; returns the number of epochs already done."""
    # A state saved before a setting existed was trained with that setting's default.
    defaults = TrainConfig().to_dict()
    saved = {k: v for k, v in {**defaults, **state["config"]}.items() if k != "device"}
    now = {k: v for k, v in config.to_dict().items() if k != "device"}
    if saved != now:
        diff = sorted(k for k in now.keys() | saved.keys() if saved.get(k) != now.get(k))
        raise ValueError(f"resume state was saved with a different config ({', '.join(diff)})")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if "head_optimizer" in state:
        head_optimizer.load_state_dict(state["head_optimizer"])
    generator.set_state(state["rng"]["data"])
    torch.set_rng_state(state["rng"]["torch"])
    if torch.device(config.device).type == "cuda" and state["rng"]["cuda"] is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"])
    history.extend(dict(h) for h in state["history"])
    best.update(state["best"])
    return int(state["epoch"])
