"""Prompt-slot analytics of a selection over an SD pool, and the reweighted vocabulary they suggest.

Every SD pool image remembers the slot values its prompt was built from (``meta["slots"]``, e.g.
``{"breed": "tabby", "place": "sofa"}``). Per slot value: how many candidates it produced, how many
the selection picked, their mean score and how reviewers judged them. ``reweight`` turns that into
sampling weights for the next round: values whose images were picked (and not rejected) more often
draw more, Laplace-smoothed so that no value ever drops to zero (a value that did badly in one round
still gets tried again, just less). ``next_round_vocabulary`` puts those weights into a copy of the
round's vocabulary (the closed loop), optionally with the classes the pool drifted to
(``confused_classes``) added as negative-prompt terms.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from backend.generation.prompts import Vocabulary

Slots = dict[str, str]


def slot_analytics(
    candidates: Iterable[Slots], picks: Iterable[tuple[Slots, float, str]]
) -> dict[str, list[dict[str, Any]]]:
    """Per slot name, one row per value (most candidates first).

    candidates: the slot values of every pool image (images without slots are skipped);
    picks: (slot values, score, review state "pending"|"accepted"|"rejected") of every pick.
    Row: value, candidates, picks, pick_rate, mean_score (of its picks; None without picks),
    accepted, rejected, acceptance_rate (accepted / reviewed; None when none was reviewed).
    """
    stats: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(float)))
    for slots in candidates:
        for name, value in (slots or {}).items():
            stats[name][value]["candidates"] += 1
    for slots, score, review in picks:
        for name, value in (slots or {}).items():
            row = stats[name][value]
            row["picks"] += 1
            row["score_sum"] += float(score)
            if review in ("accepted", "rejected"):
                row[review] += 1
    out: dict[str, list[dict[str, Any]]] = {}
    for name, values in stats.items():
        rows = []
        for value, s in values.items():
            n_picks, reviewed = int(s["picks"]), int(s["accepted"] + s["rejected"])
            rows.append(
                {
                    "value": value,
                    "candidates": int(s["candidates"]),
                    "picks": n_picks,
                    "pick_rate": n_picks / s["candidates"] if s["candidates"] else None,
                    "mean_score": s["score_sum"] / n_picks if n_picks else None,
                    "accepted": int(s["accepted"]),
                    "rejected": int(s["rejected"]),
                    "acceptance_rate": s["accepted"] / reviewed if reviewed else None,
                }
            )
        out[name] = sorted(rows, key=lambda r: (-r["candidates"], r["value"]))
    return out


def reweight(
    analytics: dict[str, list[dict[str, Any]]],
    smoothing: float = 1.0,
    values: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, dict[str, float]]:
    """Next-round sampling weights per slot value, summing to 1 per slot, all > 0.

    With s = ``smoothing``, for each value v of a slot::

        rate(v)   = (kept(v) + s) / (candidates(v) + 2 s),   kept = picks - rejected picks
        weight(v) = rate(v) / sum of rate(u) over the slot's values u

    a smoothed rate of candidates that made it into the data (Laplace's rule of succession for s = 1):
    a value with few candidates is not judged on luck, a value with none keeps the prior rate 1/2, and
    none reaches zero. Larger s pulls every weight toward uniform. ``values`` (slot -> the vocabulary's
    values) weights exactly those values: ones the pool never produced get the prior, analytics rows of
    values no longer in the vocabulary are left out; without it, the analytics' own values are weighted.
    """
    if not (smoothing > 0 and smoothing < float("inf")):
        raise ValueError(f"smoothing must be finite and > 0 (no value may drop to zero), got {smoothing}")
    out: dict[str, dict[str, float]] = {}
    names = list(values) if values is not None else list(analytics)
    for name in names:
        rows = {r["value"]: r for r in analytics.get(name, [])}
        wanted = list(values[name]) if values is not None else list(rows)
        rate = {}
        for v in wanted:
            r = rows.get(v, {"picks": 0, "rejected": 0, "candidates": 0})
            rate[v] = (r["picks"] - r["rejected"] + smoothing) / (r["candidates"] + 2 * smoothing)
        total = sum(rate.values())
        out[name] = {v: w / total for v, w in rate.items()}
    return out


def confused_classes(quality: Mapping[str, Any], limit: int) -> list[str]:
    """Up to ``limit`` classes other than the target that the pool drifted to, most first.

    ``quality`` is a selection's stored panel (``{"target", "pool": {class: panel}}``, see
    ``loop._quality``): a pool image inside a class's real manifold (its precision against that class)
    looks like that class in the round classifier's feature space. Classes are ranked by that
    precision (density breaks ties) and kept only when the pool lands there at all (precision > 0).
    """
    target = quality.get("target")
    panels = [(c, p) for c, p in (quality.get("pool") or {}).items() if c != target and p]
    panels = [(c, p) for c, p in panels if (p.get("precision") or 0) > 0]
    panels.sort(key=lambda cp: (-cp[1]["precision"], -(cp[1].get("density") or 0), cp[0]))
    return [c for c, _ in panels[: max(0, limit)]]


def next_round_vocabulary(
    vocabulary: Vocabulary,
    analytics: dict[str, list[dict[str, Any]]],
    smoothing: float = 1.0,
    negative_terms: Sequence[str] = (),
) -> Vocabulary:
    """``vocabulary`` with every slot weighted by ``reweight`` (over its own values) and
    ``negative_terms`` appended to its negative prompt (terms it already holds are not repeated)."""
    weights = reweight(analytics, smoothing, values=vocabulary.slots)
    present = {t.strip().lower() for t in vocabulary.negative_prompt.split(",")}
    extra = [t for t in dict.fromkeys(" ".join(t.split()) for t in negative_terms) if t and t.lower() not in present]
    negative = ", ".join([vocabulary.negative_prompt, *extra] if vocabulary.negative_prompt else extra)
    return Vocabulary(vocabulary.template, {k: list(v) for k, v in vocabulary.slots.items()}, negative, weights)
