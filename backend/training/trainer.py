"""The classifier trainer: one readable loop in the spirit of airbench.

Sections in reading order: configuration -> data (uint8 tensors resident on the device, batched
augmentation, no DataLoader) -> validation split -> loss -> schedule -> training loop -> evaluation ->
checkpoint state (safetensors + JSON, never pickle).

Honest evaluation: the checkpoint is chosen by accuracy on a validation split carved from the
*training* data (stratified, seeded); the test set is looked at once, with the chosen weights.

Repeatability: the same config and seed give bitwise-identical results on CPU (same thread count); a run
resumed from an ``on_epoch_end`` state continues exactly as if it had not stopped. On CUDA, cuDNN picks
algorithms per shape, so runs agree closely but not bitwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F

from backend.data.transforms import normalize, random_crop_flip, strong_augment
from backend.training.metrics import confusion_matrix, overall_accuracy, per_class_accuracy
from backend.training.models import MODELS, Classifier, build_model

Progress = Callable[..., None]
LOSSES = ("ce", "class_weighted", "logit_adjusted")
PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bf16 convolutions in hardware (AVX512-BF16 or AMX), not emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether forward passes run under bf16 autocast.

    "auto": always on CUDA (no loss scaling needed: bf16 has fp32's exponent range) and on CPUs with
    native bf16, where it is about 1.45x faster for ``small`` on 2 cores; elsewhere bf16 would be
    emulated, i.e. slower than fp32. "fp32" and "bf16" force one or the other.
    """
    if precision == "auto":
        return device.type == "cuda" or cpu_has_native_bf16()
    return precision == "bf16"


# ----------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class TrainConfig:
    """Every hyperparameter of a training run, with its unit. Stored with every result and checkpoint."""

    model: str = "small"  # classifier name in backend.training.models.MODELS
    epochs: int = 30  # passes over the training split
    batch_size: int = 256  # examples per SGD step (the last partial batch of an epoch is dropped)
    lr: float = 0.1  # peak learning rate per batch of 256 examples; scaled linearly with batch_size
    momentum: float = 0.9  # SGD heavy-ball momentum
    weight_decay: float = 5e-4  # L2 coefficient applied by SGD to every parameter, per step
    warmup_epochs: int | None = None  # linear warm-up, in epochs; None -> min(5, epochs // 10)
    label_smoothing: float = 0.0  # share of each target's probability mass spread uniformly over classes
    loss: Literal["ce", "class_weighted", "logit_adjusted"] = "ce"  # see ``make_loss``
    logit_adjust_tau: float = 1.0  # weight of the log-prior offset for loss="logit_adjusted" (Menon et al.: 1)
    dropout: float = 0.0  # dropout probability in the classifier head (MC-dropout uses > 0)
    val_fraction: float = 0.1  # share of each class's real training images held out to pick the checkpoint
    seed: int = 0  # seeds weights, data order, augmentation, dropout and the validation split
    device: str = "cpu"  # "cpu" or "cuda"; channels_last memory format on both
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # autocast dtype; see ``uses_bf16``
    eval_batch_size: int = 1024  # examples per forward pass during evaluation

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model: unknown model {self.model!r}; choose one of {sorted(MODELS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss: unknown loss {self.loss!r}; choose one of {list(LOSSES)}")
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "momentum": 0 <= self.momentum < 1,
            "weight_decay": self.weight_decay >= 0,
            "warmup_epochs": self.warmup_epochs is None or 0 <= self.warmup_epochs <= self.epochs,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "dropout": 0 <= self.dropout < 1,
            "val_fraction": 0 <= self.val_fraction < 1,
            "eval_batch_size": self.eval_batch_size >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid training config value for {', '.join(bad)}: " + str(self.to_dict()))
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device: expected 'cpu' or 'cuda', got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {list(PRECISIONS)}, got {self.precision!r}")

    @property
    def warmup(self) -> int:
        """Warm-up epochs actually used: the study's 5 for 50+ epochs, one per ten epochs below that."""
        return min(5, self.epochs // 10) if self.warmup_epochs is None else self.warmup_epochs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a plain dict; unknown keys raise ValueError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training config keys: {', '.join(unknown)}")
        return cls(**values)


class TrainingInterrupted(Exception):
    """``should_stop()`` returned True; resume from the last ``on_epoch_end`` state."""


@dataclass
class TrainResult:
    """Outcome of one run: best-checkpoint weights and everything a benchmark row needs."""

    model_state: dict[str, torch.Tensor]  # weights of the chosen (best-validation) epoch, on CPU
    history: list[dict[str, Any]]  # per epoch: epoch, train_loss, train_acc %, val_acc %, lr, seconds
    best_epoch: int  # 1-based epoch whose weights were kept
    val_acc: float | None  # validation accuracy % of that epoch (None without a validation split)
    test_acc: float  # overall test accuracy %
    test_per_class: list[float | None]  # test accuracy % per class index (None: class absent from test)
    confusion: list[list[int]]  # test confusion matrix, rows = true class
    num_train: int
    num_val: int
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the weights)."""
        out = dataclasses.asdict(self)
        out.pop("model_state")
        return out


# ----------------------------------------------------------------------------------------------------
# Data


@dataclass
class _Data:
    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int64 (N,)
    strong_mask: np.ndarray  # bool (N,): apply strong_augment at train time
    val_eligible: np.ndarray  # bool (N,): may be held out for validation (real, not an augmented repeat)
    class_weights: np.ndarray | None
    num_classes: int | None


def _unpack(data: Any) -> _Data:
    """Accept a ``backend.data.variants.Variant`` (duck-typed) or an ``(images, labels)`` tuple."""
    if isinstance(data, tuple | list):
        images, labels = data[0], data[1]
        strong = data[2] if len(data) > 2 else None
        weights, origin, classes = None, None, None
    else:
        images, labels = data.images, data.labels
        strong = getattr(data, "strong_aug_mask", None)
        weights = getattr(data, "class_weights", None)
        origin = getattr(data, "origin", None)
        classes = getattr(data, "classes", None)
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) != n:
        raise ValueError(f"training images must be uint8 (N,H,W,3) matching {n} labels, got {images.shape}")
    if n == 0:
        raise ValueError("the training set is empty")
    strong_mask = np.zeros(n, bool) if strong is None else np.asarray(strong, dtype=bool)
    real = np.ones(n, bool)
    if origin is not None and not isinstance(origin, str) and len(origin) == n:
        # Validation should measure real images: synthetic ones always stay in the training split.
        real = np.asarray([str(o).startswith("real") for o in origin])
    return _Data(
        images=images,
        labels=labels,
        strong_mask=strong_mask,
        val_eligible=real & ~strong_mask,
        class_weights=None if weights is None else np.asarray(weights, dtype=np.float32),
        num_classes=len(classes) if classes is not None else None,
    )


def _to_device_nchw(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 NHWC (possibly memory-mapped) -> uint8 NCHW tensor resident on ``device``."""
    arr = np.ascontiguousarray(images)
    if not arr.flags.writeable:  # read-only memory maps: torch wants writable memory
        arr = arr.copy()
    return torch.from_numpy(arr).to(device).permute(0, 3, 1, 2).contiguous()


def content_groups(images: np.ndarray) -> np.ndarray:
    """(N,) group id per image; byte-identical images (e.g. oversampled repeats) share one id."""
    seen: dict[bytes, int] = {}
    groups = np.empty(len(images), dtype=np.int64)
    for i in range(len(images)):
        digest = hashlib.blake2b(np.ascontiguousarray(images[i]).tobytes(), digest_size=16).digest()
        groups[i] = seen.setdefault(digest, len(seen))
    return groups


def stratified_split(
    labels: np.ndarray,
    val_fraction: float,
    seed: int,
    *,
    groups: np.ndarray | None = None,
    eligible: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, val): per class, round(val_fraction * n) groups go to validation.

    ``groups``: samples sharing an id land on the same side (copies never straddle the split), and only
    the first member of a held-out group is kept for validation. ``eligible``: only these samples may be
    held out; the rest always train. A class keeps at least one group for training.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    eligible = np.ones(n, bool) if eligible is None else np.asarray(eligible, dtype=bool)
    rng = np.random.default_rng(seed)
    held_groups: list[np.ndarray] = []
    for c in np.unique(labels):
        in_class = labels == c
        cand = np.unique(groups[in_class & eligible])
        # Groups with an ineligible member (e.g. the augmented repeats) must train; so does every group
        # of a class if holding one out would leave the class without training data.
        cand = np.setdiff1d(cand, groups[in_class & ~eligible])
        total = len(np.unique(groups[in_class]))
        k = min(int(math.floor(val_fraction * len(cand) + 0.5)), len(cand), total - 1)
        if k > 0:
            held_groups.append(rng.permutation(cand)[:k])
    held = np.concatenate(held_groups) if held_groups else np.empty(0, dtype=groups.dtype)
    in_val = np.isin(groups, held)
    train_idx = np.flatnonzero(~in_val)
    _, first = np.unique(groups[in_val], return_index=True)
    val_idx = np.sort(np.flatnonzero(in_val)[first])
    return train_idx, val_idx


# ----------------------------------------------------------------------------------------------------
# Loss


def make_loss(
    config: TrainConfig, train_labels: np.ndarray, num_classes: int, class_weights: np.ndarray | None, device
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy with the configured imbalance remedy.

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

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if offset is not None:
            logits = logits + offset
        return F.cross_entropy(logits, targets, weight=w, label_smoothing=config.label_smoothing)

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


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    images: torch.Tensor,
    mean,
    std,
    device: torch.device,
    batch_size: int = 1024,
    bf16: bool | None = None,
) -> torch.Tensor:
    """Argmax predictions for uint8 NCHW ``images`` (already on ``device``), without augmentation.

    ``bf16``: autocast to bf16; None follows ``uses_bf16("auto", device)``.
    """
    bf16 = uses_bf16("auto", device) if bf16 is None else bf16
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = _prepare(images[start : start + batch_size], mean, std)
        with _autocast(device, bf16):
            out.append(model(x).argmax(1))
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64, device=device)


def _prepare(x_u8: torch.Tensor, mean, std) -> torch.Tensor:
    # channels_last picks the fastest convolution kernels: cuDNN's NHWC tensor-core ones on CUDA and
    # oneDNN's blocked ones on CPU (1.7x for ``small`` on 2 cores, same fp32 arithmetic).
    return normalize(x_u8, mean, std).contiguous(memory_format=torch.channels_last)


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


# ----------------------------------------------------------------------------------------------------
# Training


def train(
    data: Any,
    test_x: np.ndarray,
    test_y: np.ndarray,
    config: TrainConfig,
    *,
    mean,
    std,
    num_classes: int | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume_state: dict[str, Any] | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``data`` (a Variant or (images, labels)); evaluate once on the test set.

    test_x: uint8 (N, H, W, 3); test_y: int64 (N,). mean/std: per-channel stats in 0-1 units (the full
    set's, as the study normalises every variant alike). ``progress(fraction, message)`` is called every
    step; ``should_stop()`` is checked every step and raises TrainingInterrupted. ``on_epoch_end(epoch,
    state)`` receives a resumable state after each epoch (persist it with ``state_to_safetensors``);
    pass it back as ``resume_state`` to continue exactly where it stopped.
    """
    started = time.perf_counter()
    d = _unpack(data)
    test_y = np.asarray(test_y, dtype=np.int64)
    k = num_classes or d.num_classes or int(max(d.labels.max(), test_y.max() if len(test_y) else 0)) + 1
    if d.labels.min() < 0 or d.labels.max() >= k or (len(test_y) and test_y.max() >= k):
        raise ValueError(f"labels must lie in [0, {k})")
    if d.class_weights is not None and d.class_weights.shape != (k,):
        raise ValueError(f"class_weights: expected {k} values, got {d.class_weights.shape}")
    device = torch.device(config.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device: 'cuda' requested but no CUDA device is available")
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN time its kernels once

    # -- validation split (from the training data, never the test set) --------------------------------
    train_idx, val_idx = stratified_split(
        d.labels, config.val_fraction, config.seed, groups=content_groups(d.images), eligible=d.val_eligible
    )
    x_train = _to_device_nchw(d.images[train_idx], device)
    y_train = torch.from_numpy(d.labels[train_idx]).to(device)
    strong = torch.from_numpy(d.strong_mask[train_idx]).to(device)
    any_strong = bool(strong.any())
    x_val = _to_device_nchw(d.images[val_idx], device)
    y_val = torch.from_numpy(d.labels[val_idx]).to(device)

    # -- network, optimiser, loss ------------------------------------------------------------------
    torch.manual_seed(config.seed)  # weights and dropout masks (dropout draws from the global RNG)
    model: Classifier = build_model(config.model, k, dropout=config.dropout).to(device)
    model = model.to(memory_format=torch.channels_last)
    bf16 = uses_bf16(config.precision, device)
    peak_lr = config.lr * config.batch_size / 256
    optimizer = torch.optim.SGD(
        model.parameters(), lr=peak_lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    loss_fn = make_loss(config, d.labels[train_idx], k, d.class_weights, device)
    n = len(train_idx)
    bs = min(config.batch_size, n)
    steps_per_epoch = max(n // bs, 1)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = config.warmup * steps_per_epoch
    generator = torch.Generator().manual_seed(config.seed)  # data order + augmentation, drawn on CPU

    history: list[dict[str, Any]] = []
    best = {"epoch": 0, "val_acc": None, "model": None}
    start_epoch = 0
    if resume_state is not None:
        start_epoch = _restore(resume_state, config, model, optimizer, generator, history, best, device)

    # -- loop ------------------------------------------------------------------------------------------
    model.train()
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        perm = torch.randperm(n, generator=generator).to(device)
        for i in range(steps_per_epoch):
            if should_stop is not None and should_stop():
                raise TrainingInterrupted(f"stopped during epoch {epoch + 1}")
            step = epoch * steps_per_epoch + i
            lr = lr_at(step, total_steps, warmup_steps, peak_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = perm[i * bs : (i + 1) * bs]
            xb, yb = x_train[idx], y_train[idx]
            if any_strong:
                mask = strong[idx]
                if bool(mask.any()):
                    xb[mask] = strong_augment(xb[mask], generator=generator)
            xb = _prepare(random_crop_flip(xb, pad=4, flip=True, generator=generator), mean, std)
            with _autocast(device, bf16):
                logits = model(xb)
            loss = loss_fn(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            # Accumulate on the device: a .item() per step would stall the GPU pipeline.
            loss_sum += loss.detach() * len(yb)
            correct += (logits.argmax(1) == yb).sum()
            seen += len(yb)
            if progress is not None:
                progress((step + 1) / total_steps, f"epoch {epoch + 1}/{config.epochs}")

        val_acc = None
        if len(val_idx):
            preds = predict(model, x_val, mean, std, device, config.eval_batch_size, bf16)
            val_acc = float(100.0 * (preds == y_val).float().mean().item())
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": float(loss_sum.item() / seen),
                "train_acc": float(100.0 * correct.item() / seen),
                "val_acc": val_acc,
                "lr": lr,
                "seconds": time.perf_counter() - t0,
            }
        )
        # Keep the best validation epoch (ties go to the later one); without validation, the last epoch.
        if val_acc is None or best["val_acc"] is None or val_acc >= best["val_acc"]:
            best = {"epoch": epoch + 1, "val_acc": val_acc, "model": _cpu_copy(model.state_dict())}
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, _snapshot(epoch + 1, config, model, optimizer, generator, history, best))

    # -- evaluation: once, on the test set, with the chosen weights ----------------------------------------
    if best["model"] is not None:
        model.load_state_dict(best["model"])
    x_test = _to_device_nchw(np.asarray(test_x), device)
    preds = predict(model, x_test, mean, std, device, config.eval_batch_size, bf16).cpu().numpy()
    cm = confusion_matrix(test_y, preds, k)
    per_class = [None if math.isnan(a) else float(a) for a in per_class_accuracy(cm)]
    return TrainResult(
        model_state=_cpu_copy(model.state_dict()),
        history=history,
        best_epoch=int(best["epoch"]),
        val_acc=best["val_acc"],
        test_acc=overall_accuracy(cm),
        test_per_class=per_class,
        confusion=cm.tolist(),
        num_train=n,
        num_val=len(val_idx),
        config=config.to_dict(),
        seconds=time.perf_counter() - started,
    )


# ----------------------------------------------------------------------------------------------------
# Checkpoint state


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


def _snapshot(epoch, config, model, optimizer, generator, history, best) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "config": config.to_dict(),
        "model": _cpu_copy(model.state_dict()),
        "optimizer": _clone_optimizer_state(optimizer.state_dict()),
        "rng": {
            "data": generator.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.device(config.device).type == "cuda" else None,
        },
        "history": [dict(h) for h in history],
        "best": {"epoch": best["epoch"], "val_acc": best["val_acc"], "model": best["model"]},
    }


def _restore(state, config, model, optimizer, generator, history, best, device) -> int:
    """Load a snapshot into the live objects; returns the number of epochs already done."""
    # Keys added to TrainConfig since the state was saved take their defaults (e.g. ``precision``).
    saved = {k: v for k, v in {**TrainConfig().to_dict(), **state["config"]}.items() if k != "device"}
    now = {k: v for k, v in config.to_dict().items() if k != "device"}
    if saved != now:
        diff = sorted(k for k in now if saved.get(k) != now[k])
        raise ValueError(f"resume_state was saved with a different config ({', '.join(diff)})")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["rng"]["data"])
    torch.set_rng_state(state["rng"]["torch"])
    if device.type == "cuda" and state["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"])
    history.extend(dict(h) for h in state["history"])
    best.update(state["best"])
    return int(state["epoch"])


def state_to_safetensors(state: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """Split an ``on_epoch_end`` state into safetensors bytes (all tensors) and a JSON-ready dict (the rest)."""
    tensors: dict[str, torch.Tensor] = {}
    for k, v in state["model"].items():
        tensors[f"model.{k}"] = v
    if state["best"]["model"] is not None:
        for k, v in state["best"]["model"].items():
            tensors[f"best.{k}"] = v
    optim_meta: dict[str, Any] = {"param_groups": state["optimizer"]["param_groups"], "state": {}}
    for pid, entries in state["optimizer"]["state"].items():
        optim_meta["state"][str(pid)] = {}
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = value
            else:
                optim_meta["state"][str(pid)][name] = value
    for name, value in state["rng"].items():
        if value is not None:
            tensors[f"rng.{name}"] = value
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    meta = {
        "epoch": state["epoch"],
        "config": state["config"],
        "history": state["history"],
        "best": {"epoch": state["best"]["epoch"], "val_acc": state["best"]["val_acc"]},
        "has_best_model": state["best"]["model"] is not None,
        "optimizer": optim_meta,
    }
    json.dumps(meta)  # fail here, not at write time, if anything is not JSON-serialisable
    return safetensors.torch.save(tensors), meta


def state_from_safetensors(data: bytes, meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`state_to_safetensors`."""
    tensors = safetensors.torch.load(data)

    def section(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    optim_state: dict[int, dict[str, Any]] = {}
    for pid, entries in meta["optimizer"]["state"].items():
        optim_state[int(pid)] = dict(entries)
    for key, value in section("optim.").items():
        pid, name = key.split(".", 1)
        optim_state.setdefault(int(pid), {})[name] = value
    rng = section("rng.")
    return {
        "epoch": meta["epoch"],
        "config": meta["config"],
        "model": section("model."),
        "optimizer": {"state": optim_state, "param_groups": meta["optimizer"]["param_groups"]},
        "rng": {"data": rng["data"], "torch": rng["torch"], "cuda": rng.get("cuda")},
        "history": meta["history"],
        "best": {
            "epoch": meta["best"]["epoch"],
            "val_acc": meta["best"]["val_acc"],
            "model": section("best.") if meta["has_best_model"] else None,
        },
    }
