"""Long tails (issue 31): shot groups on the right counts, the fill plan's per-class shortfall, balanced and
group accuracy."""

from __future__ import annotations

import re

import numpy as np
import pytest

from backend.data.imbalance import apply_imbalance, kept_counts
from backend.data.longtail import (
    FEW_BELOW,
    MANY_ABOVE,
    balanced_accuracy,
    fill_plan,
    group_accuracy,
    shot_group,
    shot_groups,
)

CLASSES = [str(i) for i in range(10)]
LT100 = {"profile": "longtail", "imbalance_factor": 100, "seed": 0}


def test_shot_group_thresholds_are_the_literatures() -> None:
    assert (MANY_ABOVE, FEW_BELOW) == (100, 20)
    assert [shot_group(n) for n in (101, 100, 20, 19, 1)] == ["many", "medium", "medium", "few", "few"]
    assert shot_groups({"a": 500, "b": 50, "c": 5}) == {"many": ["a"], "medium": ["b"], "few": ["c"]}
    assert shot_groups({"a": 50, "b": 60}) == {"medium": ["a", "b"]}  # a group without a class is absent


def test_kept_counts_equal_what_apply_imbalance_keeps() -> None:
    digits = [142, 146, 141, 146, 145, 145, 145, 143, 139, 144]  # the demo's training counts (test_fraction 0.2)
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), digits))
    counts = {c: int((labels == i).sum()) for i, c in enumerate(CLASSES)}
    kept = apply_imbalance(labels, CLASSES, LT100).counts(labels, 10)
    assert kept_counts(LT100, counts, CLASSES) == {c: int(n) for c, n in zip(CLASSES, kept, strict=True)}
    head = max(counts.values())
    # the digits demo at factor 100: six classes under 20 images, the last with one
    assert sum(1 for n in kept if n < FEW_BELOW) == 6 and kept[-1] == 1 and kept[0] <= head


def test_fill_plan_counts_each_class_shortfall_to_the_head() -> None:
    counts = {"0": 142, "1": 87, "2": 52, "3": 31, "4": 18, "5": 11, "6": 6, "7": 4, "8": 2, "9": 1}
    plan = fill_plan(counts, "to_head")
    assert plan["target"] == 142
    assert plan["need"] == {c: 142 - n for c, n in counts.items()}
    assert plan["total"] == sum(142 - n for n in counts.values())
    # groups are thresholds on the real (imbalanced) counts, not on the counts after filling (all 142)
    assert plan["groups"] == {"many": ["0"], "medium": ["1", "2", "3"], "few": ["4", "5", "6", "7", "8", "9"]}
    per_class = fill_plan(counts, {"per_class": 200})
    assert per_class["need"]["0"] == 58 and per_class["need"]["9"] == 199 and per_class["target"] == 200


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({"per_class": 100}, "fill.per_class: 100 is below the 142 real training images of class '0'"),
        ({"per_class": 0}, "greater than or equal to 1"),
        ({"per_class": 100_001}, "less than or equal to 100000"),
        ("to_tail", "fill: 'to_head' or"),
    ],
)
def test_fill_plan_refuses_bad_targets_naming_the_field(target: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        fill_plan({"0": 142, "1": 3}, target)


def test_one_class_has_no_long_tail_and_no_fill_plan() -> None:
    with pytest.raises(ValueError, match="profile: a long tail needs at least 2 classes"):
        kept_counts(LT100, {"only": 50}, ["only"])
    with pytest.raises(ValueError, match="fill: a fill plan needs at least 2 classes"):
        fill_plan({"only": 50}, "to_head")


def test_group_and_balanced_accuracy_weigh_every_class_the_same() -> None:
    per_class = {"a": 90.0, "b": 60.0, "c": 30.0, "d": 10.0}
    groups = {"many": ["a"], "medium": ["b"], "few": ["c", "d"]}
    assert group_accuracy(per_class, groups) == {"many": 90.0, "medium": 60.0, "few": 20.0}
    assert balanced_accuracy(per_class) == 47.5
    assert group_accuracy(per_class, {"few": ["c"]}) == {"few": 30.0}
