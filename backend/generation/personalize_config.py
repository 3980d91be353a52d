"""Settings of Stable Diffusion personalisation (textual inversion or LoRA on the real minority images).

The one home of every setting's default, limit and description: the ``personalize_sd`` job params extend
:class:`PersonalizeConfig`. Pure pydantic on purpose: the API and job registry import it without loading
torch or diffusers.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from backend.core.types import Seed

TI_FILE = "learned_embeds.safetensors"  # diffusers' textual-inversion file name
LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' LoRA file name

METHODS = ("textual_inversion", "lora")
# Caption templates of diffusers' textual-inversion example (imagenet_templates_small, abridged): each
# training image is paired with one of them, so the token learns the object rather than one sentence.
TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a good photo of a {}",
)
GRID_PROMPT = "a photo of a {}"
TOKEN_RE = re.compile(r"^[^\s{}]{1,64}$")


class PersonalizeConfig(BaseModel):
    """Everything that defines a personalisation run; stored with the concept and in every checkpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["textual_inversion", "lora"] = Field(
        "textual_inversion",
        description="textual_inversion: learn only new token embeddings (DA-Fusion); lora: low-rank adapters "
        "on the UNet attention (Real-Fake, Diff-II)",
    )
    token: str = Field(
        "<concept>",
        min_length=1,
        max_length=64,
        description="the word prompts use for the concept (no spaces or braces); textual inversion adds it "
        "to the tokenizer, LoRA binds it to the images by training",
    )
    num_vectors: int = Field(1, ge=1, le=16, description="textual inversion: embedding vectors behind the token")
    initializer: str | None = Field(
        None,
        max_length=64,
        description="textual inversion: word whose embedding starts the token (mean over its pieces); "
        "default: the minority class name, else 'object'",
    )
    rank: int = Field(4, ge=1, le=256, description="LoRA: rank of the adapters on to_q/to_k/to_v/to_out.0")
    steps: int = Field(500, ge=1, le=100_000, description="optimiser steps")
    lr: float | None = Field(
        None, gt=0.0, le=1.0, description="AdamW learning rate; default 5e-4 (textual inversion), 1e-4 (LoRA)"
    )
    batch_size: int = Field(4, ge=1, le=256, description="images per optimiser step (drawn with replacement)")
    resolution: int = Field(512, ge=32, le=1024, multiple_of=8, description="training side in px (512 for SD 1.5)")
    flip: bool = Field(True, description="random horizontal flips of the training images")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "bf16", description="autocast on CUDA (fp16 adds a GradScaler); ignored on CPU"
    )
    gradient_checkpointing: bool = Field(False, description="recompute activations to save memory (GPU runs)")
    seed: Seed = Field(0, description="initial weights, batches, noise and the sample grid")
    sample_every: int = Field(
        100, ge=1, le=100_000, description="steps between loss points, sample grids and resumable checkpoints"
    )
    grid_images: int = Field(4, ge=0, le=16, description="images in each sample grid (0: no grid)")
    grid_steps: int = Field(20, ge=1, le=200, description="denoising steps of the sample grid")
    grid_guidance: float = Field(7.5, ge=0.0, le=30.0, description="classifier-free guidance of the sample grid")

    @field_validator("token")
    @classmethod
    def _token(cls, value: str) -> str:
        if not TOKEN_RE.match(value):
            raise ValueError("token must be 1 to 64 characters without spaces or braces, like '<my-cat>'")
        return value

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (5e-4 if self.method == "textual_inversion" else 1e-4)
