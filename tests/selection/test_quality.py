"""Quality panel: precision/recall/density/coverage and Fréchet distance on planted Gaussians."""

from __future__ import annotations

import numpy as np
import pytest

from backend.selection.quality import class_panels, frechet_distance, knn_radii, quality_panel


def _gauss(n: int, shift: float = 0.0, scale: float = 1.0, seed: int = 0, dim: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, scale, size=(n, dim))


def test_same_distribution_scores_high_and_a_far_one_zero() -> None:
    real = _gauss(400)
    same = quality_panel(real, _gauss(400, seed=1))
    assert same["precision"] > 0.8 and same["recall"] > 0.8 and same["coverage"] > 0.8, same
    assert 0.7 < same["density"] < 1.3, same
    far = quality_panel(real, _gauss(400, shift=20.0, seed=1))
    assert far["precision"] == far["recall"] == far["coverage"] == far["density"] == 0.0, far
    assert far["frechet"] > 100 * same["frechet"]


def test_collapsed_pool_is_precise_but_covers_little() -> None:
    # A mode-collapsed generator: every sample near one real point. Precision stays high, coverage and
    # recall drop: the split the panel exists to show.
    real = _gauss(400)
    collapsed = real[0] + 0.01 * _gauss(400, seed=2)
    panel = quality_panel(real, collapsed)
    assert panel["precision"] > 0.9 and panel["coverage"] < 0.05 and panel["recall"] < 0.05, panel


def test_frechet_distance_of_a_mean_shift_is_its_squared_norm() -> None:
    a = _gauss(5000, seed=3, dim=4)
    b = a + np.array([1.0, 2.0, 0.0, 0.0])
    assert frechet_distance(a, b) == pytest.approx(5.0, abs=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # Same mean, covariance I vs 4I in 4-D: Tr(I + 4I - 2 * 2I) = 4 (the covariance terms matter).
    assert frechet_distance(a - a.mean(0), 2.0 * (a - a.mean(0))) == pytest.approx(4.0, rel=0.05)
    # Rank-deficient covariance (fewer rows than features) stays finite and non-negative.
    assert frechet_distance(_gauss(5, dim=16), _gauss(50, seed=4, dim=16)) >= 0


def test_knn_radii_and_class_panels() -> None:
    x = np.array([[0.0], [1.0], [3.0]])
    np.testing.assert_allclose(knn_radii(x, 1), [1.0, 1.0, 4.0])  # squared distance to the nearest other
    real = np.concatenate([_gauss(200), _gauss(200, shift=20.0, seed=5)])
    labels = np.repeat([0, 1], 200)
    panels = class_panels(real, labels, _gauss(100, seed=6), ["cat", "dog"])
    assert panels["cat"]["precision"] > 0.8 and panels["dog"]["precision"] == 0.0
    with pytest.raises(ValueError, match="needs"):
        quality_panel(real[:1], real)
