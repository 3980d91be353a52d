"""Imbalance specs: validation, determinism, the three forms, and the real CIFAR-10 cat case."""

from __future__ import annotations

import numpy as np
import pytest

from backend.data.cache import DecodedDataset
from backend.data.imbalance import ImbalanceSpec, apply_imbalance, kept_counts

CLASSES = ["a", "b", "c"]
LABELS = np.repeat(np.arange(3), [100, 100, 100])


def test_keep_is_exact_and_deterministic() -> None:
    r1 = apply_imbalance(LABELS, CLASSES, {"minority": "b", "keep": 7, "seed": 1})
    r2 = apply_imbalance(LABELS, CLASSES, {"minority": "b", "keep": 7, "seed": 1})
    r3 = apply_imbalance(LABELS, CLASSES, {"minority": "b", "keep": 7, "seed": 2})
    assert r1.counts(LABELS, 3).tolist() == [100, 7, 100]
    assert np.array_equal(r1.kept_idx, r2.kept_idx) and not np.array_equal(r1.kept_idx, r3.kept_idx)
    assert len(r1.removed_idx) == 93 and set(LABELS[r1.removed_idx]) == {1}
    assert not set(r1.kept_idx) & set(r1.removed_idx)
    assert r1.minority_classes == [1]


def test_remove_ratio_and_several_minorities() -> None:
    r = apply_imbalance(LABELS, CLASSES, {"minority": ["a", "c"], "remove_ratio": 0.9})
    assert r.counts(LABELS, 3).tolist() == [10, 100, 10]
    assert r.minority_classes == [0, 2]


def test_longtail_profile() -> None:
    labels = np.repeat(np.arange(5), 1000)
    r = apply_imbalance(labels, list("vwxyz"), {"profile": "longtail", "imbalance_factor": 100, "seed": 0})
    counts = r.counts(labels, 5).tolist()
    assert counts[0] == 1000 and counts[-1] == 10
    assert counts == sorted(counts, reverse=True)
    assert r.minority_classes == [3, 4]


def test_longtail_head_takes_a_subset_with_the_same_profile() -> None:
    """``head``: CIFAR-10-LT sized for a CPU; the first class keeps ``head`` images and the tail follows from it."""
    labels = np.repeat(np.arange(5), 1000)
    spec = {"profile": "longtail", "imbalance_factor": 100, "head": 200, "seed": 0}
    counts = apply_imbalance(labels, list("vwxyz"), spec).counts(labels, 5).tolist()
    assert counts == [200, 63, 20, 6, 2]  # floor(200 * 100 ** (-i / 4))
    assert kept_counts(spec, dict(zip("vwxyz", [1000] * 5, strict=True)), list("vwxyz")) == dict(
        zip("vwxyz", counts, strict=True)
    )


def test_unknown_minority_names_classes() -> None:
    with pytest.raises(ValueError, match=r"'zebra' is not in the dataset; classes are \['a', 'b', 'c'\]"):
        apply_imbalance(LABELS, CLASSES, {"minority": "zebra", "keep": 5})


def test_keep_larger_than_class() -> None:
    with pytest.raises(ValueError, match="keep=101 is larger than class 'a' \\(100 images\\)"):
        apply_imbalance(LABELS, CLASSES, {"minority": "a", "keep": 101})


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.5, 1.5])
def test_remove_ratio_out_of_range(ratio: float) -> None:
    with pytest.raises(ValueError, match="remove_ratio"):
        ImbalanceSpec.model_validate({"minority": "a", "remove_ratio": ratio})


@pytest.mark.parametrize(
    "spec",
    [
        {"minority": "a"},
        {"minority": "a", "keep": 5, "remove_ratio": 0.5},
        {"profile": "longtail"},
        {"profile": "longtail", "imbalance_factor": 10, "minority": "a"},
        {"minority": "a", "keep": 5, "head": 10},
        {"profile": "longtail", "imbalance_factor": 10, "head": 1},
        {"keep": 5},
        {"minority": "a", "keep": 5, "bogus": 1},
    ],
)
def test_malformed_specs(spec: dict) -> None:
    with pytest.raises(ValueError):
        ImbalanceSpec.model_validate(spec)


@pytest.mark.slow
def test_real_cifar10_keep_50_cats(cifar_cache: DecodedDataset) -> None:
    spec = {"minority": "cat", "keep": 50, "seed": 0}
    r = apply_imbalance(cifar_cache.train_y, cifar_cache.classes, spec)
    counts = r.counts(cifar_cache.train_y, 10)
    assert counts[3] == 50 and counts.sum() == 45_050
    assert len(r.removed_idx) == 4950
    again = apply_imbalance(cifar_cache.train_y, cifar_cache.classes, spec)
    assert np.array_equal(r.kept_idx, again.kept_idx)
