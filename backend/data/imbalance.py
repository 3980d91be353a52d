"""One imbalance spec, used everywhere (select, benchmark, experiment), and its deterministic application.

Spec forms (JSON), always with a ``seed`` (default 0):

- ``{"minority": "cat" | ["cat", "dog"], "keep": 50}``: keep exactly ``keep`` images of each minority class;
- ``{"minority": ..., "remove_ratio": 0.99}``: remove that fraction (rounded) of each minority class;
- ``{"profile": "longtail", "imbalance_factor": 100}``: CIFAR-10-LT's exponential profile, class ``i`` of
  ``C`` keeps ``n_max * factor ** (-i / (C - 1))`` images (class order = dataset order); with ``"head": N``
  ``n_max`` is N instead of the largest class's count, a subset of a large dataset (CIFAR-10-LT sized for a CPU).

Which images stay is drawn per class from ``numpy.random.default_rng([seed, class_index])``, so the same
spec on the same labels always gives the same indices, independently of the other classes. The removed
indices are returned too: experiments use them as an oracle of real minority images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from backend.core.types import Name, NonNegative, Seed

MAX_CLASSES = 1000  # ImageNet's count; a list of minority classes longer than any dataset is a mistake


class ImbalanceSpec(BaseModel):
    """Validated imbalance spec; see the module docstring for the three forms."""

    model_config = ConfigDict(extra="forbid")

    minority: Name | Annotated[list[Name], Field(max_length=MAX_CLASSES)] | None = None
    keep: NonNegative | None = None
    remove_ratio: float | None = Field(None, gt=0.0, lt=1.0)
    profile: Literal["longtail"] | None = None
    imbalance_factor: float | None = Field(None, gt=1.0, le=1e6)
    head: int | None = Field(
        None, ge=2, le=10_000_000, description="longtail: the first class keeps this many (default: all its images)"
    )
    seed: Seed = 0

    @model_validator(mode="after")
    def _one_form(self) -> ImbalanceSpec:
        if self.profile is not None:
            if self.minority is not None or self.keep is not None or self.remove_ratio is not None:
                raise ValueError("profile cannot be combined with minority, keep or remove_ratio")
            if self.imbalance_factor is None:
                raise ValueError("profile 'longtail' needs imbalance_factor (e.g. 100)")
            return self
        if self.imbalance_factor is not None or self.head is not None:
            raise ValueError("imbalance_factor and head need profile 'longtail'")
        if not self.minority:
            raise ValueError("minority is required (a class name or a list of names), or use profile")
        if (self.keep is None) == (self.remove_ratio is None):
            raise ValueError("give exactly one of keep or remove_ratio with minority")
        return self

    @property
    def minority_names(self) -> list[str]:
        if self.minority is None:
            return []
        return [self.minority] if isinstance(self.minority, str) else list(self.minority)


@dataclass
class ImbalanceResult:
    """Indices into the training set (sorted) and the minority class indices."""

    kept_idx: np.ndarray
    removed_idx: np.ndarray
    minority_classes: list[int]

    def counts(self, labels: np.ndarray, n_classes: int) -> np.ndarray:
        """Per-class counts of the kept samples."""
        return np.bincount(labels[self.kept_idx], minlength=n_classes)


def parse_spec(spec: ImbalanceSpec | dict) -> ImbalanceSpec:
    """Accept a spec model or its JSON dict; pydantic errors become ``ValueError`` naming the field."""
    if isinstance(spec, ImbalanceSpec):
        return spec
    return ImbalanceSpec.model_validate(spec)


def _keep_counts(spec: ImbalanceSpec, counts: np.ndarray, classes: list[str]) -> tuple[np.ndarray, list[int]]:
    target = counts.copy()
    if spec.profile == "longtail":
        n = len(classes)
        if n < 2:
            raise ValueError(f"profile: a long tail needs at least 2 classes; this dataset has {n} ({classes})")
        n_max = int(counts.max()) if spec.head is None else spec.head
        ideal = np.floor(n_max * spec.imbalance_factor ** (-np.arange(n) / max(n - 1, 1))).astype(np.int64)
        target = np.minimum(np.maximum(ideal, 1), counts)
        # "Minority" for a long tail: every class left below the median kept count.
        minority = [int(i) for i in np.flatnonzero(target < np.median(target))]
        return target, minority
    minority = []
    for name in spec.minority_names:
        if name not in classes:
            raise ValueError(f"minority class {name!r} is not in the dataset; classes are {classes}")
        minority.append(classes.index(name))
    if len(set(minority)) != len(minority):
        raise ValueError(f"minority lists a class twice: {spec.minority_names}")
    for c in minority:
        if spec.keep is not None:
            if spec.keep > counts[c]:
                raise ValueError(f"keep={spec.keep} is larger than class {classes[c]!r} ({counts[c]} images)")
            target[c] = spec.keep
        else:
            target[c] = counts[c] - int(round(counts[c] * spec.remove_ratio))
    return target, minority


def kept_counts(spec: ImbalanceSpec | dict, train_counts: dict[str, int], classes: list[str]) -> dict[str, int]:
    """Per class, how many training images ``spec`` keeps, from the dataset's counts alone (no labels needed:
    what :func:`apply_imbalance` keeps has exactly these counts)."""
    counts = np.asarray([int(train_counts.get(c, 0)) for c in classes], dtype=np.int64)
    target, _ = _keep_counts(parse_spec(spec), counts, classes)
    return {c: int(n) for c, n in zip(classes, target, strict=True)}


def apply_imbalance(labels: np.ndarray, classes: list[str], spec: ImbalanceSpec | dict) -> ImbalanceResult:
    """Deterministically subsample ``labels`` (int64 (N,)) per ``spec``; see the module docstring."""
    spec = parse_spec(spec)
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=len(classes))
    target, minority = _keep_counts(spec, counts, classes)
    kept, removed = [], []
    for c in range(len(classes)):
        members = np.flatnonzero(labels == c)
        if target[c] >= len(members):
            kept.append(members)
            continue
        order = np.random.default_rng([spec.seed, c]).permutation(len(members))
        kept.append(members[np.sort(order[: target[c]])])
        removed.append(members[np.sort(order[target[c] :])])
    kept_idx = np.sort(np.concatenate(kept)) if kept else np.zeros(0, np.int64)
    removed_idx = np.sort(np.concatenate(removed)) if removed else np.zeros(0, np.int64)
    return ImbalanceResult(kept_idx=kept_idx, removed_idx=removed_idx, minority_classes=minority)
