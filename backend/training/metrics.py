"""Accuracy metrics from a confusion matrix (rows = true class, as ``sklearn.metrics.confusion_matrix``).

All accuracies are percentages (0-100)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Recall of each class in percent; NaN for a class with no samples."""
    cm = np.asarray(confusion, dtype=np.float64)
    support = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, 100.0 * np.diag(cm) / support, np.nan)


def mean_class_accuracy(confusion: np.ndarray) -> float:
    """Mean recall over the classes with samples, in percent (balanced accuracy; NaN when there are none)."""
    per_class = per_class_accuracy(confusion)
    present = per_class[~np.isnan(per_class)]
    return float(present.mean()) if present.size else float("nan")


def overall_accuracy(confusion: np.ndarray) -> float:
    """Share of all samples classified correctly, in percent (NaN when there are none)."""
    cm = np.asarray(confusion, dtype=np.float64)
    total = cm.sum()
    return float(100.0 * np.trace(cm) / total) if total else float("nan")


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) across seeds; std is 0.0 for a single value."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0
