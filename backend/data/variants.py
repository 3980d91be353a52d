"""Training-set variants: the classical remedies for class imbalance, plus appending synthetic images.

Every builder returns a ``Variant`` whose ``images`` is a fresh uint8 (N, H, W, 3) array gathered from the
(memory-mapped) decoded cache in a single fancy-indexing pass: the 50k CIFAR-10 images are copied once,
repeats included. Train-time transforms are not applied here: the trainer applies ``random_crop_flip``
and ``normalize`` to every batch and ``strong_augment`` to the samples flagged in ``strong_aug_mask``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from backend.data.cache import DecodedDataset
from backend.data.imbalance import ImbalanceResult

VARIANTS = ("imbalanced", "oversample", "oversample_aug", "class_weighted", "full")  # those with their own data
# Every classical remedy a benchmark compares, in the study's table order. ``logit_adjusted`` (Menon et al.
# 2021) is a loss-side remedy: the imbalanced data, trained with a logit-adjusted loss (LOSS_OF).
CLASSICAL = ("imbalanced", "oversample", "oversample_aug", "class_weighted", "logit_adjusted", "full")
LOSS_OF = {"logit_adjusted": "logit_adjusted"}  # variant -> training loss where it is not plain cross-entropy
DATA_OF = {"logit_adjusted": "imbalanced"}  # variant -> the data variant it trains on, where they differ


@dataclass
class Variant:
    """A training set. Arrays are aligned per sample; ``provenance[i]`` is None for real images."""

    name: str
    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int64 (N,)
    strong_aug_mask: np.ndarray  # bool (N,): apply strong_augment to this sample at train time
    origin: np.ndarray  # str (N,): "real" or "synthetic"
    provenance: list[dict | None]
    class_weights: np.ndarray | None = None  # float32 (C,) loss weights, or None for an unweighted loss

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self, n_classes: int) -> np.ndarray:
        return np.bincount(self.labels, minlength=n_classes)


def _gather(name: str, ds: DecodedDataset, index: np.ndarray, aug: np.ndarray | None = None) -> Variant:
    index = np.asarray(index, dtype=np.int64)
    n = len(index)
    return Variant(
        name=name,
        images=np.asarray(ds.train_x[index]),  # one copy out of the memory map
        labels=np.asarray(ds.train_y[index], dtype=np.int64),
        strong_aug_mask=np.zeros(n, bool) if aug is None else aug,
        origin=np.full(n, "real", dtype=object),
        provenance=[None] * n,
    )


def oversample_index(labels: np.ndarray, kept_idx: np.ndarray, minority: Sequence[int]) -> np.ndarray:
    """Indices of the repeats that bring each minority class up to the median class count.

    Repeats cycle through the class's kept images in order, so every image is repeated equally often
    (the 50 kept cats each appear 99 more times to reach 5000).
    """
    kept_labels = labels[kept_idx]
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    counts = np.bincount(kept_labels, minlength=n_classes)
    target = int(np.median(counts[counts > 0])) if (counts > 0).any() else 0
    repeats = []
    for c in minority:
        members = kept_idx[kept_labels == c]
        need = target - len(members)
        if need > 0 and len(members):
            repeats.append(np.resize(members, need))
    return np.concatenate(repeats) if repeats else np.zeros(0, np.int64)


def imbalanced(ds: DecodedDataset, imb: ImbalanceResult) -> Variant:
    return _gather("imbalanced", ds, imb.kept_idx)


def full(ds: DecodedDataset) -> Variant:
    return _gather("full", ds, np.arange(len(ds.train_y)))


def oversample(ds: DecodedDataset, imb: ImbalanceResult) -> Variant:
    rep = oversample_index(ds.train_y, imb.kept_idx, imb.minority_classes)
    return _gather("oversample", ds, np.concatenate([imb.kept_idx, rep]))


def oversample_aug(ds: DecodedDataset, imb: ImbalanceResult) -> Variant:
    """Like ``oversample``, with only the repeats flagged for strong augmentation (originals stay clean)."""
    rep = oversample_index(ds.train_y, imb.kept_idx, imb.minority_classes)
    aug = np.concatenate([np.zeros(len(imb.kept_idx), bool), np.ones(len(rep), bool)])
    return _gather("oversample_aug", ds, np.concatenate([imb.kept_idx, rep]), aug)


def class_weighted(ds: DecodedDataset, imb: ImbalanceResult) -> Variant:
    """Imbalanced data with inverse-frequency weights ``N / (C * n_c)``: their mean over samples is 1."""
    v = _gather("class_weighted", ds, imb.kept_idx)
    counts = np.bincount(v.labels, minlength=len(ds.classes)).astype(np.float64)
    present = counts > 0
    weights = np.zeros(len(ds.classes))
    weights[present] = len(v.labels) / (present.sum() * counts[present])
    v.class_weights = weights.astype(np.float32)
    return v


def with_synthetic(
    base: Variant, images: np.ndarray, provenance: Sequence[dict], minority_label: int, name: str | None = None
) -> Variant:
    """``base`` plus synthetic ``images`` (uint8 (M, H, W, 3)) labelled ``minority_label``."""
    images = np.asarray(images, dtype=np.uint8)
    if images.ndim != 4 or images.shape[1:] != base.images.shape[1:]:
        raise ValueError(f"synthetic images must be {base.images.shape[1:]} like the base, got {images.shape[1:]}")
    if len(provenance) != len(images):
        raise ValueError(f"provenance has {len(provenance)} entries for {len(images)} synthetic images")
    m = len(images)
    return Variant(
        name=name or f"{base.name}+synthetic",
        images=np.concatenate([base.images, images]),
        labels=np.concatenate([base.labels, np.full(m, minority_label, np.int64)]),
        strong_aug_mask=np.concatenate([base.strong_aug_mask, np.zeros(m, bool)]),
        origin=np.concatenate([base.origin, np.full(m, "synthetic", dtype=object)]),
        provenance=[*base.provenance, *provenance],
        class_weights=base.class_weights,
    )


def build_variant(name: str, ds: DecodedDataset, imb: ImbalanceResult | None) -> Variant:
    """A classical variant by name (one of ``VARIANTS``); all but ``full`` need an imbalance result."""
    if name == "full":
        return full(ds)
    builders = {
        "imbalanced": imbalanced,
        "oversample": oversample,
        "oversample_aug": oversample_aug,
        "class_weighted": class_weighted,
    }
    if name not in builders:
        raise ValueError(f"unknown variant {name!r}; choose one of {list(VARIANTS)}")
    if imb is None:
        raise ValueError(f"variant {name!r} needs an imbalance spec")
    return builders[name](ds, imb)
