"""Prompt vocabularies: validation, lazy sampling without replacement, cycling, stable seeds."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest

from backend.generation.prompts import Vocabulary, default_vocabulary, image_seed

SHARED = Path(os.environ.get("REBALANCE_SHARED", Path(__file__).parents[3] / "shared"))
REFERENCE = SHARED / "reference" / "cat_vocabulary.json"


def small() -> Vocabulary:
    return Vocabulary("{a} cat {b}", {"a": ["red", "blue", "red"], "b": ["here", "there", "  there "]})


def test_builtin_cat_vocabulary_is_the_reference_one() -> None:
    vocab = default_vocabulary("cat")
    raw = json.loads((Path(__file__).parents[2] / "backend/generation/vocabularies/cat.json").read_text())
    # The study's vocabulary ships in ../shared; a missing file is an error, not a silent pass.
    assert REFERENCE.is_file(), f"reference vocabulary missing: {REFERENCE} (set REBALANCE_SHARED)"
    assert raw == json.loads(REFERENCE.read_text())
    assert vocab.template == "{breed} cat {preposition} the {furniture}"
    assert [len(raw["slots"][k]) for k in ("breed", "preposition", "furniture")] == [109, 11, 85]
    assert vocab.distinct_count() == 109 * 10 * 85 == 92_650  # 'at' is listed twice
    assert vocab.slots["preposition"].count("at") == 1


def test_reference_sample_covers_every_prompt_once() -> None:
    vocab = default_vocabulary("cat")
    items = vocab.sample(vocab.distinct_count(), seed=3)
    prompts = [item.prompt for item in items]
    assert len(set(prompts)) == 92_650
    assert [item.index for item in items[:3]] == [0, 1, 2]
    assert items[0].prompt == "{breed} cat {preposition} the {furniture}".format(**items[0].slots)


def test_sample_is_shuffled_and_matches_the_product() -> None:
    vocab = small()
    assert vocab.slots == {"a": ("red", "blue"), "b": ("here", "there")}
    product = {f"{a} cat {b}" for a, b in itertools.product(*vocab.slots.values())}
    assert {item.prompt for item in vocab.sample(4, seed=0)} == product
    sequential = [item.prompt for item in vocab.sample(4, seed=0, shuffle=False)]
    assert sequential == ["red cat here", "red cat there", "blue cat here", "blue cat there"]
    orders = {tuple(i.prompt for i in default_vocabulary("cat").sample(5, seed=s)) for s in range(5)}
    assert len(orders) == 5  # the seed picks the order


def test_cycles_with_new_seeds_past_the_product() -> None:
    vocab = small()
    items = vocab.sample(10, seed=7)
    for cycle in (items[0:4], items[4:8]):
        assert len({item.prompt for item in cycle}) == 4
    seeds = [item.seed for item in items]
    assert len(set(seeds)) == 10
    assert {item.prompt for item in items[8:]} <= {item.prompt for item in items[:4]}


def test_items_depend_only_on_seed_and_index() -> None:
    vocab = default_vocabulary("cat")
    whole = vocab.sample(100, seed=42)
    chunks = [vocab.sample(30, seed=42, start=s) for s in range(0, 100, 30)]
    assert [i for c in chunks for i in c][:100] == whole
    assert vocab.item(57, seed=42) == whole[57]
    assert whole[57].seed == image_seed(42, 57)
    assert vocab.sample(3, seed=43) != whole[:3]
    assert 0 <= whole[57].seed < 2**31


def test_image_seed_is_a_stable_hash() -> None:
    # Pinned: changing the derivation would silently change every stored job's images.
    assert [image_seed(0, 0), image_seed(0, 1), image_seed(1, 0)] == [1772814956, 2062311047, 1786995748]
    assert image_seed(1234, 5) == 413620801


@pytest.mark.parametrize(
    "template, slots, message",
    [
        ("{a} cat {b}", {"a": ["x"]}, "slot 'b' is in the template but has no list"),
        ("{a} cat", {"a": ["x"], "c": ["y"]}, "slot 'c' has values but is not used"),
        ("{a} cat", {"a": []}, "slot 'a' has an empty list"),
        ("{a} cat", {"a": ["  ", ""]}, "slot 'a' has an empty list"),
        ("a cat", {}, "template has no slots"),
        ("", {}, "template is empty"),
        ("{0} cat", {}, "not a plain slot name"),
        ("{a.b} cat", {}, "not a plain slot name"),
        ("{a cat", {"a": ["x"]}, "template"),
        ("{a} cat", {"a": "x"}, "must be a list"),
    ],
)
def test_validation_names_the_problem(template: str, slots: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Vocabulary(template, slots)


def test_dict_round_trip_and_literal_braces() -> None:
    vocab = Vocabulary.from_dict({"template": "{{x}} {a}", "slots": {"a": ["1"]}, "negative_prompt": "blur"})
    assert vocab.sample(1, seed=0)[0].prompt == "{x} 1"
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab
    with pytest.raises(ValueError, match="'slots' is missing"):
        Vocabulary.from_dict({"template": "{a}"})


def test_preview_and_generic_default() -> None:
    vocab = default_vocabulary("airplane")
    assert len(vocab.preview(5)) == 5
    assert all(" an airplane " in p for p in vocab.preview(5))
    assert small().preview(100) == [item.prompt for item in small().sample(4, seed=0)]
    assert default_vocabulary("../cat").template != default_vocabulary("cat").template


# -- weighted vocabularies (the next round of a selection) ----------------------------------------
def test_weighted_slot_draws_values_in_proportion_and_never_a_zero_weight() -> None:
    vocab = Vocabulary("{a} cat {b}", {"a": {"red": 3, " blue ": 1, "green": 0}, "b": ["here", "there"]})
    assert vocab.weights == {"a": {"red": 0.75, "blue": 0.25, "green": 0.0}}  # normalised, whitespace tidied
    counts = {"red": 0, "blue": 0, "green": 0}
    for item in vocab.sample(4000, seed=1):
        counts[item.slots["a"]] += 1
    assert counts["green"] == 0
    assert abs(counts["red"] / 4000 - 0.75) < 0.03 and abs(counts["blue"] / 4000 - 0.25) < 0.03
    heres = sum(item.slots["b"] == "here" for item in vocab.sample(4000, seed=1))
    assert abs(heres / 4000 - 0.5) < 0.03  # the unweighted slot stays uniform


def test_weighted_image_is_a_function_of_seed_and_index_only() -> None:
    vocab = Vocabulary(
        "{a} cat {b}", {"a": ["red", "blue"], "b": ["here", "there"]}, weights={"a": {"red": 2, "blue": 1}}
    )
    whole = vocab.sample(50, seed=7)
    assert [vocab.item(i, 7) for i in range(50)] == whole
    assert vocab.sample(20, seed=7, start=30) == whole[30:]  # chunking / resume cannot change image i
    assert vocab.sample(50, seed=8) != whole
    assert len({item.seed for item in whole}) == 50


def test_weights_round_trip_through_dict_and_stored_slots() -> None:
    vocab = Vocabulary("{a} cat {b}", {"a": ["red", "blue"], "b": ["here"]}, weights={"a": {"red": 1, "blue": 3}})
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab
    assert vocab.to_dict()["weights"] == {"a": {"red": 0.25, "blue": 0.75}}
    stored = vocab.stored_slots()
    assert stored == {"a": {"red": 0.25, "blue": 0.75}, "b": ["here"]}
    assert Vocabulary(vocab.template, stored) == vocab
    assert "weights" not in small().to_dict() and small().weights is None


@pytest.mark.parametrize(
    ("slots", "weights", "message"),
    [
        ({"a": {"red": -1, "blue": 1}}, None, "finite and >= 0"),
        ({"a": {"red": float("inf")}}, None, "finite and >= 0"),
        ({"a": {"red": float("nan")}}, None, "finite and >= 0"),
        ({"a": {"red": 0, "blue": 0}}, None, "all zero"),
        ({"a": {"red": "2"}}, None, "not a number"),
        ({"a": {"red": 1, " red": 2}}, None, "weighted twice"),
        ({"a": ["red", "blue"]}, {"a": {"red": 1, "pink": 1}}, r"\['pink'\] are not values of slot 'a'"),
        ({"a": ["red", "blue"]}, {"a": {"red": 1}}, r"no weight for \['blue'\]"),
        ({"a": ["red", "blue"]}, {"b": {"red": 1}}, "'b' is not a slot"),
        ({"a": {"red": 1}}, {"a": {"red": 1}}, "already has weights"),
    ],
)
def test_bad_weights_name_the_slot(slots: dict, weights: dict | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Vocabulary("{a} cat", slots, weights=weights)
