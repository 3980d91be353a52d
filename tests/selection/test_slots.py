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


def test_next_round_vocabulary_draws_the_planted_value_most() -> None:
    """The closed loop in core: the round's vocabulary reweighted by its analytics. Values the pool never
    produced (bengal) keep the prior rate; the next round's prompts draw tabby most, none never."""
    from backend.generation.prompts import Vocabulary
    from backend.selection.slots import next_round_vocabulary

    vocab = Vocabulary(
        "{breed} cat on the {place}",
        {"breed": ["tabby", "siamese", "persian", "bengal"], "place": ["sofa", "floor"]},
        negative_prompt="text, Dog",
    )
    cands, picks = _planted()
    nxt = next_round_vocabulary(vocab, slot_analytics(cands, picks), smoothing=1.0, negative_terms=["dog", "horse"])
    w = nxt.weights["breed"]
    # (kept + 1) / (candidates + 2): tabby 11/12, siamese 1/12 (its pick was rejected), persian 1/12, bengal 1/2.
    rates = {"tabby": 11 / 12, "siamese": 1 / 12, "persian": 1 / 12, "bengal": 1 / 2}
    assert w == pytest.approx({v: r / sum(rates.values()) for v, r in rates.items()})
    assert nxt.weights["place"] == pytest.approx({"sofa": 0.5, "floor": 0.5})  # picks split evenly
    assert nxt.template == vocab.template and nxt.slots == vocab.slots
    assert nxt.negative_prompt == "text, Dog, horse"  # 'dog' is already there (case-insensitive)
    drawn = [item.slots["breed"] for item in nxt.sample(3000, seed=4)]
    counts = {b: drawn.count(b) for b in vocab.slots["breed"]}
    assert max(counts, key=counts.get) == "tabby" and counts["tabby"] > 0.5 * len(drawn), counts
    assert min(counts.values()) > 0, counts


def test_confused_classes_ranks_the_classes_the_pool_landed_in() -> None:
    from backend.selection.slots import confused_classes

    quality = {
        "target": "cat",
        "pool": {
            "cat": {"precision": 0.9, "density": 1.0},
            "dog": {"precision": 0.6, "density": 0.5},
            "horse": {"precision": 0.6, "density": 0.7},
            "truck": {"precision": 0.0, "density": 0.0},
            "ship": None,
        },
    }
    assert confused_classes(quality, 2) == ["horse", "dog"]  # density breaks the tie
    assert confused_classes(quality, 5) == ["horse", "dog"]  # never the target, never a class it missed
    assert confused_classes(quality, 0) == [] and confused_classes({}, 3) == []
