"""The real-data selection experiment shared by test_evidence.py and ``bench_select.py --evidence``.

Training set: 300 CIFAR-10 train images each of airplane, automobile, dog, horse, plus the 50 cats an
imbalance spec ``{"minority": "cat", "keep": 50}`` keeps out of 350. Candidates: the 300 cats that spec
removed + 75 further images of each other class (none in the training set). 150 picks; a picker that
ignores the images gets ~50% real cats.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from backend.data.imbalance import apply_imbalance
from backend.data.transforms import channel_stats
from backend.selection.batch import near_duplicate_share, pair_distances
from backend.selection.loop import SelectionConfig, run_selection
from backend.selection.scoring import extract_features
from backend.selection.train import train_classifier

OTHERS = ["airplane", "automobile", "dog", "horse"]  # two easy vehicles, two animals (dog is cat's confuser)
ACQUISITION_NAMES = [
    "target_prob",
    "epig",
    "validity_then_epig",
    "validity_then_bald",
    "bald",
    "max_entropy",
    "variation_ratios",
    "margin",
    "random",
]
SETTINGS = dict(budget=150, per_round=75, epochs=12, batch_size=64, lr=0.4, mc_samples=20, map_real=300, map_pool=300)


@dataclass
class EvidenceData:
    real_x: np.ndarray
    real_y: np.ndarray
    pool_x: np.ndarray
    pool_is_cat: np.ndarray
    cat_label: int


def _load(root: Path, cls: str, idx: range | np.ndarray) -> np.ndarray:
    return np.stack([np.asarray(Image.open(root / "train" / cls / f"{i:04d}.jpg").convert("RGB")) for i in idx])


def load_evidence_data(cifar10_root: Path) -> EvidenceData:
    classes = [*OTHERS, "cat"]
    cat = classes.index("cat")
    cats = _load(cifar10_root, "cat", range(350))
    imb = apply_imbalance(np.full(350, cat), classes, {"minority": "cat", "keep": 50, "seed": 0})
    real_x = np.concatenate([_load(cifar10_root, c, range(300)) for c in OTHERS] + [cats[imb.kept_idx]])
    real_y = np.concatenate([np.full(300, i) for i in range(len(OTHERS))] + [np.full(50, cat)])
    others = [_load(cifar10_root, c, range(300, 375)) for c in OTHERS]
    pool_x = np.concatenate([cats[imb.removed_idx], *others])
    is_cat = np.arange(len(pool_x)) < len(imb.removed_idx)
    return EvidenceData(real_x, real_y.astype(np.int64), pool_x, is_cat, cat)


def with_near_copies(data: EvidenceData, groups: int = 60, copies: int = 3, seed: int = 0) -> EvidenceData:
    """The pool plus ``copies`` near-copies (1-pixel shift, Gaussian noise sigma 4) of ``groups`` random
    cats and ``groups`` random others: what a generator's pool looks like, where top-k picks a whole
    family of near-identical images at once. The cat share of the pool stays 50%."""
    rng = np.random.default_rng(seed)
    cats, others = np.flatnonzero(data.pool_is_cat), np.flatnonzero(~data.pool_is_cat)
    src = np.concatenate([rng.choice(cats, groups, replace=False), rng.choice(others, groups, replace=False)])
    extra = []
    for _ in range(copies):
        x = np.roll(data.pool_x[src], rng.integers(-1, 2, size=2), axis=(1, 2)).astype(np.float32)
        extra.append(np.clip(x + rng.normal(0, 4, size=x.shape), 0, 255).astype(np.uint8))
    pool_x = np.concatenate([data.pool_x, *extra])
    is_cat = np.concatenate([data.pool_is_cat, np.tile(data.pool_is_cat[src], copies)])
    return EvidenceData(data.real_x, data.real_y, pool_x, is_cat, data.cat_label)


_MODELS: dict[tuple[str, int], Any] = {}


def cached_train(x: np.ndarray, y: np.ndarray, *, seed: int, **kw: Any) -> Any:
    """The default trainer, memoised on (data, seed): every acquisition shares round 0's classifier
    (same data, same seed, so the same weights) instead of training it again."""
    key = (hashlib.sha1(x.tobytes() + y.tobytes()).hexdigest(), seed)
    if key not in _MODELS:
        _MODELS[key] = train_classifier(x, y, seed=seed, **kw)
    return _MODELS[key]


def run_picks(data: EvidenceData, acquisition: str, device: str = "cpu", **knobs: Any) -> np.ndarray:
    """Pool positions (150,) of the picks, in pick order; ``knobs`` overlay the ``SelectionSpec``."""
    cfg = SelectionConfig(acquisition=acquisition, device=device, **{**SETTINGS, **knobs})
    ids = list(range(len(data.pool_x)))
    result = run_selection(data.real_x, data.real_y, data.cat_label, data.pool_x, ids, cfg, train_fn=cached_train)
    return np.array([p["index"] for p in result.picks])


def run_evidence(data: EvidenceData, acquisition: str, device: str = "cpu", **knobs: Any) -> tuple[float, list[float]]:
    """Real-cat share of all picks and of each round's picks."""
    idx = run_picks(data, acquisition, device, **knobs)
    per = SETTINGS["per_round"]
    rounds = [float(data.pool_is_cat[idx[r * per : (r + 1) * per]].mean()) for r in range(2)]
    return float(data.pool_is_cat[idx].mean()), rounds


@dataclass
class DuplicateRuler:
    """A fixed feature space to count near-duplicate pick pairs in: round 0's classifier (trained on the
    real set only, the same for every acquisition), features centred on the pool mean. Two picks are
    near-duplicates when closer than the ``quantile`` of all pool pairs' distances (1%: a picker that
    ignores the images has ~1% near-duplicate pairs)."""

    features: np.ndarray  # (N_pool, F)
    center: np.ndarray  # (F,)
    threshold: float

    def share(self, idx: np.ndarray) -> float:
        return near_duplicate_share(self.features[idx], self.threshold, self.center)


def duplicate_ruler(data: EvidenceData, quantile: float = 0.01, device: str = "cpu") -> DuplicateRuler:
    cfg = SelectionConfig(device=device, **SETTINGS)
    mean, std = (v.tolist() for v in channel_stats(data.real_x))
    model = cached_train(
        data.real_x, data.real_y, seed=cfg.seed * 1000, num_classes=5, mean=mean, std=std, config=cfg,
        should_stop=lambda: False,
    )  # fmt: skip
    feats = extract_features(model, data.pool_x, mean, std, device=device)
    center = feats.mean(axis=0)
    return DuplicateRuler(feats, center, float(np.quantile(pair_distances(feats, center), quantile)))
