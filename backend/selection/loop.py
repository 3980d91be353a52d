"""The active-learning loop of the study (Gal et al. 2017 as used there), one checkpointed round at a time.

Round r: train an MC-dropout classifier on the real (imbalanced) set plus every pick so far (labelled
as the minority class), score every unpicked candidate with T stochastic head passes, add the top
``per_round`` by the acquisition function, repeat until ``budget`` picks. After each round
``on_round_end(r, state)`` receives a JSON-able state (picks so far, round summaries); passing that
state back as ``state=`` resumes at the next round, so a crash loses at most the round in flight.
Training and scoring are seeded per round, so a resumed run picks what an uninterrupted one would.

The last round also finishes the selection with that round's model: a ranked reserve of unpicked
candidates (to replace rejected picks), near-copy distances of picks and reserve to the real
training images (``review.py``), and the 2-D feature map (``featuremap.py``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, model_validator

from backend.core.hooks import Stopped
from backend.core.types import Seed
from backend.data.transforms import channel_stats
from backend.selection.acquisition import ACQUISITIONS, get_heuristic
from backend.selection.batch import STOCHASTIC
from backend.selection.featuremap import build_feature_map, subsample
from backend.selection.quality import class_panels, quality_panel
from backend.selection.review import DEFAULT_NEAR_COPY_THRESHOLD, nearest_distances
from backend.selection.scoring import ImageSource, extract_features, score_pool
from backend.training.models import ModelName
from backend.training.trainer import BatchSize, Epochs, LearningRate, LossName

Progress = Callable[..., None]
STATE_VERSION = 1


AcquisitionName = Literal[tuple(ACQUISITIONS)]  # type: ignore[valid-type]
StochasticName = Literal[tuple(STOCHASTIC)]  # type: ignore[valid-type]


class SelectionSpec(BaseModel):
    """The user's knobs of a selection run, each with its default, limit and meaning: their one home
    (the ``select`` job params extend this; the experiment config's ``selection`` section overlays them)."""

    model_config = ConfigDict(extra="forbid")

    budget: int = Field(
        4950, ge=1, le=1_000_000, description="picks in total (the study: 4,950, so 50 real + picks = 5,000)"
    )
    per_round: int = Field(50, ge=1, le=100_000, description="picks added per round (the study: 50)")
    acquisition: AcquisitionName = Field("validity_then_bald", description="how candidates are ranked")
    threshold: float = Field(0.5, ge=0, le=1, description="validity_then_bald: minimum mean minority posterior")
    spread_factor: int = Field(
        4,
        ge=1,
        le=100,
        description="k-center over the top factor x per_round (validity_then_*: always; others: diversity)",
    )
    stochastic: StochasticName = Field(
        "none",
        description="batch acquisition: sample each round from the scores (softmax, power, softrank) "
        "instead of taking the top per_round (Kirsch et al. 2023); none = top-k",
    )
    beta: float = Field(1.0, gt=0, le=1000, description="stochastic: inverse temperature (higher = closer to top-k)")
    diversity: Literal["none", "k_center"] = Field(
        "none", description="k_center: spread each round over the top spread_factor x per_round in feature space"
    )
    epig_targets: int = Field(
        256, ge=1, le=10_000, description="epig: kept real minority images used as the target set (subsampled)"
    )
    mc_samples: int = Field(20, ge=1, le=1000, description="T stochastic MC-dropout head passes")
    model: ModelName = Field("small", description="round classifier")
    dropout: float = Field(0.5, gt=0, lt=1, description="head dropout of the MC-dropout classifier")
    epochs: Epochs = Field(5, description="classifier epochs per round")
    batch_size: BatchSize = 256
    lr: LearningRate = 0.1
    # class_weighted by default: with 50 minority images among thousands a plain cross-entropy model almost
    # never gives the minority a posterior >= 0.5 (0 of 600 candidates in the evidence test).
    loss: LossName = Field("class_weighted", description="round classifier loss")
    seed: Seed = Field(0, description="training, dropout masks and random picks")
    score_batch_size: int = Field(512, ge=1, le=65_536, description="pool images per scoring batch (memory: one)")
    reserve: int | None = Field(None, ge=0, le=1_000_000, description="ranked replacements kept (default per_round)")
    near_copy_threshold: float = Field(
        DEFAULT_NEAR_COPY_THRESHOLD, ge=0, le=2, description="cosine distance under which a pick is a near-copy"
    )
    quality_k: int = Field(5, ge=1, le=100, description="quality panel: k of the k-NN radii (precision/recall...)")

    @model_validator(mode="after")
    def _rounds(self) -> SelectionSpec:
        if self.per_round > self.budget:
            raise ValueError("per_round must not exceed budget")
        return self


class SelectionConfig(SelectionSpec):
    """A run's whole configuration: the user's knobs plus what the caller decides (stored with the result)."""

    device: str = "cpu"
    num_classes: int | None = None  # default: max(real_y) + 1
    map_real: int = Field(2000, ge=1)  # feature map: real training images shown (subsampled)
    map_pool: int = Field(2000, ge=1)  # feature map: pool candidates shown (subsampled)
    quality_real: int = Field(1000, ge=2)  # quality panel: real images per class (subsampled)
    quality_pool: int = Field(2000, ge=2)  # quality panel: pool candidates (subsampled)
    mean: list[float] | None = None  # normalisation (0-1 units); default: channel stats of real_x
    std: list[float] | None = None

    def validate(self, pool_size: int) -> None:
        """Raise ValueError when the pools cannot fill the budget."""
        if self.budget > pool_size:
            raise ValueError(f"budget {self.budget} exceeds the {pool_size} candidates in the pools")


class TrainFn(Protocol):
    """Trains a classifier with the ``features``/``head`` contract on uint8 NHWC images."""

    def __call__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        config: SelectionConfig,
        seed: int,
        should_stop: Callable[[], bool],
    ) -> nn.Module: ...


@dataclass
class SelectionResult:
    """Picks in order (dicts: index, image_id, rank, round, score, minority_prob, near_copy, nn_distance),
    per-round summaries, the ranked reserve, the feature map, and the final state."""

    picks: list[dict[str, Any]]
    rounds: list[dict[str, Any]]
    reserve: list[dict[str, Any]] = field(default_factory=list)
    feature_map: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False


def _training_set(
    real_x: np.ndarray, real_y: np.ndarray, pool_x: ImageSource, picked: list[int], minority: int
) -> tuple[np.ndarray, np.ndarray]:
    if not picked:
        return np.asarray(real_x), np.asarray(real_y, dtype=np.int64)
    order = np.sort(np.asarray(picked, dtype=np.int64))  # sorted: sequential reads from a file-backed pool
    extra = np.asarray(pool_x[order])
    x = np.concatenate([np.asarray(real_x), extra])
    y = np.concatenate([np.asarray(real_y, dtype=np.int64), np.full(len(extra), minority, dtype=np.int64)])
    return x, y


def _finish(
    model: nn.Module,
    ranked: np.ndarray,
    real_x: np.ndarray,
    real_y: np.ndarray,
    pool_x: ImageSource,
    pool_ids: Sequence[Any],
    state: dict[str, Any],
    summary: dict[str, np.ndarray],
    scores: np.ndarray,
    cfg: SelectionConfig,
    mean: Sequence[float],
    std: Sequence[float],
    class_names: Sequence[str] | None,
    minority_label: int,
) -> None:
    """Reserve, near-copy distances, quality panel and feature map with the last round's model (writes
    into state)."""
    kw = {"device": cfg.device, "batch_size": cfg.score_batch_size}
    reserve_n = cfg.per_round if cfg.reserve is None else cfg.reserve
    reserve_idx = ranked[:reserve_n]
    state["reserve"] = [
        {
            "index": int(i),
            "image_id": pool_ids[int(i)],
            "score": float(scores[i]),
            "minority_prob": float(summary["target_prob"][i]),
        }
        for i in reserve_idx
    ]
    pick_idx = np.asarray([p["index"] for p in state["picks"]], dtype=np.int64)
    query_idx = np.concatenate([pick_idx, reserve_idx]).astype(np.int64)
    query = extract_features(model, pool_x, mean, std, indices=query_idx, **kw)
    real_idx = subsample(len(real_x), cfg.map_real, cfg.seed)
    real_feats = extract_features(model, real_x, mean, std, indices=real_idx, **kw)
    real_batches = (
        extract_features(model, real_x, mean, std, indices=np.arange(s, min(s + 4096, len(real_x))), **kw)
        for s in range(0, len(real_x), 4096)
    )
    dist, nn_idx = nearest_distances(query, real_batches, center=real_feats.mean(axis=0))
    for item, d, j in zip(state["picks"] + state["reserve"], dist, nn_idx, strict=True):
        item["nn_distance"] = float(d)
        item["nn_real_index"] = int(j)
        item["near_copy"] = bool(d <= cfg.near_copy_threshold)

    pool_idx = subsample(len(pool_x), cfg.map_pool, cfg.seed + 1)
    names = list(class_names) if class_names is not None else None
    real_labels = [names[int(c)] if names else int(c) for c in np.asarray(real_y)[real_idx]]
    picks_feats = query[: len(pick_idx)]
    state["quality"] = _quality(model, real_x, real_y, pool_x, picks_feats, cfg, mean, std, names, minority_label)
    state["feature_map"] = build_feature_map(
        {
            "real": real_feats,
            "pool": extract_features(model, pool_x, mean, std, indices=pool_idx, **kw),
            "picks": query[: len(pick_idx)],
        },
        labels={
            "real": real_labels,
            "pool": [pool_ids[int(i)] for i in pool_idx],
            "picks": [p["image_id"] for p in state["picks"]],
        },
        fit_groups=("real", "pool"),
    )
    state["done"] = True


def _quality(
    model: nn.Module,
    real_x: np.ndarray,
    real_y: np.ndarray,
    pool_x: ImageSource,
    pick_feats: np.ndarray,
    cfg: SelectionConfig,
    mean: Sequence[float],
    std: Sequence[float],
    names: list[str] | None,
    minority_label: int,
) -> dict[str, Any]:
    """Quality panel (``quality.py``) of the pool against each class's real images, and of the picks
    against the kept real minority images: {"pool": {class: panel}, "picks": panel | None, "target"}."""
    kw = {"device": cfg.device, "batch_size": cfg.score_batch_size}
    y = np.asarray(real_y)
    num = max(int(y.max()), minority_label) + 1
    names = names or [str(c) for c in range(num)]
    per_class = [np.flatnonzero(y == c) for c in range(num)]
    idx = np.concatenate([ids[subsample(len(ids), cfg.quality_real, cfg.seed)] for ids in per_class])
    real = extract_features(model, real_x, mean, std, indices=idx, **kw)
    pool_idx = subsample(len(pool_x), cfg.quality_pool, cfg.seed + 2)
    pool = extract_features(model, pool_x, mean, std, indices=pool_idx, **kw)
    labels = y[idx]
    minority = real[labels == minority_label]
    ok = len(minority) >= 2 and len(pick_feats) >= 2
    return {
        "target": names[minority_label],
        "pool": class_panels(real, labels, pool, names, cfg.quality_k, seed=cfg.seed) if len(pool) >= 2 else {},
        "picks": quality_panel(minority, pick_feats, cfg.quality_k, seed=cfg.seed) if ok else None,
    }


def run_selection(
    real_x: np.ndarray,
    real_y: np.ndarray,
    minority_label: int,
    pool_x: ImageSource,
    pool_ids: Sequence[Any],
    config: SelectionConfig,
    *,
    train_fn: TrainFn | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    state: dict[str, Any] | None = None,
    on_round_end: Callable[[int, dict[str, Any]], None] | None = None,
    class_names: Sequence[str] | None = None,
) -> SelectionResult:
    """Pick ``config.budget`` candidates of ``pool_x`` (uint8 NHWC, ids ``pool_ids``) for ``minority_label``.

    real_x uint8 (N, H, W, 3) and real_y (N,) are the imbalanced training set; picks are appended to
    it labelled ``minority_label``. ``train_fn`` defaults to ``backend.selection.train.train_classifier``.
    Returns with ``stopped=True`` (and the state of the last finished round) if ``should_stop()``
    turns True; the caller resumes by passing that state back.
    """
    if len(pool_ids) != len(pool_x):
        raise ValueError(f"pool_ids has {len(pool_ids)} entries for {len(pool_x)} pool images")
    if len(real_x) != len(real_y) or len(real_x) == 0:
        raise ValueError("real_x and real_y must be non-empty and of equal length")
    config.validate(len(pool_x))
    pool_ids = np.asarray(pool_ids).tolist()  # plain Python ids: the state must be JSON-able
    if train_fn is None:
        from backend.selection.train import train_classifier

        train_fn = train_classifier
    stop = should_stop or (lambda: False)
    report = progress or (lambda fraction, message=None: None)
    num_classes = config.num_classes or int(max(int(np.max(real_y)), minority_label)) + 1
    if not 0 <= minority_label < num_classes:
        raise ValueError(f"minority label {minority_label} outside 0..{num_classes - 1}")
    if config.mean is None or config.std is None:
        mean, std = (v.tolist() for v in channel_stats(np.asarray(real_x)))
    else:
        mean, std = config.mean, config.std

    state = copy.deepcopy(state) if state else {}
    if state.get("version", STATE_VERSION) != STATE_VERSION:
        raise ValueError(f"selection state version {state.get('version')} is not {STATE_VERSION}")
    state.setdefault("version", STATE_VERSION)
    state.setdefault("picks", [])
    state.setdefault("rounds", [])
    state.setdefault("done", False)
    n_rounds = math.ceil(config.budget / config.per_round)
    # EPIG's target set: the kept real minority images (fixed over the rounds; picks are not targets).
    minority_idx = np.flatnonzero(np.asarray(real_y) == minority_label)
    targets = np.asarray(real_x)[minority_idx[subsample(len(minority_idx), config.epig_targets, config.seed)]]
    if len(targets) == 0 and ACQUISITIONS[config.acquisition].needs_targets:
        raise ValueError(f"acquisition {config.acquisition} needs kept real images of the minority class")

    while not state["done"]:
        r = len(state["rounds"])
        if stop():
            return _result(state, stopped=True)
        picked = [p["index"] for p in state["picks"]]
        k = min(config.per_round, config.budget - len(picked))

        def sub(lo: float, hi: float, _r: int = r) -> Callable[..., None]:
            return lambda f, m=None: report((_r + lo + (hi - lo) * f) / n_rounds, f"round {_r + 1}/{n_rounds}: {m}")

        heuristic = get_heuristic(
            config.acquisition,
            seed=config.seed * 1000 + r,
            threshold=config.threshold,
            spread_factor=config.spread_factor,
            stochastic=config.stochastic,
            beta=config.beta,
            diversity=config.diversity,
        )
        t0 = time.perf_counter()
        try:
            x, y = _training_set(real_x, real_y, pool_x, picked, minority_label)
            sub(0.0, 0.5)(0.0, f"training on {len(x)} images")
            model = train_fn(
                x,
                y,
                num_classes=num_classes,
                mean=mean,
                std=std,
                config=config,
                seed=config.seed * 1000 + r,
                should_stop=stop,
            )
            del x, y
            t1 = time.perf_counter()
            summary = score_pool(
                model,
                pool_x,
                mean,
                std,
                target=minority_label,
                mc_samples=config.mc_samples,
                device=config.device,
                batch_size=config.score_batch_size,
                seed=config.seed * 1000 + r,
                progress=sub(0.5, 0.9),
                should_stop=stop,
                targets=targets if heuristic.needs_targets else None,
            )
        except Stopped:  # scoring's or the round trainer's stop
            return _result(state, stopped=True)
        t2 = time.perf_counter()

        available = np.ones(len(pool_x), dtype=bool)
        available[picked] = False

        def features_fn(idx: np.ndarray, _m: nn.Module = model) -> np.ndarray:
            return extract_features(
                _m, pool_x, mean, std, indices=idx, device=config.device, batch_size=config.score_batch_size
            )

        chosen = heuristic.select(summary, available, k, features_fn)
        tp = summary["target_prob"]
        for i, s in zip(chosen.indices, chosen.scores, strict=True):
            state["picks"].append(
                {
                    "index": int(i),
                    "image_id": pool_ids[int(i)],
                    "rank": len(state["picks"]),
                    "round": r,
                    "score": float(s),
                    "minority_prob": float(tp[i]),
                }
            )
        picked_tp = tp[chosen.indices]
        state["rounds"].append(
            {
                "round": r,
                "train_size": len(real_x) + len(picked),
                "picked": int(len(chosen.indices)),
                "total_picked": len(state["picks"]),
                "acquisition": config.acquisition,
                "score_min": float(chosen.scores.min()) if len(chosen.scores) else None,
                "score_max": float(chosen.scores.max()) if len(chosen.scores) else None,
                "picks_minority_prob_mean": float(picked_tp.mean()) if len(picked_tp) else None,
                "pool_minority_prob_mean": float(tp[available].mean()),
                "pool_valid_fraction": float((tp[available] >= config.threshold).mean()),
                "notes": chosen.notes,
                "train_s": round(t1 - t0, 3),
                "score_s": round(t2 - t1, 3),
                "score_images_per_s": round(len(pool_x) / max(t2 - t1, 1e-9), 1),
            }
        )
        if len(state["picks"]) >= config.budget:
            available[chosen.indices] = False
            scores = heuristic.score_summary(summary)
            ranked = heuristic.get_ranks(scores, available)
            sub(0.9, 1.0)(0.0, "near-copy check and feature map")
            _finish(
                model,
                ranked,
                real_x,
                real_y,
                pool_x,
                pool_ids,
                state,
                summary,
                scores,
                config,
                mean,
                std,
                class_names,
                minority_label,
            )
        if on_round_end is not None:
            on_round_end(r, copy.deepcopy(state))
        report((r + 1) / n_rounds, f"round {r + 1}/{n_rounds} done: {len(state['picks'])} picks")
    return _result(state)


def _result(state: dict[str, Any], stopped: bool = False) -> SelectionResult:
    return SelectionResult(
        picks=state["picks"],
        rounds=state["rounds"],
        reserve=state.get("reserve", []),
        feature_map=state.get("feature_map", {}),
        quality=state.get("quality", {}),
        state=state,
        stopped=stopped,
    )
