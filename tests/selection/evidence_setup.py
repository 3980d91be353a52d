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
from backend.selection.loop import SelectionConfig, run_selection
from backend.selection.train import train_classifier

OTHERS = ["airplane", "automobile", "dog", "horse"]  # two easy vehicles, two animals (dog is cat's confuser)
ACQUISITION_NAMES = ["target_prob", "validity_then_bald", "bald", "max_entropy", "variation_ratios", "margin", "random"]
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


_MODELS: dict[tuple[str, int], Any] = {}


def cached_train(x: np.ndarray, y: np.ndarray, *, seed: int, **kw: Any) -> Any:
    """The default trainer, memoised on (data, seed): every acquisition shares round 0's classifier
    (same data, same seed, so the same weights) instead of training it again."""
    key = (hashlib.sha1(x.tobytes() + y.tobytes()).hexdigest(), seed)
    if key not in _MODELS:
        _MODELS[key] = train_classifier(x, y, seed=seed, **kw)
    return _MODELS[key]


def run_evidence(data: EvidenceData, acquisition: str, device: str = "cpu") -> tuple[float, list[float]]:
    """Real-cat share of all picks and of each round's picks."""
    cfg = SelectionConfig(acquisition=acquisition, device=device, **SETTINGS)
    ids = list(range(len(data.pool_x)))
    result = run_selection(data.real_x, data.real_y, data.cat_label, data.pool_x, ids, cfg, train_fn=cached_train)
    idx = np.array([p["index"] for p in result.picks])
    rounds = [float(data.pool_is_cat[idx[r * cfg.per_round : (r + 1) * cfg.per_round]].mean()) for r in range(2)]
    return float(data.pool_is_cat[idx].mean()), rounds
