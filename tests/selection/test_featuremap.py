"""2-D PCA feature map."""

from __future__ import annotations

import json

import numpy as np
import pytest

from backend.selection.featuremap import build_feature_map, pca_2d, subsample


def test_pca_finds_the_spread_axes() -> None:
    rng = np.random.default_rng(0)
    # Spread 10 along feature 2, 3 along feature 0, tiny elsewhere.
    x = rng.normal(size=(500, 5)) * np.array([3.0, 0.1, 10.0, 0.1, 0.1])
    mean, comps, ratio = pca_2d(x)
    assert abs(comps[0, 2]) > 0.99 and abs(comps[1, 0]) > 0.99
    assert ratio[0] > ratio[1] > 0.05 and ratio.sum() > 0.99


def test_feature_map_groups_points_and_is_json() -> None:
    rng = np.random.default_rng(1)
    real = rng.normal(size=(40, 8))
    pool = rng.normal(size=(30, 8)) + 5.0  # pool sits apart from the real data along every feature
    picks = pool[:5]
    fmap = build_feature_map(
        {"real": real, "pool": pool, "picks": picks},
        labels={"real": ["cat"] * 40, "pool": list(range(30)), "picks": list(range(5))},
        fit_groups=("real", "pool"),
    )
    json.dumps(fmap)
    assert fmap["counts"] == {"real": 40, "pool": 30, "picks": 5}
    pts = fmap["points"]
    assert len(pts) == 75 and {p["group"] for p in pts} == {"real", "pool", "picks"}
    xs = {g: np.mean([p["x"] for p in pts if p["group"] == g]) for g in ("real", "pool")}
    assert abs(xs["real"] - xs["pool"]) > 5  # the first axis separates the two clouds
    pool_pts = [p for p in pts if p["group"] == "pool"][:5]
    pick_pts = [p for p in pts if p["group"] == "picks"]
    assert [(p["x"], p["y"]) for p in pick_pts] == [(p["x"], p["y"]) for p in pool_pts]
    with pytest.raises(ValueError, match="labels"):
        build_feature_map({"real": real}, labels={"real": ["cat"]})


def test_subsample_is_seeded_and_bounded() -> None:
    assert subsample(5, 10, 0).tolist() == [0, 1, 2, 3, 4]
    a = subsample(1000, 50, 3)
    assert len(a) == 50 and len(set(a.tolist())) == 50 and np.all(np.diff(a) > 0)
    assert np.array_equal(a, subsample(1000, 50, 3))
