"""A classifier two-sample test: can a small classifier tell generated images from real ones of one class?

Adversarial validation (Lopez-Paz & Oquab 2017, "Revisiting classifier two-sample tests"): train a classifier
to separate real images of a class from generated images of the same class and measure, on images it did not
train on, the area under its ROC curve -- ``domain_auc``: 0.5 = it cannot tell them apart, 1.0 = it always
can. The class is held fixed on both sides: against a mix of classes, real images of one class would stand out
merely for being that class.

The classifier is logistic regression on standardised pixels at most ``SIDE`` x ``SIDE``. Measured on the digits
(200 generated 3s vs 64 real 3s): 0.955 for this, 0.775 for a small CNN trained briefly, 0.45-0.50 for real
vs real -- with few real images a linear model on pixels separates best. Two-fold: fit on one half of each side,
score the other half, swap, average; never scored on the images it was fit on.

Why it matters: a pool a classifier tells apart teaches "looks generated = this class" when only one class
gets such images (measured: 0 % minority accuracy for a minority-only diffusion pool on the digits, against
oversampling's 46 %). ``FLAG_AT`` marks such pools.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

SIDE = 16  # pixels per side the images are reduced to (area averaging) before the classifier sees them
MAX_PER_SIDE = 1000  # images per side the test uses at most (drawn with the seed)
MIN_PER_SIDE = 20  # real (and generated) images a class needs: two held-out halves of at least 10
FLAG_AT = 0.9  # domain_auc at or above this flags a pool


def pixel_features(images: np.ndarray, side: int = SIDE) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3 * s * s) in 0-1, reduced by area averaging to at most ``side``."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    h, w = x.shape[-2:]
    if max(h, w) > side:
        x = F.adaptive_avg_pool2d(x, (min(h, side), min(w, side)))
    return x.reshape(len(x), -1).numpy()


def _halves(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    return perm[: n // 2], perm[n // 2 :]


def domain_auc(real: np.ndarray, fake: np.ndarray, seed: int = 0) -> float:
    """Held-out ROC AUC of logistic regression separating ``fake`` (positive) from ``real`` (uint8 NHWC of the
    same size and class), two-fold. Raises ValueError when either side has fewer than ``MIN_PER_SIDE``."""
    if len(real) < MIN_PER_SIDE or len(fake) < MIN_PER_SIDE:
        raise ValueError(f"needs {MIN_PER_SIDE}+ images on each side, got {len(real)} real and {len(fake)} generated")
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real images are {real.shape[1:]}, generated ones {fake.shape[1:]}")
    rng = np.random.default_rng(seed)
    if len(real) > MAX_PER_SIDE:
        real = real[np.sort(rng.choice(len(real), MAX_PER_SIDE, replace=False))]
    if len(fake) > MAX_PER_SIDE:
        fake = fake[np.sort(rng.choice(len(fake), MAX_PER_SIDE, replace=False))]
    # scikit-learn costs a second to import: only the jobs that run this test pay it.
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    xr, xf = pixel_features(real), pixel_features(fake)
    r_halves, f_halves = _halves(len(xr), rng), _halves(len(xf), rng)
    aucs = []
    for fit_half, test_half in ((0, 1), (1, 0)):
        x_fit = np.concatenate([xr[r_halves[fit_half]], xf[f_halves[fit_half]]])
        y_fit = np.r_[np.zeros(len(r_halves[fit_half])), np.ones(len(f_halves[fit_half]))]
        x_test = np.concatenate([xr[r_halves[test_half]], xf[f_halves[test_half]]])
        y_test = np.r_[np.zeros(len(r_halves[test_half])), np.ones(len(f_halves[test_half]))]
        scaler = StandardScaler().fit(x_fit)
        clf = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced")
        clf.fit(scaler.transform(x_fit), y_fit)
        aucs.append(roc_auc_score(y_test, clf.decision_function(scaler.transform(x_test))))
    return float(np.mean(aucs))


def assessment(
    auc: float | None,
    method: str,
    n_real: int,
    n_synthetic: int,
    label: str,
    per_class: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The stored verdict of a pool: ``{domain_auc, method, n_real, n_synthetic, flagged, reason, ...}``.

    method: ``same_class`` (the pool against real images of its class), ``generator_other_classes`` (the
    pool's class has too few real images; the same generator's samples of other classes against their real
    images stand in for it, mean AUC), or ``untestable``."""
    out: dict[str, Any] = {
        "domain_auc": None if auc is None else round(auc, 4),
        "method": method,
        "n_real": n_real,
        "n_synthetic": n_synthetic,
        "label": label,
        "flag_at": FLAG_AT,
    }
    if per_class:
        out["per_class"] = {c: round(a, 4) for c, a in per_class.items()}
    if auc is None:
        out["flagged"] = None
        out["reason"] = (
            f"cannot be tested: fewer than {MIN_PER_SIDE} real images of {label!r} and no samples of other classes "
            "from the same generator; a synthetic set of the minority alone risks teaching 'looks generated = "
            f"{label}' -- use the every-class recipe (samples of every class, each labelled) on the oversampled set"
        )
        return out
    how = "real images of the class" if method == "same_class" else "the same generator's samples of other classes"
    out["flagged"] = auc >= FLAG_AT
    if out["flagged"]:
        out["reason"] = (
            f"a classifier tells these images from real ones (AUC {auc:.2f} >= {FLAG_AT}, measured against {how}): "
            f"added to {label!r} alone they teach 'looks generated = {label}'. Remedy: the every-class recipe "
            "(samples of every class, each labelled with it) on the oversampled set (base: oversample)"
        )
    else:
        out["reason"] = f"AUC {auc:.2f} < {FLAG_AT} (measured against {how})"
    return out
