"""Default ``train_fn`` of the selection loop: the project's trainer with an MC-dropout head."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch.nn as nn

from backend.selection.scoring import Interrupted
from backend.training.models import build_model
from backend.training.trainer import TrainConfig, TrainingInterrupted, train

if TYPE_CHECKING:
    from backend.selection.loop import SelectionConfig


def train_classifier(
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    config: SelectionConfig,
    seed: int,
    should_stop: Callable[[], bool],
) -> nn.Module:
    """Train ``config.model`` with head dropout ``config.dropout`` on uint8 NHWC ``x``; returns it in eval mode.

    No validation split (val_fraction 0): a round's classifier only ranks candidates, so every real
    image is worth more as training data than as a checkpoint selector, and the last epoch is kept.
    """
    tc = TrainConfig(
        model=config.model,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        dropout=config.dropout,
        loss=config.loss,
        val_fraction=0.0,
        seed=seed,
        device=config.device,
    )
    # The trainer evaluates once on a test set; selection has none, so it gets an empty one.
    empty_x = np.zeros((0, *x.shape[1:]), dtype=np.uint8)
    try:
        result = train(
            (x, y),
            empty_x,
            np.zeros(0, np.int64),
            tc,
            mean=mean,
            std=std,
            num_classes=num_classes,
            should_stop=should_stop,
        )
    except TrainingInterrupted as exc:
        raise Interrupted(str(exc)) from exc
    model = build_model(config.model, num_classes, dropout=config.dropout)
    model.load_state_dict(result.model_state)
    return model.to(config.device).eval()
