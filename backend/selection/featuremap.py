"""2-D PCA feature map of the real training set, the pool and the picks (the study's Figure 2).

The principal axes are fitted on the groups named in ``fit_groups`` (by default real + pool, as in
the study's middle panel) and every group is projected onto them, so picks can be seen landing
inside or outside the real minority's region. Output is plain JSON: a list of points
``{"x", "y", "group", "label"}`` plus the explained-variance ratios of the two axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def subsample(n: int, max_n: int, seed: int) -> np.ndarray:
    """Sorted positions of at most ``max_n`` of ``n`` items, seeded; all of them if n <= max_n."""
    if n <= max_n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_n, replace=False)).astype(np.int64)


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2-D PCA of x (M, F) with scikit-learn: mean (F,), components (2, F), explained-variance ratio (2,).

    scikit-learn fixes each axis' sign, so maps of similar data do not flip around; with a single
    feature the second axis is zero.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"PCA needs at least 2 feature rows, got shape {x.shape}")
    from sklearn.decomposition import PCA  # scikit-learn costs a second to import: only maps need it

    k = min(2, *x.shape)
    pca = PCA(n_components=k, svd_solver="full").fit(x)
    comps = np.zeros((2, x.shape[1]))
    comps[:k] = pca.components_
    return pca.mean_, comps, np.pad(pca.explained_variance_ratio_, (0, 2 - k))


def build_feature_map(
    groups: dict[str, np.ndarray],
    labels: dict[str, Sequence[Any]] | None = None,
    fit_groups: Sequence[str] | None = None,
    decimals: int = 4,
) -> dict[str, Any]:
    """Project every group's features (n_g, F) onto 2 principal axes; JSON-able result.

    Returns ``{"points": [{"x", "y", "group", "label"}...], "explained_variance_ratio": [a, b],
    "fit_groups": [...], "counts": {group: n}}``; ``label`` is None where no labels were given.
    """
    fit_groups = list(fit_groups) if fit_groups is not None else list(groups)
    missing = [g for g in fit_groups if g not in groups]
    if missing:
        raise ValueError(f"fit_groups {missing} are not among the groups {sorted(groups)}")
    fit = np.concatenate([np.asarray(groups[g], dtype=np.float64) for g in fit_groups if len(groups[g])])
    mean, comps, ratio = pca_2d(fit)
    points: list[dict[str, Any]] = []
    for name, feats in groups.items():
        feats = np.asarray(feats, dtype=np.float64)
        if len(feats) == 0:
            continue
        xy = np.round((feats - mean) @ comps.T, decimals)
        group_labels = (labels or {}).get(name)
        if group_labels is not None and len(group_labels) != len(feats):
            raise ValueError(f"group {name!r} has {len(feats)} feature rows but {len(group_labels)} labels")
        for i, (px, py) in enumerate(xy.tolist()):
            label = group_labels[i] if group_labels is not None else None
            points.append({"x": px, "y": py, "group": name, "label": label})
    return {
        "points": points,
        "explained_variance_ratio": [round(float(v), decimals) for v in ratio],
        "fit_groups": fit_groups,
        "counts": {name: int(len(f)) for name, f in groups.items()},
    }
