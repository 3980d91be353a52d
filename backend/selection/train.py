"""Default ``train_fn`` of the selection loop: the project's trainer with an MC-dropout head."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch.nn as nn

from backend.core.hooks import Hooks
from backend.training.trainer import TrainConfig, fit


class RoundSettings(Protocol):
    """The settings of a selection run that its round classifier uses (``SelectionConfig`` has them)."""

    model: str
    epochs: int
    batch_size: int
    lr: float
    dropout: float
    loss: str
    device: str


def train_classifier(
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    config: RoundSettings,
    seed: int,
    should_stop: Callable[[], bool],
) -> nn.Module:
    """Train ``config.model`` with head dropout ``config.dropout`` on uint8 NHWC ``x``; returns it in eval mode.

    No validation split: a round's classifier only ranks candidates, so every real image is worth more
    as training data than as a checkpoint selector, and the last epoch is kept. Raises
    ``backend.core.hooks.Stopped`` when ``should_stop()`` turns True.
    """
    tc = TrainConfig(
        model=config.model,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        dropout=config.dropout,
        loss=config.loss,
        seed=seed,
        device=config.device,
    )
    result = fit((x, y), tc, mean=mean, std=std, num_classes=num_classes, hooks=Hooks(should_stop=should_stop))
    return result.model
