"""The verdict: does a synthetic variant beat the strongest classical remedy, and how sure are we?

For each variant trained with synthetic images, against the classical variant (``BASELINES``) with the
highest mean minority accuracy in the same benchmark, over the seeds both have:

    d_s   = metric(variant, seed s) - metric(baseline, seed s)      (paired: same seed, same test images)
    delta = mean_s d_s
    SE^2  = var_s(d_s) / S  +  var_b(mean_s d_s^(b))                 seed-to-seed + test-sample variation
    CI    = delta -/+ t(0.975, S - 1) * SE

The second term is a Poisson bootstrap over the test images (``BOOTSTRAP`` resamples, one weight per image
shared by every seed and both variants, since every run is tested on the same images): the seeds' spread
alone cannot see the noise of a small shared test set, which every seed repeats. ``metric`` is the mean
per-class accuracy over the minority classes (the headline number) and the overall accuracy, both in
percent, so deltas are in percentage points.

Verdicts (``MARGIN`` = the overall accuracy a helping variant may lose):
    helps      minority CI above 0 and overall CI above -MARGIN
    hurts      minority CI below 0, or overall CI below -MARGIN
    cant_tell  otherwise, or with fewer than 2 paired seeds, or when a run of either side is under-trained
               (``backend.training.trainer.UNDER_TRAINED_BELOW``); ``seeds_needed`` says how many seeds the
               same spread would need for the minority interval to leave 0 (None when the test set's own
               noise is too large for any number of seeds).

Per-run results arrive as the benchmark rows store them: ``test_correct`` (packed bits, base64; one per test
image in test-set order) and the benchmark's ``test_labels`` (``pack_labels``).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from backend.reports.tables import minority_accuracy

BASELINES = ("oversample", "oversample_aug", "class_weighted", "logit_adjusted")  # the classical remedies
MARGIN = 1.0  # percentage points of overall accuracy a "helps" variant may lose
BOOTSTRAP = 2000
MAX_SEEDS = 100


# -- storage ----------------------------------------------------------------------------------------------


def pack_bits(values: np.ndarray | None) -> str | None:
    """bool (N,) -> base64 of its packed bits (N/8 bytes); None stays None."""
    if values is None:
        return None
    return base64.b64encode(np.packbits(np.asarray(values, dtype=bool)).tobytes()).decode("ascii")


def unpack_bits(text: str, n: int) -> np.ndarray:
    """The inverse of ``pack_bits`` for ``n`` values."""
    return np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8), count=n).astype(bool)


def pack_labels(labels: np.ndarray) -> str:
    """int labels -> ``"u2:" + base64`` of little-endian uint16 (up to 65,536 classes)."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() > 65535):
        raise ValueError("labels must lie in [0, 65535]")
    return "u2:" + base64.b64encode(labels.astype("<u2").tobytes()).decode("ascii")


def unpack_labels(text: str) -> np.ndarray:
    if not text.startswith("u2:"):
        raise ValueError("not packed labels")
    return np.frombuffer(base64.b64decode(text[3:]), "<u2").astype(np.int64)


# -- statistics -----------------------------------------------------------------------------------------------


def _metric_sums(correct: np.ndarray, weights: np.ndarray, labels: np.ndarray, minority: list[int]) -> tuple:
    """(minority, overall) accuracy in % of each column of bool ``correct`` (N, R) under each row of
    ``weights`` (B, N): two (B, R) arrays. Minority = the mean over the minority classes of their accuracy."""
    c = correct.astype(np.float32)
    overall = 100.0 * (weights @ c) / np.maximum(weights.sum(1, keepdims=True), 1e-9)
    per_class = []
    for m in minority:
        mask = labels == m
        w = weights[:, mask]
        per_class.append(100.0 * (w @ c[mask]) / np.maximum(w.sum(1, keepdims=True), 1e-9))
    return np.mean(per_class, axis=0), overall


def paired_interval(
    variant: np.ndarray, baseline: np.ndarray, labels: np.ndarray, minority: list[int], seed: int = 0
) -> dict[str, Any]:
    """Mean paired difference (variant - baseline) over seeds with its 95 % interval, for the minority and the
    overall accuracy. ``variant``/``baseline``: bool (S, N) per-image correctness of the same seeds, in test
    order. Returns deltas, intervals, the two variance parts and the seeds it would take to resolve."""
    s, n = variant.shape
    both = np.concatenate([variant, baseline]).T  # (N, 2S)
    ones = np.ones((1, n), np.float32)
    point_min, point_all = _metric_sums(both, ones, labels, minority)
    d_min = point_min[0, :s] - point_min[0, s:]
    d_all = point_all[0, :s] - point_all[0, s:]
    rng = np.random.default_rng(seed)
    weights = rng.poisson(1.0, size=(BOOTSTRAP, n)).astype(np.float32)
    boot_min, boot_all = _metric_sums(both, weights, labels, minority)
    out: dict[str, Any] = {"seeds": s}
    for name, d, boot in (("minority", d_min, boot_min), ("overall", d_all, boot_all)):
        delta = float(d.mean())
        var_test = float(np.var(boot[:, :s].mean(1) - boot[:, s:].mean(1), ddof=1))
        var_seed = float(np.var(d, ddof=1)) if s > 1 else float("nan")
        q = _t975(s - 1) if s > 1 else NormalDist().inv_cdf(0.975)
        se = math.sqrt((0.0 if s < 2 else var_seed / s) + var_test)
        out[name] = {
            "delta": delta,
            "ci": [delta - q * se, delta + q * se],
            "var_seed": var_seed,
            "var_test": var_test,
            "per_seed": d.tolist(),
        }
    out["seeds_needed"] = seeds_needed(out["minority"]["delta"], out["minority"]["var_seed"],
                                       out["minority"]["var_test"], s)  # fmt: skip
    return out


def _t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom."""
    from scipy import stats  # imported here: scipy.stats costs a second at start-up (the API, the tests)

    return float(stats.t.ppf(0.975, df))


def seeds_needed(delta: float, var_seed: float, var_test: float, have: int) -> int | None:
    """Fewest seeds (> ``have``, at most ``MAX_SEEDS``) at which an interval with these variance parts would
    exclude 0; None when even ``MAX_SEEDS`` would not (the test set's own noise dominates, or no effect).
    With one seed the spread is unknown: 3, the least that estimates it with some confidence."""
    if math.isnan(var_seed):
        return 3
    for k in range(max(have + 1, 2), MAX_SEEDS + 1):
        if abs(delta) > _t975(k - 1) * math.sqrt(var_seed / k + var_test):
            return k
    return None


# -- the verdicts of a benchmark ------------------------------------------------------------------------------


def strongest_baseline(rows: Sequence[dict[str, Any]], minority: Sequence[str]) -> str | None:
    """The classical remedy (``BASELINES``) with the highest mean minority accuracy over its seeds."""
    acc = minority_accuracy(rows, minority)
    present = [name for name in BASELINES if name in acc]
    return max(present, key=acc.get) if present else None


def verdicts(
    rows: Sequence[dict[str, Any]], classes: Sequence[str], minority: Sequence[str], test_labels: str | None
) -> list[dict[str, Any]]:
    """One verdict per variant trained with synthetic images (rows with ``n_synthetic`` > 0), in row order."""
    synthetic = list(dict.fromkeys(r["variant"] for r in rows if (r.get("n_synthetic") or 0) > 0))
    if not synthetic or not minority:
        return []
    baseline = strongest_baseline(rows, minority)
    out = []
    for name in synthetic:
        entry: dict[str, Any] = {
            "variant": name,
            "baseline": baseline,
            "minority_delta": None,
            "minority_ci": None,
            "overall_delta": None,
            "overall_ci": None,
            "verdict": "cant_tell",
            "seeds": [],
            "seeds_needed": None,
            "margin": MARGIN,
            "reason": "",
        }
        out.append(entry)
        if baseline is None:
            entry["reason"] = f"no classical baseline ({', '.join(BASELINES)}) in this benchmark"
            continue
        mine = {r["seed"]: r for r in rows if r["variant"] == name}
        base = {r["seed"]: r for r in rows if r["variant"] == baseline}
        seeds = sorted(set(mine) & set(base))
        entry["seeds"] = seeds
        if not seeds:
            entry["reason"] = f"no seed has finished for both {name} and {baseline}"
            continue
        if test_labels is None or any(not r.get("test_correct") for r in (*map(mine.get, seeds),
                                                                            *map(base.get, seeds))):  # fmt: skip
            entry["reason"] = "runs recorded before per-image test results were stored"
            continue
        labels = unpack_labels(test_labels)
        idx = [classes.index(c) for c in minority if c in classes]
        v = np.stack([unpack_bits(mine[s]["test_correct"], len(labels)) for s in seeds])
        b = np.stack([unpack_bits(base[s]["test_correct"], len(labels)) for s in seeds])
        stat = paired_interval(v, b, labels, idx)
        entry.update(
            minority_delta=round(stat["minority"]["delta"], 2),
            minority_ci=[round(x, 2) for x in stat["minority"]["ci"]],
            overall_delta=round(stat["overall"]["delta"], 2),
            overall_ci=[round(x, 2) for x in stat["overall"]["ci"]],
        )
        entry["verdict"], entry["reason"] = decide(stat, [mine[s] for s in seeds], [base[s] for s in seeds])
        if entry["verdict"] == "cant_tell":
            entry["seeds_needed"] = stat["seeds_needed"]
    return out


def decide(stat: dict[str, Any], runs: list[dict], baseline_runs: list[dict]) -> tuple[str, str]:
    """(verdict, reason) from ``paired_interval``'s output and the runs it compared."""
    under = sorted({f"{r['variant']} seed {r['seed']}" for r in (*runs, *baseline_runs) if r.get("under_trained")})
    if under:
        return "cant_tell", f"under-trained (fit below the bar on its own training images): {', '.join(under)}"
    if stat["seeds"] < 2:
        return "cant_tell", "one seed: the seed-to-seed spread is unknown; run at least 3 seeds"
    lo, hi = stat["minority"]["ci"]
    o_lo, o_hi = stat["overall"]["ci"]
    if hi < 0:
        return "hurts", "the minority interval lies below 0"
    if o_hi < -MARGIN:
        return "hurts", f"overall accuracy is lower by more than {MARGIN:g} points"
    if lo > 0 and o_lo > -MARGIN:
        return "helps", f"the minority interval lies above 0 and overall accuracy loses at most {MARGIN:g} points"
    if lo > 0:
        return "cant_tell", f"the minority gains, but overall accuracy may be lower by more than {MARGIN:g} points"
    return "cant_tell", "the minority interval contains 0"
