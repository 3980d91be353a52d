"""Acquisition functions on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backend.selection import acquisition as acq

LN2 = math.log(2)
H_09 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))  # entropy of [0.9, 0.1] = 0.325083

# T=2 passes, N=3 candidates, C=2 classes.
#   0: both passes unsure [.5, .5]      -> aleatoric: high entropy, zero BALD
#   1: passes disagree [1, 0] / [0, 1]  -> epistemic: high entropy, BALD = ln 2
#   2: both passes confident [.9, .1]
PROBS = np.array(
    [
        [[0.5, 0.5], [1.0, 0.0], [0.9, 0.1]],
        [[0.5, 0.5], [0.0, 1.0], [0.9, 0.1]],
    ]
)


def test_max_entropy() -> None:
    np.testing.assert_allclose(acq.max_entropy(PROBS), [LN2, LN2, H_09], atol=1e-9)


def test_bald_separates_disagreement_from_shared_doubt() -> None:
    np.testing.assert_allclose(acq.bald(PROBS), [0.0, LN2, 0.0], atol=1e-9)


def test_variation_ratios_count_votes() -> None:
    # votes: cand 0 -> (0, 0) (ties go to the first class), cand 1 -> (0, 1), cand 2 -> (0, 0)
    np.testing.assert_allclose(acq.variation_ratios(PROBS), [0.0, 0.5, 0.0])
    three = np.array([[[0.6, 0.4]], [[0.2, 0.8]], [[0.3, 0.7]]])  # T=3, one candidate, votes 0, 1, 1
    np.testing.assert_allclose(acq.variation_ratios(three), [1 - 2 / 3])


def test_margin_smallest_gap_scores_highest() -> None:
    np.testing.assert_allclose(acq.margin(PROBS), [0.0, 0.0, -0.8], atol=1e-9)
    p = np.array([[[0.6, 0.3, 0.1], [0.4, 0.35, 0.25]]])  # gaps 0.3 and 0.05
    scores = acq.margin(p)
    np.testing.assert_allclose(scores, [-0.3, -0.05], atol=1e-9)
    assert scores.argmax() == 1


def test_target_prob_is_mean_minority_posterior() -> None:
    np.testing.assert_allclose(acq.target_prob(PROBS, 1), [0.5, 0.5, 0.1])
    np.testing.assert_allclose(acq.target_prob(PROBS, 0), [0.5, 0.5, 0.9])
    with pytest.raises(ValueError, match="target"):
        acq.target_prob(PROBS, 2)


def test_random_is_seeded() -> None:
    big = np.full((1, 50, 2), 0.5)
    a, b, c = acq.random(big, seed=1), acq.random(big, seed=1), acq.random(big, seed=2)
    assert a.shape == (50,)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_validity_then_bald_ranks_valid_by_bald_then_the_rest_by_posterior() -> None:
    # target 1: cands 0 and 1 pass (posterior .5 >= .5) -> 2 + BALD; cand 2 fails -> its posterior .1
    scores = acq.validity_then_bald(PROBS, target=1, threshold=0.5)
    np.testing.assert_allclose(scores, [2.0, 2.0 + LN2, 0.1], atol=1e-9)
    assert list(np.argsort(-scores)) == [1, 0, 2]
    # A stricter threshold makes everything invalid: ranking falls back to the minority posterior.
    np.testing.assert_allclose(acq.validity_then_bald(PROBS, 1, threshold=0.6), [0.5, 0.5, 0.1])


def test_summaries_equal_direct_functions_batchwise() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 40, 4))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    whole = acq.summarize(probs, 2)
    halves = [acq.summarize(probs[:, :17], 2), acq.summarize(probs[:, 17:], 2)]
    for key in acq.SUMMARY_KEYS:
        np.testing.assert_allclose(whole[key], np.concatenate([h[key] for h in halves]))
    for name in ("max_entropy", "bald", "variation_ratios", "margin"):
        h = acq.get_heuristic(name)
        np.testing.assert_allclose(h.compute_score(probs, 2), getattr(acq, name)(probs), rtol=1e-6, atol=1e-6)
    vtb = acq.get_heuristic("validity_then_bald", threshold=0.3)
    np.testing.assert_allclose(vtb.compute_score(probs, 2), acq.validity_then_bald(probs, 2, 0.3), rtol=1e-6, atol=1e-6)


def test_heuristic_select_skips_unavailable_and_keeps_order() -> None:
    summary = {k: np.zeros(5, np.float32) for k in acq.SUMMARY_KEYS}
    summary["target_prob"] = np.array([0.1, 0.9, 0.5, 0.8, 0.7], np.float32)
    available = np.array([True, False, True, True, True])
    picks = acq.get_heuristic("target_prob").select(summary, available, 2)
    assert picks.indices.tolist() == [3, 4]
    np.testing.assert_allclose(picks.scores, [0.8, 0.7])


def test_k_center_spreads_out() -> None:
    feats = np.array([[1.0, 0.0], [0.99, 0.01], [0.98, 0.02], [0.0, 1.0], [0.7, 0.7]])
    assert acq.k_center(feats, 2).tolist() == [0, 3]
    assert acq.k_center(feats, 3).tolist() == [0, 3, 4]
    # Scale does not matter (rows are L2-normalised): 10x the near-copy is still a near-copy.
    scaled = feats * np.array([[1.0], [10.0], [1.0], [1.0], [1.0]])
    assert acq.k_center(scaled, 2).tolist() == [0, 3]


def test_validity_then_bald_spreads_a_round_and_falls_back_with_a_note() -> None:
    n = 8
    summary = {k: np.zeros(n, np.float32) for k in acq.SUMMARY_KEYS}
    summary["target_prob"] = np.array([0.9] * 6 + [0.2, 0.4], np.float32)
    summary["bald"] = np.array([0.6, 0.59, 0.58, 0.3, 0.2, 0.1, 0.9, 0.9], np.float32)
    # Candidates 0, 1, 2 are the same image; 3 and 4 differ.
    feats = np.array([[1, 0, 0], [1, 0, 0.01], [1, 0.01, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0], [0, 0, 0]])
    h = acq.ValidityThenBald(threshold=0.5, spread_factor=2)
    picks = h.select(summary, np.ones(n, bool), 2, features_fn=lambda idx: feats[idx].astype(float))
    assert picks.indices.tolist() == [0, 3]  # not the near-copies 0 and 1
    assert picks.notes == []
    # Without features the round is plain BALD order among the valid ones, never the invalid 6 and 7.
    assert h.select(summary, np.ones(n, bool), 2).indices.tolist() == [0, 1]
    # Only 6 pass; asking for 7 takes all 6 plus the best invalid (posterior .4 -> candidate 7).
    fallback = h.select(summary, np.ones(n, bool), 7)
    assert sorted(fallback.indices[:6].tolist()) == [0, 1, 2, 3, 4, 5]
    assert fallback.indices[6] == 7
    assert "only 6 of 8" in fallback.notes[0]


def test_k_center_never_repeats_a_row_of_identical_features() -> None:
    order = acq.k_center(np.ones((4, 3)), 3)
    assert sorted(order.tolist()) == [0, 1, 2]
    # Fixed rows come first and stay; the next is the farthest from all of them.
    feats = np.array([[1.0, 0.0], [0.0, 1.0], [0.99, 0.01], [0.7, 0.7], [0.01, 0.99]])
    assert acq.k_center(feats, 3, fixed=2).tolist() == [0, 1, 3]


def test_a_fallback_round_keeps_every_valid_pick_and_spreads_the_fill() -> None:
    """3 valid candidates, 5 picks: the 2 fills come from the 4 invalid ones with the highest posterior,
    ordered by BALD and spread, so not two near-copies of the most class-like image (3, 4, 5)."""
    n = 8
    summary = {k: np.zeros(n, np.float32) for k in acq.SUMMARY_KEYS}
    summary["target_prob"] = np.array([0.9, 0.8, 0.7, 0.45, 0.45, 0.44, 0.3, 0.1], np.float32)
    summary["bald"] = np.array([0.1, 0.1, 0.1, 0.5, 0.4, 0.3, 0.2, 0.9], np.float32)
    feats = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [0, 0.01, 1], [0.01, 0, 1], [1, 0, 1], [0, 1, 1]])
    h = acq.ValidityThenBald(threshold=0.5, spread_factor=2)
    picks = h.select(summary, np.ones(n, bool), 5, features_fn=lambda idx: feats[idx].astype(float))
    assert sorted(picks.indices[:3].tolist()) == [0, 1, 2]
    assert picks.indices[3:].tolist() == [3, 6]  # best BALD first, then the far one, not the copies 4 or 5
    assert "only 3 of 8" in picks.notes[0] and "spread out" in picks.notes[0]
    # Without features the fill is the candidate pool (never 7: its posterior is outside it) by BALD.
    plain = h.select(summary, np.ones(n, bool), 5)
    assert plain.indices[3:].tolist() == [3, 4]


def test_unknown_acquisition_names_the_field() -> None:
    with pytest.raises(ValueError, match="acquisition"):
        acq.get_heuristic("most_cat")
