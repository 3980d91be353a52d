"""The classifier two-sample test: held-out AUC of real vs generated images of one class."""

from __future__ import annotations

import numpy as np
import pytest

from backend.data.sources import load_digits
from backend.selection.twosample import FLAG_AT, MIN_PER_SIDE, assessment, domain_auc, pixel_features


@pytest.fixture(scope="module")
def threes() -> np.ndarray:
    src = load_digits()
    return np.asarray(src.train_x)[np.asarray(src.train_y) == src.classes.index("3")]


def test_real_against_real_is_indistinguishable(threes) -> None:
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(threes))
    half = len(threes) // 2
    assert domain_auc(threes[perm[:half]], threes[perm[half:]]) <= 0.65


def test_images_that_look_generated_are_told_apart(threes) -> None:
    """The same 3s with a faint generator's signature (a fixed low-contrast pattern and noise) are flagged."""
    rng = np.random.default_rng(1)
    pattern = rng.normal(0, 12, threes.shape[1:])
    fake = np.clip(threes.astype(float) + pattern + rng.normal(0, 8, threes.shape), 0, 255).astype(np.uint8)
    half = len(threes) // 2
    assert domain_auc(threes[:half], fake[half:]) >= FLAG_AT


def test_never_scored_on_the_images_it_was_fit_on() -> None:
    """Two samples of the same noise distribution, more pixels than images: a classifier scored on its own
    training half would reach AUC 1.0 (it memorises); held out, it cannot beat chance by much."""
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (60, 16, 16, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (60, 16, 16, 3), dtype=np.uint8)
    assert domain_auc(a, b) < 0.7


def test_sizes_and_shapes_are_checked(threes) -> None:
    with pytest.raises(ValueError, match=f"needs {MIN_PER_SIDE}"):
        domain_auc(threes[:5], threes[5:50])
    with pytest.raises(ValueError, match="real images are"):
        domain_auc(threes[:30], np.zeros((30, 16, 16, 3), np.uint8))
    assert pixel_features(threes[:2]).shape == (2, 3 * 16 * 16)  # 32x32 reduced to 16x16


def test_assessment_flags_and_says_why() -> None:
    flagged = assessment(0.95, "same_class", 64, 200, "3")
    assert flagged["flagged"] is True and "every-class recipe" in flagged["reason"]
    assert assessment(0.6, "same_class", 64, 200, "3")["flagged"] is False
    other = assessment(0.92, "generator_other_classes", 500, 900, "3", {"1": 0.9, "2": 0.94})
    assert other["flagged"] and "other classes" in other["reason"] and other["per_class"] == {"1": 0.9, "2": 0.94}
    untested = assessment(None, "untestable", 5, 200, "3")
    assert untested["flagged"] is None and "cannot be tested" in untested["reason"]
