"""Acquisition functions: which candidates the classifier should see next.

Each function takes MC-dropout class probabilities ``probs`` of shape (T, N, C) -- T stochastic
passes, N candidates, C classes -- and returns scores of shape (N,): **higher = pick first**.

All scores except ``random`` are per-candidate, so they can be computed batch by batch over a huge
pool and concatenated (``summarize`` does exactly that for the streaming scorer in ``scoring.py``).
A ``Heuristic`` (baal-style: ``compute_score`` + ``select``) turns those per-candidate summaries into
a round's picks; ``ACQUISITIONS`` maps each name to its heuristic factory.

``epig`` and ``validity_then_epig`` also read the summary ``"epig"`` (``epig.py``), which the scorer
only computes when given the target set (the kept real minority images): ``Heuristic.needs_targets``.
Every heuristic's round can be made batch-aware with a ``BatchPolicy`` (``batch.py``): stochastic
sampling instead of top-k, and k-center diversity over the top ``spread_factor * k``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from backend.selection.batch import stochastic_order
from backend.selection.epig import epig

EPS = 1e-12  # keeps log(0) finite; 0 * log(EPS) still contributes ~0


def _entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    return -(p * np.log(np.clip(p, EPS, 1.0))).sum(axis=axis)


def _check(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3:
        raise ValueError(f"probs must have shape (T, N, C), got {probs.shape}")
    return probs


def max_entropy(probs: np.ndarray) -> np.ndarray:
    """Predictive entropy H[mean_t p_t] in nats. probs (T, N, C) -> (N,)."""
    return _entropy(_check(probs).mean(axis=0))


def bald(probs: np.ndarray) -> np.ndarray:
    """BALD mutual information H[mean_t p_t] - mean_t H[p_t] (Houlsby 2011, Gal 2017). (T, N, C) -> (N,).

    High when the passes disagree with each other confidently (epistemic uncertainty), not when every
    pass is merely unsure.
    """
    probs = _check(probs)
    mi = _entropy(probs.mean(axis=0)) - _entropy(probs).mean(axis=0)
    return np.maximum(mi, 0.0)  # rounding can make a zero MI slightly negative


def variation_ratios(probs: np.ndarray) -> np.ndarray:
    """1 - f_mode / T, f_mode = how many of the T passes vote for the most voted class (Gal 2016).

    (T, N, C) -> (N,); 0 when all passes agree.
    """
    probs = _check(probs)
    t, _, c = probs.shape
    votes = probs.argmax(axis=2)  # (T, N)
    counts = np.stack([(votes == k).sum(axis=0) for k in range(c)], axis=1)  # (N, C)
    return 1.0 - counts.max(axis=1) / t


def margin(probs: np.ndarray) -> np.ndarray:
    """Negated gap between the two most probable classes of the mean posterior. (T, N, C) -> (N,).

    Negated so that the smallest margin (the most ambiguous candidate) scores highest.
    """
    mean = _check(probs).mean(axis=0)
    if mean.shape[1] < 2:
        raise ValueError("margin needs at least 2 classes")
    top2 = np.sort(mean, axis=1)[:, -2:]
    return -(top2[:, 1] - top2[:, 0])


def target_prob(probs: np.ndarray, target: int) -> np.ndarray:
    """Mean posterior of the minority class ``target``: is it really the class? (T, N, C) -> (N,)."""
    probs = _check(probs)
    if not 0 <= target < probs.shape[2]:
        raise ValueError(f"target class {target} outside 0..{probs.shape[2] - 1}")
    return probs[:, :, target].mean(axis=0)


def random(probs: np.ndarray, seed: int = 0) -> np.ndarray:
    """Uniform random scores, reproducible from ``seed``. (T, N, C) -> (N,)."""
    return np.random.default_rng(seed).random(_check(probs).shape[1])


def validity_then_bald(probs: np.ndarray, target: int, threshold: float = 0.5) -> np.ndarray:
    """Two-stage score: valid candidates (mean minority posterior >= threshold) by BALD, then the rest.

    (T, N, C) -> (N,). Lexicographic in one number: a valid candidate scores ``2 + BALD`` (>= 2),
    an invalid one its minority posterior (<= 1), so every valid candidate outranks every invalid
    one and the invalid tail is ordered by how much it looks like the class (the fallback used when
    too few pass). Generated images carry the minority label by construction, so uncertainty alone
    would favour off-class junk; validity first is what keeps a "cat clock" out.
    """
    return _validity_score(target_prob(probs, target), bald(probs), threshold)


def _validity_score(tp: np.ndarray, mi: np.ndarray, threshold: float) -> np.ndarray:
    return np.where(tp >= threshold, 2.0 + mi, tp)


# Per-candidate scores the streaming scorer keeps (one float each); every heuristic reads only these
# (plus EPIG_KEY when the scorer was given the target set).
SUMMARY_KEYS = ("max_entropy", "bald", "variation_ratios", "margin", "target_prob")
EPIG_KEY = "epig"


def summarize(probs: np.ndarray, target: int, target_probs: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """All per-candidate summaries of one batch: probs (T, B, C) -> {key: (B,) float32}.

    With ``target_probs`` (T, M, C) -- the target set under the *same* T samples as ``probs`` -- the
    summary also holds ``"epig"`` (B,).
    """
    out = {
        "max_entropy": max_entropy(probs).astype(np.float32),
        "bald": bald(probs).astype(np.float32),
        "variation_ratios": variation_ratios(probs).astype(np.float32),
        "margin": margin(probs).astype(np.float32),
        "target_prob": target_prob(probs, target).astype(np.float32),
    }
    if target_probs is not None:
        out[EPIG_KEY] = epig(probs, target_probs).astype(np.float32)
    return out


@dataclass(frozen=True)
class BatchPolicy:
    """How a round turns scores into k picks (defaults: today's deterministic top-k).

    stochastic: "none" | "softmax" | "power" | "softrank" sampling with temperature ``1 / beta``;
    diversity: "none" | "k_center" (greedy farthest-point among the top ``spread_factor * k``).
    """

    stochastic: str = "none"
    beta: float = 1.0
    diversity: str = "none"
    spread_factor: int = 4
    seed: int = 0


@dataclass
class RoundPicks:
    """What a heuristic picked in one round: pool positions in pick order, their scores, and notes."""

    indices: np.ndarray
    scores: np.ndarray
    notes: list[str] = field(default_factory=list)


FeatureFn = Callable[[np.ndarray], np.ndarray]  # pool positions (M,) -> features (M, F)


class Heuristic:
    """Base heuristic: score from summaries, pick the top ``k`` available candidates."""

    name = "base"
    key = ""
    needs_targets = False  # True: the scorer must compute EPIG against the target set
    batch = BatchPolicy()

    def compute_score(self, probs: np.ndarray, target: int, target_probs: np.ndarray | None = None) -> np.ndarray:
        """Scores (N,) straight from probs (T, N, C); equals ``score_summary(summarize(probs))``."""
        return self.score_summary(summarize(probs, target, target_probs))

    def score_summary(self, summary: dict[str, np.ndarray]) -> np.ndarray:
        if self.key not in summary:
            raise ValueError(f"acquisition {self.name} needs the summary {self.key!r} (a target set for EPIG)")
        return np.asarray(summary[self.key], dtype=np.float64)

    def get_ranks(self, scores: np.ndarray, available: np.ndarray) -> np.ndarray:
        """Available positions, best first (stable, so ties keep pool order)."""
        idx = np.flatnonzero(available)
        return idx[np.argsort(-scores[idx], kind="stable")]

    def _batch(self, ranked: np.ndarray, scores: np.ndarray, k: int, features_fn: FeatureFn | None) -> np.ndarray:
        """k picks of ``ranked`` (best first) under ``self.batch``: sample an order, then spread it out."""
        b = self.batch
        order = stochastic_order(ranked, scores, b.stochastic, b.beta, b.seed)
        if b.diversity == "none" or features_fn is None or len(order) <= k:
            return order[:k]
        top = order[: b.spread_factor * k]
        return top[k_center(features_fn(top), k)]

    def select(
        self,
        summary: dict[str, np.ndarray],
        available: np.ndarray,
        k: int,
        features_fn: FeatureFn | None = None,
    ) -> RoundPicks:
        scores = self.score_summary(summary)
        chosen = self._batch(self.get_ranks(scores, available), scores, k, features_fn)
        return RoundPicks(chosen, scores[chosen])


class MaxEntropy(Heuristic):
    name = key = "max_entropy"


class Bald(Heuristic):
    name = key = "bald"


class VariationRatios(Heuristic):
    name = key = "variation_ratios"


class Margin(Heuristic):
    name = key = "margin"


class TargetProb(Heuristic):
    name = key = "target_prob"


class Epig(Heuristic):
    """EPIG against the kept real minority images (``epig.py``)."""

    name = key = EPIG_KEY
    needs_targets = True


class Random(Heuristic):
    """Uniform random picks; the seed changes every round so rounds are not correlated."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def score_summary(self, summary: dict[str, np.ndarray]) -> np.ndarray:
        return np.random.default_rng(self.seed).random(len(summary["target_prob"]))


class ValidityThenBald(Heuristic):
    """Threshold on the minority posterior, rank the survivors by BALD, spread the round out.

    The spread step is greedy k-center (farthest-point) over L2-normalised features among the top
    ``spread_factor * k`` valid candidates, seeded with the best one, so one round is not ``k``
    near-copies of the same image. If fewer than ``k`` candidates pass the threshold, every valid one
    is taken and the rest come from the highest-``target_prob`` invalid ones (see ``_fallback``), with a
    note saying so.
    """

    name = "validity_then_bald"
    inner = "bald"  # the summary that ranks the valid candidates

    def __init__(self, threshold: float = 0.5, spread_factor: int = 4) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if spread_factor < 1:
            raise ValueError(f"spread_factor must be >= 1, got {spread_factor}")
        self.threshold = threshold
        self.spread_factor = spread_factor

    def score_summary(self, summary: dict[str, np.ndarray]) -> np.ndarray:
        tp = np.asarray(summary["target_prob"], dtype=np.float64)
        if self.inner not in summary:
            raise ValueError(f"acquisition {self.name} needs the summary {self.inner!r} (a target set for EPIG)")
        mi = np.asarray(summary[self.inner], dtype=np.float64)
        return _validity_score(tp, mi, self.threshold)

    def select(
        self,
        summary: dict[str, np.ndarray],
        available: np.ndarray,
        k: int,
        features_fn: FeatureFn | None = None,
    ) -> RoundPicks:
        scores = self.score_summary(summary)
        ranked = self.get_ranks(scores, available)
        n_valid = int((scores[ranked] >= 2.0).sum())
        if n_valid < k:
            return self._fallback(summary, scores, ranked, n_valid, k, features_fn)
        valid = ranked[:n_valid]
        b = self.batch
        # Stochastic order among the valid ones only (on the inner score), so sampling never lets an
        # invalid candidate in while enough valid ones exist.
        valid = stochastic_order(valid, scores - 2.0, b.stochastic, b.beta, b.seed)
        top = valid[: self.spread_factor * k]
        if features_fn is None or len(top) <= k:
            chosen = top[:k]
        else:
            chosen = top[k_center(features_fn(top), k)]
        return RoundPicks(chosen, scores[chosen])

    def _fallback(
        self,
        summary: dict[str, np.ndarray],
        scores: np.ndarray,
        ranked: np.ndarray,
        n_valid: int,
        k: int,
        features_fn: FeatureFn | None,
    ) -> RoundPicks:
        """Fewer than ``k`` valid candidates: all valid ones, then ``k - n_valid`` of the invalid ones.

        The fill comes from the ``spread_factor`` x as many invalid candidates with the highest minority
        posterior, ordered by the inner score and spread (k-center, the valid picks already placed), so a
        round that falls back does not fill up with near-copies of the one image that looks most like the
        class (measured in ``bench_select.py --evidence``: same precision, fewer near-duplicate pairs).
        """
        valid, rest = ranked[:n_valid], ranked[n_valid:]
        need = min(k - n_valid, len(rest))
        cand = rest[: self.spread_factor * need]
        inner = np.asarray(summary[self.inner], dtype=np.float64)
        cand = cand[np.argsort(-inner[cand], kind="stable")]
        if features_fn is None or len(cand) <= need:
            fill = cand[:need]
        else:
            both = np.concatenate([valid, cand])
            order = k_center(features_fn(both), n_valid + need, fixed=n_valid)
            fill = both[order[n_valid:]]
        chosen = np.concatenate([valid, fill]).astype(np.int64)
        note = (
            f"only {n_valid} of {len(ranked)} candidates have minority posterior >= {self.threshold}; "
            f"{len(fill)} picks fall back to the {len(cand)} highest minority posteriors, ranked by {self.inner}"
            + (" and spread out" if features_fn is not None and len(cand) > need else "")
        )
        return RoundPicks(chosen, scores[chosen], [note])


class ValidityThenEpig(ValidityThenBald):
    """``validity_then_bald`` with EPIG instead of BALD ranking the valid candidates."""

    name = "validity_then_epig"
    inner = EPIG_KEY
    needs_targets = True


def k_center(features: np.ndarray, k: int, fixed: int = 0) -> np.ndarray:
    """Greedy farthest-point order over L2-normalised rows. features (M, F) -> row indices (min(k, M),).

    Starts from rows ``0 .. fixed-1`` (always chosen; row 0 alone when ``fixed`` is 0, as the caller passes
    rows best-first), then repeatedly adds the row whose nearest already-chosen row is farthest away
    (Gonzalez 1985, a 2-approximation of k-center).
    """
    x = np.asarray(features, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), EPS)
    m = len(x)
    k = min(k, m)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    chosen = list(range(max(min(fixed, k), 1)))
    dist = np.full(m, np.inf)
    for c in chosen:
        dist = np.minimum(dist, np.linalg.norm(x - x[c], axis=1))
    dist[chosen] = -1.0  # exact copies are at distance 0 too: a chosen row must never be chosen again
    while len(chosen) < k:
        nxt = int(np.argmax(dist))  # argmax takes the first, i.e. better-ranked, row on ties
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(x - x[nxt], axis=1))
        dist[nxt] = -1.0
    return np.asarray(chosen, dtype=np.int64)


ACQUISITIONS: dict[str, Callable[..., Heuristic]] = {
    "max_entropy": MaxEntropy,
    "bald": Bald,
    "variation_ratios": VariationRatios,
    "margin": Margin,
    "target_prob": TargetProb,
    "random": Random,
    "validity_then_bald": ValidityThenBald,
    "epig": Epig,
    "validity_then_epig": ValidityThenEpig,
}


def get_heuristic(
    name: str,
    *,
    seed: int = 0,
    threshold: float = 0.5,
    spread_factor: int = 4,
    stochastic: str = "none",
    beta: float = 1.0,
    diversity: str = "none",
) -> Heuristic:
    """Build the heuristic called ``name``; raises ValueError naming ``acquisition`` if unknown."""
    if name not in ACQUISITIONS:
        raise ValueError(f"acquisition must be one of {sorted(ACQUISITIONS)}, got {name!r}")
    if name == "random":
        h: Heuristic = Random(seed)
    elif name in ("validity_then_bald", "validity_then_epig"):
        h = ACQUISITIONS[name](threshold, spread_factor)
    else:
        h = ACQUISITIONS[name]()
    # The sampling seed differs from random's so "random" + stochastic is not the same draw twice.
    h.batch = BatchPolicy(stochastic, beta, diversity, spread_factor, seed + 7919)
    return h
