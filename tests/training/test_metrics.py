"""Accuracy metrics on hand-made confusion cases, and ``evaluate`` on a model whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backend.training.metrics import mean_class_accuracy, mean_std, overall_accuracy, per_class_accuracy
from backend.training.trainer import evaluate

# Rows = true class. Class 0: 8 of 10 right; class 1: 1 of 1; class 2: 1 of 4; class 3: no samples.
# Recall (per-class accuracy) is [80, 100, 25, NaN]; precision would be [100, 16.7, 100, 0].
CONFUSION = np.array([[8, 2, 0, 0], [0, 1, 0, 0], [0, 3, 1, 0], [0, 0, 0, 0]])


def test_per_class_accuracy_is_recall_per_true_class() -> None:
    acc = per_class_accuracy(CONFUSION)
    assert acc[:3] == pytest.approx([80.0, 100.0, 25.0]) and math.isnan(acc[3])


def test_overall_and_mean_class_accuracy() -> None:
    assert overall_accuracy(CONFUSION) == pytest.approx(100 * 10 / 15)
    assert mean_class_accuracy(CONFUSION) == pytest.approx((80 + 100 + 25) / 3)  # the empty class is left out
    assert math.isnan(overall_accuracy(np.zeros((2, 2)))) and math.isnan(mean_class_accuracy(np.zeros((2, 2))))


def test_mean_std_is_sample_std_over_seeds() -> None:
    assert mean_std([1.0, 2.0, 3.0, None]) == pytest.approx((2.0, 1.0))  # ddof=1; a missing value is skipped
    assert mean_std([5.0]) == (5.0, 0.0)


class _DominantChannel(torch.nn.Module):
    """Predicts the colour channel with the largest mean: red -> 0, green -> 1, blue -> 2."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mean((2, 3)) * self.scale


def test_evaluate_counts_true_classes_in_rows() -> None:
    colours = {0: (200, 0, 0), 1: (0, 200, 0), 2: (0, 0, 200)}
    shown = [0] * 8 + [1] * 2 + [1] + [1] * 3 + [2]  # the colour each image has (= what the model answers)
    truth = [0] * 8 + [0] * 2 + [1] + [2] * 3 + [2]  # its label
    images = np.stack([np.full((8, 8, 3), colours[c], np.uint8) for c in shown])
    scores = evaluate(_DominantChannel(), images, np.array(truth), mean=[0.0] * 3, std=[1.0] * 3, num_classes=4)
    assert scores.confusion == CONFUSION.tolist()
    assert scores.per_class == pytest.approx([80.0, 100.0, 25.0, None])
    assert scores.accuracy == pytest.approx(100 * 10 / 15) and scores.balanced == pytest.approx(205 / 3)
