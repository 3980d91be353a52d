"""Expected predictive information gain (EPIG, Bickford Smith et al. 2023) from MC-dropout samples.

EPIG(x) = E_{x* ~ targets} I(y; y* | x, x*): how much labelling candidate x would tell about the
classifier's prediction on a target input x* -- here the kept real minority images, so a candidate
scores high when it informs what the model says about the real minority, not just when the model is
unsure about it (BALD). With T posterior samples theta_t (shared dropout masks):

    p(y, y*)   = 1/T sum_t p(y | x, theta_t) p(y* | x*, theta_t)          (C, C) per (x, x*)
    I(y; y*)   = KL[ p(y, y*) || p(y) p(y*) ]

The samples must be the *same* theta_t for candidate and target (``scoring.shared_mask_probs``);
with independent masks per image the joint factorises and EPIG is 0 everywhere.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def epig(probs: np.ndarray, target_probs: np.ndarray, chunk: int = 64) -> np.ndarray:
    """EPIG in nats of each candidate, averaged over the target set. Memory-flat in N.

    probs (T, N, C): candidates; target_probs (T, M, C): the fixed target set under the same T samples.
    Returns (N,) float64 >= 0. Candidates are processed ``chunk`` at a time, so the largest temporary
    is the (chunk, M, C, C) joint, whatever N.
    """
    p = np.asarray(probs, dtype=np.float64)
    q = np.asarray(target_probs, dtype=np.float64)
    if p.ndim != 3 or q.ndim != 3 or p.shape[0] != q.shape[0] or p.shape[2] != q.shape[2]:
        raise ValueError(f"probs (T, N, C) and target_probs (T, M, C) must agree on T and C: {p.shape}, {q.shape}")
    t = p.shape[0]
    q_marg = q.mean(axis=0)  # (M, C)
    out = np.empty(p.shape[1], dtype=np.float64)
    for s in range(0, p.shape[1], chunk):
        pc = p[:, s : s + chunk]  # (T, B, C)
        joint = np.einsum("tbc,tmd->bmcd", pc, q) / t  # (B, M, C, C)
        indep = pc.mean(axis=0)[:, None, :, None] * q_marg[None, :, None, :]  # (B, M, C, C)
        kl = (joint * (np.log(np.maximum(joint, EPS)) - np.log(np.maximum(indep, EPS)))).sum(axis=(2, 3))
        out[s : s + chunk] = np.maximum(kl, 0.0).mean(axis=1)  # rounding can make a zero MI slightly negative
    return out
