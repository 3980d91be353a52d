"""Prompt-slot analytics of a selection over an SD pool, and the reweighted vocabulary they suggest.

Every SD pool image remembers the slot values its prompt was built from (``meta["slots"]``, e.g.
``{"breed": "tabby", "place": "sofa"}``). Per slot value: how many candidates it produced, how many
the selection picked, their mean score and how reviewers judged them. ``reweight`` turns that into
sampling weights for the next round: values whose images were picked (and not rejected) more often
draw more, Laplace-smoothed so that no value ever drops to zero (a value that did badly in one round
still gets tried again, just less).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

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


def reweight(analytics: dict[str, list[dict[str, Any]]], smoothing: float = 1.0) -> dict[str, dict[str, float]]:
    """Next-round sampling weights per slot value, summing to 1 per slot, all > 0.

    weight ~ (kept + smoothing) / (candidates + 2 * smoothing), kept = picks - rejected: a smoothed
    rate of candidates that made it into the data (Laplace's rule of succession), so a value with
    few candidates is not judged on luck and none reaches zero.
    """
    if smoothing <= 0:
        raise ValueError(f"smoothing must be > 0 (no value may drop to zero), got {smoothing}")
    out: dict[str, dict[str, float]] = {}
    for name, rows in analytics.items():
        rate = {r["value"]: (r["picks"] - r["rejected"] + smoothing) / (r["candidates"] + 2 * smoothing) for r in rows}
        total = sum(rate.values())
        out[name] = {v: w / total for v, w in rate.items()}
    return out
