"""Settings of the class-conditional diffusion model: training (:class:`DiffusionConfig`) and sampling
(:class:`SampleConfig`), each with its default, limit and description in one place; the ``train_diffusion``
and ``generate_diffusion`` job params extend them. Pure pydantic on purpose: the API and the job registry
import it without loading torch or diffusers (diffusers alone takes seconds to import).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from backend.core.types import Seed

BASE_CHANNELS = (64, 128, 256, 256)  # UNet block widths at width = 1.0, outermost first
LEVELS = {16: 3, 32: 3, 64: 4}  # UNet resolution levels per image side: 16/32 px -> 4/8 px at the bottom
NORM_GROUPS = 8  # GroupNorm groups; block widths are rounded to multiples of this


class DiffusionConfig(BaseModel):
    """Everything that defines a training run; stored in every checkpoint and saved model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_size: Literal[16, 32, 64] = Field(32, description="side in px the model works at (16: tests, tiny demos)")
    width: float = Field(1.0, ge=0.05, le=4.0, description="channel multiplier: 1.0 = 64-128-256, 0.25 = 16-32-64")
    layers_per_block: int = Field(2, ge=1, le=4, description="ResNet layers per UNet block")
    attention: bool = Field(True, description="self-attention at the lowest resolution (costly on CPUs)")
    epochs: int = Field(50, ge=1, le=100_000, description="passes over the training images")
    batch_size: int = Field(128, ge=1, le=8192, description="images per optimiser step (capped at the image count)")
    lr: float = Field(5e-4, gt=0.0, le=1.0, description="AdamW peak learning rate, reached after warmup_steps")
    warmup_steps: int = Field(100, ge=0, le=1_000_000, description="optimiser steps of linear learning-rate warm-up")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW decoupled weight decay")
    train_timesteps: int = Field(1000, ge=10, le=10_000, description="DDPM noise levels")
    beta_schedule: Literal["squaredcos_cap_v2", "linear"] = Field(
        "squaredcos_cap_v2", description="DDPM noise schedule (cosine keeps small images informative longer)"
    )
    label_dropout: float = Field(
        0.1, ge=0.0, le=1.0, description="share of training images shown as the null class (for guidance)"
    )
    ema_decay: float = Field(
        0.999, ge=0.0, le=1.0, description="largest EMA decay; the decay warms up from 0, so short runs average too"
    )
    class_balance: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="draw training images with weight count(class)^-class_balance: 0 plain shuffling, "
        "1 every class equally often (lets a class of a few images train its embedding)",
    )
    hflip: bool = Field(False, description="random horizontal flips (off for digits and text: a mirror is no digit)")
    seed: Seed = Field(0, description="initial weights, data order, noise and the sample grid")
    amp: bool = Field(True, description="bf16 autocast + channels_last on CUDA; ignored on CPU")
    grid_per_class: int = Field(8, ge=0, le=32, description="images per class in each epoch's sample grid (0: none)")
    grid_steps: int = Field(20, ge=1, le=1000, description="DDIM steps of the per-epoch sample grid")
    grid_guidance: float = Field(2.0, ge=0.0, le=30.0, description="classifier-free guidance of the sample grid")

    @model_validator(mode="after")
    def _width(self) -> DiffusionConfig:
        if min(self.block_channels) < NORM_GROUPS:
            raise ValueError(f"width {self.width} leaves a UNet block with fewer than {NORM_GROUPS} channels")
        return self

    @property
    def block_channels(self) -> tuple[int, ...]:
        """UNet block widths, rounded to multiples of the GroupNorm group count."""
        base = BASE_CHANNELS[: LEVELS[self.image_size]]
        return tuple(int(round(c * self.width / NORM_GROUPS)) * NORM_GROUPS for c in base)

    def same_architecture(self, other: DiffusionConfig) -> bool:
        keys = ("image_size", "width", "layers_per_block", "attention", "train_timesteps", "beta_schedule")
        return all(getattr(self, k) == getattr(other, k) for k in keys)


class SampleConfig(BaseModel):
    """How to sample a trained model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sampler: Literal["ddim", "dpmpp"] = Field("dpmpp", description="ddim (eta 0) or dpmpp (DPM-Solver++ 2M)")
    steps: int = Field(25, ge=1, le=1000, description="denoising steps")
    guidance: float = Field(
        2.0, ge=0.0, le=30.0, description="classifier-free guidance: 0 unconditional, 1 plain conditional"
    )
    seed: Seed = Field(0, description="image i's noise is drawn from (seed, i)")
    strength: float = Field(
        1.0,
        ge=0.01,
        le=1.0,
        description="below 1: start from real images of the class and re-run this share of the schedule (SDEdit)",
    )
    batch_size: int = Field(64, ge=1, le=4096, description="images per UNet call (halved on CUDA out-of-memory)")

    @model_validator(mode="after")
    def _steps(self) -> SampleConfig:
        if self.strength < 1.0 and int(self.steps * self.strength) < 1:
            raise ValueError(f"strength {self.strength} x steps {self.steps} leaves no denoising step")
        return self
