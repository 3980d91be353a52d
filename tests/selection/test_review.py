"""Near-copy distances and review/replacement of picks."""

from __future__ import annotations

import numpy as np
import pytest

from backend.selection.review import apply_review, flag_near_copies, nearest_distances


def test_nearest_distances_by_hand_across_batches() -> None:
    query = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    ref = [np.array([[0.0, 1.0], [3.0, 0.0]]), np.array([[1.0, 1.0]]), np.zeros((0, 2))]
    dist, idx = nearest_distances(query, iter(ref))
    # q0 ~ ref 1 exactly (cos 1); q1 ~ ref 0 (scale ignored); q2 ~ ref 2
    np.testing.assert_allclose(dist, [0.0, 0.0, 0.0], atol=1e-6)
    assert idx.tolist() == [1, 0, 2]
    dist, idx = nearest_distances(np.array([[1.0, 0.0]]), [np.array([[1.0, 1.0], [0.0, 1.0]])])
    np.testing.assert_allclose(dist, [1 - 1 / np.sqrt(2)], atol=1e-6)
    assert idx.tolist() == [0]
    dist, idx = nearest_distances(np.array([[1.0, 0.0]]), [])
    assert np.isinf(dist[0]) and idx[0] == -1


def test_flag_near_copies_threshold() -> None:
    assert flag_near_copies(np.array([0.0, 0.009, 0.011, 0.5]), 0.01).tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="near_copy_threshold"):
        flag_near_copies(np.array([0.1]), -1)


def _picks() -> list[dict]:
    return [{"image_id": 10 + i, "rank": i, "round": i // 2, "score": 1.0 - i / 10} for i in range(4)]


RESERVE = [
    {"image_id": 20, "score": 0.5, "near_copy": True},
    {"image_id": 21, "score": 0.4, "near_copy": False},
    {"image_id": 22, "score": 0.3, "near_copy": False},
]


def test_review_sets_states_without_replacing() -> None:
    out = apply_review(_picks(), RESERVE, accept=[10, 11], reject=[13])
    assert [p["review"] for p in out.picks] == ["accepted", "accepted", "pending", "rejected"]
    assert out.replaced == [] and len(out.reserve) == 3


def test_rejected_picks_are_replaced_from_the_ranked_reserve_skipping_near_copies() -> None:
    out = apply_review(_picks(), RESERVE, reject=[11, 13], replace_rejected=True)
    assert out.replaced == [(11, 21), (13, 22)]
    new = out.picks[4:]
    assert [p["image_id"] for p in new] == [21, 22]
    assert [p["rank"] for p in new] == [4, 5]
    assert [p["round"] for p in new] == [0, 1]  # the round of the pick each one replaces
    assert all(p["review"] == "pending" for p in new)
    assert out.reserve == []
    # Reviewing again does not replace the same rejection twice; a new rejection finds the reserve empty.
    again = apply_review(out.picks, out.reserve, reject=[12], replace_rejected=True)
    assert again.replaced == [] and again.unreplaced == [12]
    assert len(again.picks) == 6


def test_review_refuses_unknown_or_contradictory_ids() -> None:
    with pytest.raises(ValueError, match="99"):
        apply_review(_picks(), RESERVE, accept=[99])
    with pytest.raises(ValueError, match="both"):
        apply_review(_picks(), RESERVE, accept=[10], reject=[10])
