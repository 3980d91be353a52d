"""Batch-aware picks: stochastic batch acquisition and the near-duplicate measure of a round.

Top-k of a per-candidate score spends a round on the k best-scoring images, which for a generator's
pool are often near-copies of each other (scores are smooth in feature space). Kirsch et al. (2023)
instead *sample* k candidates without replacement with probabilities from the scores:

- ``softmax``:  p_i ~ exp(beta * s_i)
- ``power``:    p_i ~ s_i ** beta  (scores shifted to be >= 0 first)
- ``softrank``: p_i ~ rank_i ** -beta  (only the order matters, so the score scale does not)

Sampling without replacement is done with the Gumbel-top-k trick: the k largest ``log p_i + G_i``
(G_i ~ Gumbel(0, 1)) are a draw of k items without replacement (Kool et al. 2019).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

EPS = 1e-12
Stochastic = Literal["none", "softmax", "power", "softrank"]
STOCHASTIC: tuple[str, ...] = ("none", "softmax", "power", "softrank")


def sampling_logits(scores: np.ndarray, mode: str, beta: float) -> np.ndarray:
    """Log-probabilities (up to a constant) of each candidate. scores (M,) in rank order (best first)."""
    s = np.asarray(scores, dtype=np.float64)
    if mode == "softmax":
        return beta * s
    if mode == "power":
        return beta * np.log(np.maximum(s - min(0.0, float(s.min(initial=0.0))), EPS))
    if mode == "softrank":
        return -beta * np.log(np.arange(1, len(s) + 1, dtype=np.float64))
    raise ValueError(f"stochastic must be one of {STOCHASTIC}, got {mode!r}")


def stochastic_order(ranked: np.ndarray, scores: np.ndarray, mode: str, beta: float, seed: int) -> np.ndarray:
    """Re-order ``ranked`` (M,) pool positions (best first) by one Gumbel-top-M draw; ``scores`` is the
    full (N,) score array. ``mode == "none"`` returns ``ranked`` unchanged."""
    ranked = np.asarray(ranked, dtype=np.int64)
    if mode == "none" or len(ranked) < 2:
        return ranked
    logits = sampling_logits(np.asarray(scores, dtype=np.float64)[ranked], mode, beta)
    keys = logits + np.random.default_rng(seed).gumbel(size=len(ranked))
    return ranked[np.argsort(-keys, kind="stable")]


def pair_distances(features: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    """Cosine distances (1 - cos) of all unordered row pairs, centred first. features (M, F) -> (M(M-1)/2,)."""
    x = np.asarray(features, dtype=np.float64)
    if center is not None:
        x = x - np.asarray(center, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), EPS)
    iu = np.triu_indices(len(x), k=1)
    return 1.0 - (x @ x.T)[iu]


def near_duplicate_share(features: np.ndarray, threshold: float, center: np.ndarray | None = None) -> float:
    """Share of pick pairs closer than ``threshold`` (centred cosine distance). features (M, F) -> [0, 1]."""
    d = pair_distances(features, center)
    return float((d <= threshold).mean()) if len(d) else 0.0
