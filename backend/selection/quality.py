"""Quality panel of a pool against real images, in the app's own classifier feature space (no downloads).

- **precision** (Kynkäänniemi et al. 2019): share of generated samples inside the real manifold, the
  union of balls around each real sample with radius its distance to its k-th nearest real neighbour;
- **recall**: share of real samples inside the generated manifold (same construction on the pool);
- **density** (Naeem et al. 2020): how many real balls a generated sample falls in, / k, averaged
  (1 ~ as dense as the real data; robust to real outliers that inflate precision);
- **coverage** (Naeem et al. 2020): share of real samples whose ball holds at least one generated one;
- **Fréchet distance** (FID's formula, Heusel et al. 2017) between Gaussians fitted to both feature sets.

Features are the round classifier's backbone output (``scoring.extract_features``), not Inception's,
so values compare pools and classes within one selection, not with published FIDs. Both sides are
subsampled to ``max_n`` rows and distances are computed ``chunk`` rows at a time, so memory is
O(chunk x max_n) whatever the pool size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from backend.selection.featuremap import subsample

PANEL_KEYS = ("precision", "recall", "density", "coverage", "frechet")


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (A, B) of rows of a (A, F) and b (B, F)."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def knn_radii(x: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Squared distance of each row of x (N, F) to its k-th nearest other row. -> (N,)."""
    k = min(k, len(x) - 1)
    if k < 1:
        return np.full(len(x), np.inf)
    out = np.empty(len(x))
    for s in range(0, len(x), chunk):
        d = _sq_dists(x[s : s + chunk], x)
        out[s : s + chunk] = np.partition(d, k, axis=1)[:, k]  # column 0 is the row itself (distance 0)
    return out


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)) of real (N, F) and fake (M, F) features.

    The trace of the matrix square root is computed as the sum of sqrt eigenvalues of the symmetric
    PSD matrix S_r^(1/2) S_f S_r^(1/2), which stays real and stable for the rank-deficient covariances
    of a few dozen real minority images.
    """
    r, f = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    mu = r.mean(0) - f.mean(0)
    s_r = np.atleast_2d(np.cov(r, rowvar=False)) if len(r) > 1 else np.zeros((r.shape[1], r.shape[1]))
    s_f = np.atleast_2d(np.cov(f, rowvar=False)) if len(f) > 1 else np.zeros((f.shape[1], f.shape[1]))
    w, v = np.linalg.eigh(s_r)
    root_r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_r @ s_f @ root_r), 0, None)).sum()
    return float(mu @ mu + np.trace(s_r) + np.trace(s_f) - 2.0 * cross)


def quality_panel(
    real: np.ndarray, fake: np.ndarray, k: int = 5, max_n: int = 2000, seed: int = 0, chunk: int = 1024
) -> dict[str, float | int]:
    """Precision, recall, density, coverage and Fréchet distance of fake (M, F) against real (N, F).

    Returns ``{"precision", "recall", "density", "coverage", "frechet", "n_real", "n_fake", "k"}``.
    """
    real = np.asarray(real, np.float64)
    fake = np.asarray(fake, np.float64)
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"the quality panel needs >= 2 real and >= 2 pool images, got {len(real)} and {len(fake)}")
    real = real[subsample(len(real), max_n, seed)]
    fake = fake[subsample(len(fake), max_n, seed + 1)]
    r_rad, f_rad = knn_radii(real, k, chunk), knn_radii(fake, k, chunk)
    in_real = np.zeros(len(fake))  # how many real balls each fake sample falls in
    covered = np.zeros(len(real), dtype=bool)  # real ball holds a fake sample
    recalled = np.zeros(len(real), dtype=bool)  # real sample inside some fake ball
    for s in range(0, len(fake), chunk):
        d = _sq_dists(fake[s : s + chunk], real)  # (B, N)
        inside = d <= r_rad[None, :]
        in_real[s : s + chunk] = inside.sum(1)
        covered |= inside.any(0)
        recalled |= (d <= f_rad[s : s + chunk, None]).any(0)
    return {
        "precision": float((in_real > 0).mean()),
        "recall": float(recalled.mean()),
        "density": float(in_real.mean() / min(k, len(real) - 1)),
        "coverage": float(covered.mean()),
        "frechet": frechet_distance(real, fake),
        "n_real": len(real),
        "n_fake": len(fake),
        "k": k,
    }


def class_panels(
    real: np.ndarray,
    real_labels: np.ndarray,
    fake: np.ndarray,
    class_names: Sequence[str],
    k: int = 5,
    max_n: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """One ``quality_panel`` of fake (M, F) against the real rows (N, F) of each class with >= 2 images.

    A pool for the minority should score best against its own class; high precision against the class
    it is confused with shows what the generator drifts to.
    """
    labels = np.asarray(real_labels)
    return {
        name: quality_panel(real[labels == c], fake, k, max_n, seed)
        for c, name in enumerate(class_names)
        if (labels == c).sum() >= 2
    }
