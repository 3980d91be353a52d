"""Long-tail bookkeeping: the shot groups a long-tailed benchmark reports, and the fill plan that says how
many synthetic images each class needs.

Shot groups follow the long-tail literature (Liu et al., OLTR, CVPR 2019; CIFAR-10/100-LT, DiffuLT):
a class is *many*-shot with more than 100 training images, *medium*-shot with 20 to 100, *few*-shot with
fewer than 20 -- counted on the **imbalanced training set** (what the classifier learns from), never on
the test set or on the set after synthetic images were added.

A fill plan tops every class up to a target: ``to_head`` (the largest class's count) or a total per class
the user chooses (``{"per_class": N}``, N at least the largest class's count, at most
:data:`MAX_PER_CLASS`). A class's need is ``target - count``; classes already at the target need none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MANY_ABOVE = 100  # many-shot: more than 100 training images
FEW_BELOW = 20  # few-shot: fewer than 20; medium-shot: 20 to 100
GROUPS = ("many", "medium", "few")
MAX_PER_CLASS = 100_000  # a class's target: twenty times CIFAR-10's 5,000 images per class


class PerClass(BaseModel):
    """Every class is topped up to ``per_class`` images."""

    model_config = ConfigDict(extra="forbid")
    per_class: int = Field(ge=1, le=MAX_PER_CLASS, description=f"images each class reaches, 1 to {MAX_PER_CLASS}")


FillTarget = Literal["to_head"] | PerClass
"""``"to_head"``: every class reaches the largest class's count; ``{"per_class": N}``: every class reaches N."""


def shot_group(count: int) -> str:
    """``many`` (> 100), ``medium`` (20 to 100) or ``few`` (< 20) for a class with ``count`` training images."""
    if count > MANY_ABOVE:
        return "many"
    if count < FEW_BELOW:
        return "few"
    return "medium"


def shot_groups(train_counts: Mapping[str, int]) -> dict[str, list[str]]:
    """The classes of each shot group (only groups that have a class), from the imbalanced training counts."""
    out: dict[str, list[str]] = {}
    for cls, n in train_counts.items():
        out.setdefault(shot_group(int(n)), []).append(cls)
    return {g: out[g] for g in GROUPS if g in out}


def group_accuracy(per_class: Mapping[str, float | None], groups: Mapping[str, list[str]]) -> dict[str, float]:
    """Mean per-class accuracy (percent) of each group: every class of the group weighs the same."""
    out = {}
    for name, classes in groups.items():
        values = [per_class[c] for c in classes if per_class.get(c) is not None]
        if values:
            out[name] = round(sum(values) / len(values), 2)
    return out


def balanced_accuracy(per_class: Mapping[str, float | None]) -> float | None:
    """Mean per-class accuracy (percent): what overall accuracy would be on a class-balanced test set."""
    values = [v for v in per_class.values() if v is not None]
    return round(sum(values) / len(values), 2) if values else None


def fill_plan(train_counts: Mapping[str, int], target: Any, field: str = "fill") -> dict[str, Any]:
    """How many synthetic images each class needs to reach ``target`` (``"to_head"`` or ``{"per_class": N}``).

    Raises ``ValueError`` whose message starts with the field it names (``fill.per_class: ...``).
    """
    counts = {c: int(n) for c, n in train_counts.items()}
    if len(counts) < 2:
        raise ValueError(f"{field}: a fill plan needs at least 2 classes; this dataset has {len(counts)}")
    head_class = max(counts, key=lambda c: counts[c])
    head = counts[head_class]
    if target == "to_head":
        goal = head
    elif isinstance(target, PerClass) or isinstance(target, Mapping):
        spec = target if isinstance(target, PerClass) else PerClass.model_validate(target)
        goal = spec.per_class
        if goal < head:
            raise ValueError(
                f"{field}.per_class: {goal} is below the {head} real training images of class {head_class!r}; "
                f"choose at least {head} (or 'to_head')"
            )
    else:
        raise ValueError(f"{field}: 'to_head' or {{'per_class': N}}, not {target!r}")
    need = {c: goal - n for c, n in counts.items()}
    return {
        "target": goal,
        "counts": counts,
        "need": need,
        "total": sum(need.values()),
        "groups": shot_groups(counts),
        "thresholds": {"many_above": MANY_ABOVE, "few_below": FEW_BELOW},
    }
