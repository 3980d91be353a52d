"""Class-conditional denoising diffusion trained here, on the data at hand (DiffuLT-style): config, model, training.

Sections in reading order: model -> data -> trainer -> saved model folder. Settings (defaults, limits,
descriptions) live in ``ddpm_config.py``; sampling in ``ddpm_sample.py``.

The model is a diffusers ``UNet2DModel`` with ``num_class_embeds = classes + 1``: the extra embedding is the
"null" class, used for a random share of the training batches (label dropout) so one network learns both the
conditional and the unconditional noise prediction that classifier-free guidance mixes at sampling time.
Core code: no web/DB imports; callers talk to the loop through :class:`backend.core.hooks.Hooks`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from backend.core.checkpoint import load_state, save_state
from backend.core.hooks import NO_HOOKS, Hooks
from backend.generation.ddpm_config import NORM_GROUPS, DiffusionConfig

if TYPE_CHECKING:
    from diffusers import DDPMScheduler, UNet2DModel

# diffusers costs seconds to import (transformers and peft come with it): each function that builds or loads a
# diffusers object imports it, so the API, the job registry and the tests that only name this module's
# functions do not pay for it.

CHECKPOINT_KIND = "ddpm"
MAX_GRID_CLASSES = 16  # rows of the per-epoch sample grid (the first classes of a larger model)
CLASSES_FILE = "classes.json"


# ------------------------------------------------------------------------------------------------ model


def build_unet(config: DiffusionConfig, num_classes: int) -> UNet2DModel:
    """A class-conditional UNet: ``num_classes`` real class embeddings plus the null class at index num_classes."""
    from diffusers import UNet2DModel

    chans = config.block_channels
    attn = config.attention
    down = ("DownBlock2D",) * (len(chans) - 1) + ("AttnDownBlock2D" if attn else "DownBlock2D",)
    up = ("AttnUpBlock2D" if attn else "UpBlock2D",) + ("UpBlock2D",) * (len(chans) - 1)
    return UNet2DModel(
        sample_size=config.image_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=chans,
        layers_per_block=config.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=NORM_GROUPS,
        add_attention=attn,  # the mid block's attention, too
        attention_head_dim=32 if attn else None,
        num_class_embeds=num_classes + 1,
    )


def build_scheduler(config: DiffusionConfig) -> DDPMScheduler:
    """The training noise schedule; samplers are built from its config (``from_config``)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=config.train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type="epsilon",
        clip_sample=False,  # DDIM/DPM++ sampling clips the final image; clipping x0 mid-way hurts small models
    )


def autocast_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 on CUDA when asked (fp32's exponent range: no loss scaling needed), else None (fp32)."""
    return torch.bfloat16 if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported() else None


def memory_format(device: torch.device, enabled: bool) -> torch.memory_format:
    # channels_last lets cuDNN pick NHWC tensor-core kernels; on CPU it buys nothing measurable here.
    return torch.channels_last if enabled and device.type == "cuda" else torch.contiguous_format


# ------------------------------------------------------------------------------------------------- data


def fit_square(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 NHWC -> uint8 NCHW, centre-cropped to a square and resized (antialiased) to ``size`` px."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 N x H x W x 3, got {images.dtype} {images.shape}")
    n, h, w, _ = images.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = torch.from_numpy(np.ascontiguousarray(images[:, top : top + side, left : left + side])).permute(0, 3, 1, 2)
    if side == size:
        return x.contiguous()
    out = torch.empty((n, 3, size, size), dtype=torch.uint8)
    for start in range(0, n, 1024):  # bounded float memory for large sets
        part = F.interpolate(x[start : start + 1024].float(), size=(size, size), mode="bilinear", antialias=True)
        out[start : start + 1024] = part.round().clamp(0, 255).to(torch.uint8)
    return out


# ---------------------------------------------------------------------------------------------- trainer


@dataclass
class EpochStats:
    epoch: int
    loss: float  # mean noise-prediction MSE over the epoch
    steps: int  # optimiser steps taken so far


class DiffusionTrainer:
    """Trains the class-conditional UNet on uint8 NHWC images held on the training device.

    Build it, optionally :meth:`restore` a checkpoint, then call :meth:`train_epoch` per epoch. An epoch is
    the unit of resumption: if :class:`~backend.core.hooks.Stopped` escapes mid-epoch, rebuild the trainer
    from the last :meth:`state_bytes` (the partial epoch is lost, and redone identically).
    """

    def __init__(
        self, config: DiffusionConfig, images: np.ndarray, labels: np.ndarray, classes: list[str], device: str = "cpu"
    ) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if len(classes) < 1:
            raise ValueError("classes must name at least one class")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if len(images) < 1:
            raise ValueError("no training images")
        if labels.min() < 0 or labels.max() >= len(classes):
            raise ValueError(f"labels must lie in [0, {len(classes)}) for {len(classes)} classes")
        self.config = config
        self.classes = list(classes)
        self.device = torch.device(device)
        self.epoch = 0  # epochs completed
        self.steps = 0  # optimiser steps completed
        self.history: list[EpochStats] = []
        self.data = fit_square(images, config.image_size).to(self.device)  # uint8 NCHW, resident
        # Grayscale data (R = G = B everywhere, as the digits demo, X-rays, many scans): the model's samples
        # are made grayscale too, so no colour cast tells a classifier "this one is synthetic".
        self.grayscale = bool(
            torch.equal(self.data[:, 0], self.data[:, 1]) and torch.equal(self.data[:, 1], self.data[:, 2])
        )
        self.labels = torch.from_numpy(labels).to(self.device)
        counts = torch.bincount(self.labels, minlength=len(classes)).float()
        self._draw_weights = counts[self.labels].pow(-config.class_balance)  # per image, for class_balance
        self.amp_dtype = autocast_dtype(self.device, config.amp)
        self.memory_format = memory_format(self.device, config.amp)
        with torch.random.fork_rng(devices=[]):  # diffusers initialises weights from the global RNG
            torch.manual_seed(config.seed)
            unet = build_unet(config, len(classes))
        self.unet = unet.to(self.device, memory_format=self.memory_format)
        self.scheduler = build_scheduler(config)
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        from diffusers.training_utils import EMAModel

        self.ema = EMAModel(self.unet.parameters(), decay=config.ema_decay, use_ema_warmup=True, power=3 / 4)
        # One generator on the training device for shuffles, timesteps, noise and label dropout: drawing
        # on the device avoids a host-to-device copy of every batch's noise, and its state resumes exactly.
        self.rng = torch.Generator(self.device).manual_seed(config.seed)

    @property
    def null_class(self) -> int:
        return len(self.classes)

    @property
    def batch_size(self) -> int:
        return min(self.config.batch_size, len(self.data))

    @property
    def steps_per_epoch(self) -> int:
        # The ragged last batch is dropped: every step sees a full batch, so epochs cost the same.
        return len(self.data) // self.batch_size

    def train_epoch(self, hooks: Hooks = NO_HOOKS) -> EpochStats:
        """One pass over the data; ``hooks.progress`` gets the fraction of this epoch done."""
        self.unet.train()
        b, steps, dev = self.batch_size, self.steps_per_epoch, self.device
        if self.config.class_balance > 0:
            # Rare classes drawn more often (with replacement), so a class of five images still trains its
            # embedding; an epoch stays len(data) draws.
            order = torch.multinomial(self._draw_weights, len(self.data), replacement=True, generator=self.rng)
        else:
            order = torch.randperm(len(self.data), generator=self.rng, device=dev)
        alphas = self.scheduler.alphas_cumprod.to(dev)
        loss_sum = torch.zeros((), device=dev)
        for step in range(steps):
            hooks.stop_point(f"at step {step} of epoch {self.epoch + 1}")
            rows = order[step * b : (step + 1) * b]
            x0 = self.data[rows].float().div_(127.5).sub_(1.0)
            if self.config.hflip:
                flip = torch.rand(b, generator=self.rng, device=dev) < 0.5
                x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(3), x0)
            labels = self.labels[rows]
            drop = torch.rand(b, generator=self.rng, device=dev) < self.config.label_dropout
            labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
            t = torch.randint(0, self.config.train_timesteps, (b,), generator=self.rng, device=dev)
            noise = torch.randn(x0.shape, generator=self.rng, device=dev)
            # add_noise: sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, as DDPMScheduler.add_noise, with the
            # schedule already on the device (the scheduler would move it on every call).
            a = alphas[t].view(-1, 1, 1, 1)
            noisy = (a.sqrt() * x0 + (1 - a).sqrt() * noise).contiguous(memory_format=self.memory_format)
            for group in self.optimizer.param_groups:
                group["lr"] = self.config.lr * min(1.0, (self.steps + 1) / max(self.config.warmup_steps, 1))
            with torch.autocast(dev.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
                pred = self.unet(noisy, t, class_labels=labels).sample
            loss = F.mse_loss(pred.float(), noise)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)  # as diffusers' train_unconditional
            self.optimizer.step()
            self.ema.step(self.unet.parameters())
            self.steps += 1
            loss_sum += loss.detach()
            hooks.progress((step + 1) / steps, f"step {step + 1}/{steps}")
        # One host sync per epoch: a per-step .item() would stall the GPU queue.
        stats = EpochStats(self.epoch + 1, float(loss_sum) / max(steps, 1), self.steps)
        self.epoch += 1
        self.history.append(stats)
        return stats

    def ema_unet(self) -> UNet2DModel:
        """A copy of the UNet carrying the EMA weights, in eval mode (what sampling and saving use)."""
        unet = build_unet(self.config, len(self.classes)).to(self.device, memory_format=self.memory_format)
        self.ema.copy_to(unet.parameters())
        return unet.eval()

    def model(self) -> DiffusionModel:
        """The EMA model with its schedule and class names, ready to sample or save."""
        return DiffusionModel(
            self.ema_unet(), dict(self.scheduler.config), self.classes, self.config, self.epoch, self.grayscale
        )

    # ------------------------------------------------------------------------------------------- state

    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, EMA, optimiser, RNG, counters, history."""
        ema = self.ema.state_dict()
        return {
            "config": self.config.model_dump(),
            "classes": self.classes,
            "epoch": self.epoch,
            "steps": self.steps,
            "history": [dataclasses.asdict(h) for h in self.history],
            "unet": self.unet.state_dict(),
            "ema": {**ema, "shadow_params": list(ema["shadow_params"])},
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.get_state(),
        }

    def state_bytes(self) -> bytes:
        """:meth:`state` as a safetensors checkpoint (see ``backend.core.checkpoint``)."""
        return save_state(self.state(), CHECKPOINT_KIND)

    def restore(self, data: bytes) -> None:
        """Continue from a :meth:`state_bytes` checkpoint of the same architecture and classes."""
        state = load_state(data, CHECKPOINT_KIND)
        saved = DiffusionConfig.model_validate(state["config"])
        if not saved.same_architecture(self.config):
            raise ValueError(f"checkpoint architecture {saved} does not match {self.config}")
        if state["classes"] != self.classes:
            raise ValueError(f"checkpoint classes {state['classes']} differ from {self.classes}")
        self.unet.load_state_dict(state["unet"])
        ema = state["ema"]
        self.ema.load_state_dict({**ema, "shadow_params": [p.to(self.device) for p in ema["shadow_params"]]})
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.set_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.steps = int(state["steps"])
        self.history = [EpochStats(**h) for h in state["history"]]


def fit(trainer: DiffusionTrainer, hooks: Hooks = NO_HOOKS) -> list[EpochStats]:
    """Train up to ``config.epochs``, handing ``state_bytes()`` to ``hooks.checkpoint`` after every epoch."""
    total = trainer.config.epochs
    while trainer.epoch < total:
        first = trainer.epoch
        trainer.train_epoch(hooks.scaled(first / total, (first + 1) / total, f"epoch {first + 1}/{total}: "))
        if hooks.checkpoint is not None:
            hooks.checkpoint(trainer.state_bytes())
    return trainer.history


# ------------------------------------------------------------------------------------- saved model folder


@dataclass
class DiffusionModel:
    """A trained model: EMA UNet (eval mode), the training schedule's config, class names, run config."""

    unet: UNet2DModel
    scheduler_config: dict[str, Any]
    classes: list[str]
    config: DiffusionConfig
    epoch: int = 0
    grayscale: bool = False  # trained on grayscale images: samples come out with R = G = B

    @property
    def null_class(self) -> int:
        return len(self.classes)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def class_index(self, name: str) -> int:
        """Index of class ``name``; a ValueError lists the model's classes."""
        if name not in self.classes:
            raise ValueError(f"class {name!r} is not a class of this model; choose one of {self.classes}")
        return self.classes.index(name)

    def save(self, folder: str | Path) -> None:
        """A folder diffusers can read: ``unet/`` (UNet2DModel), ``scheduler/`` (DDPMScheduler), classes.json."""
        from diffusers import DDPMScheduler

        folder = Path(folder)
        self.unet.save_pretrained(folder / "unet")  # safetensors weights + config.json
        DDPMScheduler.from_config(self.scheduler_config).save_pretrained(folder / "scheduler")
        meta = {"classes": self.classes, "null_class": self.null_class, "config": self.config.model_dump()}
        meta |= {"epoch": self.epoch, "grayscale": self.grayscale}
        (folder / CLASSES_FILE).write_text(json.dumps(meta, indent=2))


def load_model(folder: str | Path, device: str = "cpu") -> DiffusionModel:
    """Inverse of :meth:`DiffusionModel.save`; the UNet comes back in eval mode on ``device``."""
    from diffusers import DDPMScheduler, UNet2DModel

    folder = Path(folder)
    meta_path = folder / CLASSES_FILE
    if not meta_path.is_file():
        raise ValueError(f"{folder} is not a saved diffusion model: {CLASSES_FILE} is missing")
    meta = json.loads(meta_path.read_text())
    config = DiffusionConfig.model_validate(meta["config"])
    dev = torch.device(device)
    unet = UNet2DModel.from_pretrained(folder / "unet").to(dev, memory_format=memory_format(dev, config.amp))
    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    classes, epoch, gray = list(meta["classes"]), int(meta["epoch"]), bool(meta.get("grayscale", False))
    return DiffusionModel(unet.eval(), dict(scheduler.config), classes, config, epoch, gray)
