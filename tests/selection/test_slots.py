"""Prompt-slot analytics and next-round weights on a planted pool."""

from __future__ import annotations

import pytest

from backend.selection.slots import reweight, slot_analytics


def _planted() -> tuple[list[dict], list[tuple[dict, float, str]]]:
    """30 candidates: 10 per breed, place alternating. The picks are the tabbies (real minority images
    in the planted story) plus one siamese that the reviewer rejected."""
    breeds = ["tabby", "siamese", "persian"]
    cands = [{"breed": breeds[i % 3], "place": "sofa" if i % 2 else "floor"} for i in range(30)]
    tabbies = [c for c in cands if c["breed"] == "tabby"]
    picks = [(c, 0.9, "accepted" if j < 3 else "pending") for j, c in enumerate(tabbies)]
    picks.append(({"breed": "siamese", "place": "sofa"}, 0.2, "rejected"))
    return cands, picks


def test_analytics_count_candidates_picks_scores_and_reviews() -> None:
    cands, picks = _planted()
    rows = {r["value"]: r for r in slot_analytics(cands, picks)["breed"]}
    assert rows["tabby"] == {
        "value": "tabby", "candidates": 10, "picks": 10, "pick_rate": 1.0, "mean_score": pytest.approx(0.9),
        "accepted": 3, "rejected": 0, "acceptance_rate": 1.0,
    }  # fmt: skip
    assert rows["siamese"]["picks"] == 1 and rows["siamese"]["acceptance_rate"] == 0.0
    assert rows["persian"]["picks"] == 0 and rows["persian"]["mean_score"] is None
    assert rows["persian"]["acceptance_rate"] is None
    places = {r["value"]: r for r in slot_analytics(cands, picks)["place"]}
    assert places["sofa"]["candidates"] == places["floor"]["candidates"] == 15


def test_reweight_draws_the_picked_value_most_and_never_zero() -> None:
    cands, picks = _planted()
    w = reweight(slot_analytics(cands, picks), smoothing=1.0)
    breed = w["breed"]
    assert max(breed, key=breed.get) == "tabby" and breed["tabby"] > 0.8
    assert min(breed.values()) > 0  # smoothing: persian (never picked) and siamese (rejected) stay
    assert breed["siamese"] == pytest.approx(breed["persian"])  # a rejected pick counts as not kept
    assert sum(breed.values()) == pytest.approx(1.0) and sum(w["place"].values()) == pytest.approx(1.0)
    # More smoothing pulls the weights toward uniform.
    flat = reweight(slot_analytics(cands, picks), smoothing=100.0)["breed"]
    assert breed["tabby"] > flat["tabby"] > 1 / 3
    with pytest.raises(ValueError, match="smoothing"):
        reweight(slot_analytics(cands, picks), smoothing=0)
