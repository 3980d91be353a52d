"""DCGAN as in the reference study: models, training loop, safetensors state, sampling.

Sections in reading order: config -> networks -> data/augmentation -> trainer -> state files -> sampling.
Core code: no web/DB imports; callers pass ``Hooks`` (progress, stop) and a device string.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from backend.core.checkpoint import load_state, save_state
from backend.core.hooks import NO_HOOKS, Hooks
from backend.core.types import Seed
from backend.generation.oom import halving_batches
from backend.generation.pixels import to_uint8

MIN_IMAGES = 16  # fewer than this cannot fill a meaningful batch; the job refuses them
GEN_CHANNELS = (1024, 512, 256, 128)  # generator up-conv blocks (study, section 4.2)
DISC_CHANNELS = (128, 256, 512, 1024)  # discriminator down-conv blocks
STATE_KIND = "dcgan"  # the checkpoint kind (backend.core.checkpoint)


# ----------------------------------------------------------------------------------------------- config


class GanConfig(BaseModel):
    """Every setting of a training run, with its default and limit: the one home of the GAN's knobs (the
    ``train_gan`` job params extend it). Stored in every checkpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_size: Literal[64, 32] = Field(64, description="output side in px: 64 (the study) or 32 (one block fewer)")
    epochs: int = Field(25, ge=1, le=100_000, description="passes over the source images (the study: 300)")
    batch_size: int = Field(128, ge=1, le=65_536, description="images per step (capped at the number of images)")
    lr: float = Field(5e-5, gt=0.0, le=1.0, description="Adam lr of both nets; the study found 5e-5 the most stable")
    betas: tuple[float, float] = Field((0.5, 0.999), description="Adam betas, DCGAN's beta1 = 0.5")
    seed: Seed = Field(0, description="weights, shuffling, augmentation, noise and the sample grid")
    augment: bool = Field(True, description="random vertical flip + random sharpness, each with p = 0.5")
    width: float = Field(1.0, gt=0.0, le=4.0, description="channel multiplier: 1.0 = 1024-512-256-128, 0.125 for CPUs")
    nz: int = Field(100, ge=1, le=4096, description="latent vector length")
    amp: bool = Field(True, description="mixed precision on CUDA (bf16, or fp16 + GradScaler); ignored on CPU")

    @field_validator("betas")
    @classmethod
    def _betas(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError("betas must be two numbers in [0, 1)")
        return value

    @model_validator(mode="after")
    def _width(self) -> GanConfig:
        if min(_scaled(GEN_CHANNELS, self.width)) < 1:
            raise ValueError(f"width {self.width} leaves a layer with no channels")
        return self

    def same_architecture(self, other: GanConfig) -> bool:
        return (self.image_size, self.width, self.nz) == (other.image_size, other.width, other.nz)


def _scaled(channels: tuple[int, ...], width: float) -> list[int]:
    return [int(round(c * width)) for c in channels]


def _blocks(image_size: int) -> int:
    # 64 px: 4x4 -> 8 -> 16 -> 32 -> 64 needs four blocks; 32 px drops the widest one.
    return 4 if image_size == 64 else 3


# --------------------------------------------------------------------------------------------- networks


class Generator(nn.Module):
    """z (N, nz, 1, 1) -> image (N, 3, S, S) in [-1, 1]."""

    def __init__(self, nz: int, width: float, image_size: int) -> None:
        super().__init__()
        chans = _scaled(GEN_CHANNELS, width)[-_blocks(image_size) :]
        # First block projects 1x1 -> 4x4 (k4 s1 p0) as in DCGAN; later blocks double the side.
        layers: list[nn.Module] = [nn.ConvTranspose2d(nz, chans[0], 4, 1, 0, bias=False)]
        layers += [nn.BatchNorm2d(chans[0]), nn.ReLU(inplace=True)]
        for cin, cout in zip(chans, chans[1:], strict=False):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout)]
            layers.append(nn.ReLU(inplace=True))
        layers += [nn.ConvTranspose2d(chans[-1], 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Discriminator(nn.Module):
    """image (N, 3, S, S) -> logit (N,); no sigmoid (BCE-with-logits is the stable equivalent)."""

    def __init__(self, width: float, image_size: int) -> None:
        super().__init__()
        chans = _scaled(DISC_CHANNELS, width)[: _blocks(image_size)]
        layers: list[nn.Module] = []
        cin = 3
        for i, cout in enumerate(chans):
            layers.append(nn.Conv2d(cin, cout, 4, 2, 1, bias=False))
            if i > 0:  # DCGAN: no BatchNorm on the input block
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 4, 1, 0, bias=False))  # 4x4 -> 1x1 logit
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


def init_dcgan_weights(module: nn.Module, generator: torch.Generator) -> None:
    """DCGAN init: conv weights N(0, 0.02), BatchNorm scale N(1, 0.02) and shift 0 (seeded, no global RNG)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02, generator=generator)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02, generator=generator)
            nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------------ data and augmentation


def fit_square(images: np.ndarray, size: int, chunk: int = 1024) -> np.ndarray:
    """Center-crop uint8 NHWC images to a square and resize to `size` (antialiased), in chunks."""
    n, h, w, _ = images.shape
    if h == w == size:
        return images
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for start in range(0, n, chunk):
        part = torch.from_numpy(np.ascontiguousarray(images[start : start + chunk, top : top + side]))
        x = part[:, :, left : left + side].permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def sharpen(x: torch.Tensor, factor: float = 2.0) -> torch.Tensor:
    """torchvision's adjust_sharpness on a float batch in [0, 1]: blend with PIL's SMOOTH-filtered image.

    The 3x3 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 is summed from shifted views: on CPU that is
    ~7x faster than avg_pool2d and ~10x faster than a depthwise conv2d at 64 px. Border pixels keep
    their value, as in torchvision.
    """
    h, w = x.shape[-2:]
    centre = x[:, :, 1:-1, 1:-1]
    ring = sum(x[:, :, dy : h - 2 + dy, dx : w - 2 + dx] for dy in range(3) for dx in range(3) if (dy, dx) != (1, 1))
    blurred = (ring + centre * 5.0) / 13.0
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = (centre * factor + blurred * (1.0 - factor)).clamp_(0.0, 1.0)
    return out


def augment_batch(x: torch.Tensor, flip: torch.Tensor, sharp: torch.Tensor, sharpness: float = 2.0) -> torch.Tensor:
    """Vertical flip where `flip` and sharpness where `sharp` (bool (N,)) on a batch (N, 3, H, W) in [0, 1].

    Same maths as torchvision's RandomVerticalFlip + RandomAdjustSharpness(2) (the masks are the coin
    flips, p = 0.5 each), but a few tensor ops per batch on the training device instead of per-image
    PIL calls. On CPU only the selected images are processed; on an accelerator both results are
    blended with `where`, because selecting indices (`nonzero`) would stall the host on every batch.
    """
    if x.device.type == "cpu":
        rows = torch.nonzero(flip).flatten()
        if rows.numel():
            x = x.index_copy(0, rows, x.index_select(0, rows).flip(2))
        rows = torch.nonzero(sharp).flatten()
        if rows.numel():
            x = x.index_copy(0, rows, sharpen(x.index_select(0, rows), sharpness))
        return x
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(2), x)
    return torch.where(sharp.view(-1, 1, 1, 1), sharpen(x, sharpness), x)


def latent_noise(seed: int, start: int, count: int, nz: int) -> torch.Tensor:
    """Noise (count, nz, 1, 1) for sample indices start..start+count-1.

    Each index has its own stream derived from (seed, index), so any chunking of a generation job,
    or a resume after a crash, yields the same images.
    """
    rows = [np.random.default_rng((seed, i)).standard_normal(nz, dtype=np.float32) for i in range(start, start + count)]
    return torch.from_numpy(np.stack(rows) if rows else np.zeros((0, nz), np.float32)).view(count, nz, 1, 1)


# ---------------------------------------------------------------------------------------------- trainer


@dataclass
class EpochLosses:
    d_loss: float
    g_loss: float


@dataclass
class _Amp:
    """Mixed-precision choice for a device: autocast dtype, or None for fp32."""

    dtype: torch.dtype | None
    scaler_d: torch.amp.GradScaler = field(repr=False)
    scaler_g: torch.amp.GradScaler = field(repr=False)

    @classmethod
    def for_device(cls, device: torch.device, enabled: bool) -> _Amp:
        dtype = None
        if enabled and device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # fp16 needs loss scaling; bf16 has fp32's exponent range and does not.
        use_scaler = dtype == torch.float16
        return cls(
            dtype,
            torch.amp.GradScaler("cuda", enabled=use_scaler),
            torch.amp.GradScaler("cuda", enabled=use_scaler),
        )

    def autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(
            device_type=device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
        )


class GanTrainer:
    """DCGAN training on uint8 NHWC images held on the training device."""

    def __init__(self, config: GanConfig, images: np.ndarray, device: str) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 N x H x W x 3, got {images.dtype} {images.shape}")
        if len(images) < MIN_IMAGES:
            raise ValueError(f"source has {len(images)} images; at least {MIN_IMAGES} are needed to train a GAN")
        self.config = config
        self.device = torch.device(device)
        self.epoch = 0  # epochs completed
        self.history: list[EpochLosses] = []
        self.rng = torch.Generator().manual_seed(config.seed)  # CPU: shuffles, augmentation, noise
        # channels_last lets cuDNN pick NHWC tensor-core kernels; on CPU it buys nothing measurable.
        self._memory_format = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        pixels = fit_square(images, config.image_size)
        if not pixels.flags.writeable:  # e.g. a memory-mapped dataset cache; torch wants its own copy
            pixels = pixels.copy()
        self.data = torch.from_numpy(pixels).to(self.device).permute(0, 3, 1, 2)  # uint8 NCHW, resident
        self.generator = Generator(config.nz, config.width, config.image_size)
        self.discriminator = Discriminator(config.width, config.image_size)
        init_dcgan_weights(self.generator, self.rng)
        init_dcgan_weights(self.discriminator, self.rng)
        self.generator.to(self.device, memory_format=self._memory_format)
        self.discriminator.to(self.device, memory_format=self._memory_format)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=config.lr, betas=config.betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr, betas=config.betas)
        self.amp = _Amp.for_device(self.device, config.amp)
        self.fixed_noise = latent_noise(config.seed, 0, 64, config.nz)  # the per-epoch sample grid

    @property
    def batch_size(self) -> int:
        return min(self.config.batch_size, len(self.data))

    @property
    def steps_per_epoch(self) -> int:
        # Drop the ragged last batch (as DCGAN does): a 1-image batch would destabilise BatchNorm.
        return len(self.data) // self.batch_size

    def train_epoch(self, hooks: Hooks = NO_HOOKS) -> EpochLosses:
        """One pass over the data; returns mean D and G losses. A stop request raises ``Stopped`` and
        leaves the trainer as it was after the last finished epoch's checkpoint would restore it."""
        self.generator.train()
        self.discriminator.train()
        b, steps = self.batch_size, self.steps_per_epoch
        draws = self._epoch_draws(steps * b)
        ones = torch.ones(b, device=self.device)
        zeros = torch.zeros(b, device=self.device)
        d_sum = torch.zeros((), device=self.device)
        g_sum = torch.zeros((), device=self.device)
        for step in range(steps):
            hooks.stop_point(f"at step {step} of epoch {self.epoch + 1}")
            rows = slice(step * b, (step + 1) * b)
            real = self.data[draws["index"][rows]].float().div_(255.0)
            if self.config.augment:
                real = augment_batch(real, draws["flip"][rows], draws["sharp"][rows])
            real = (real * 2.0 - 1.0).contiguous(memory_format=self._memory_format)
            z = draws["z"][rows]
            d_loss, g_loss = self._step(real, z, ones, zeros)
            d_sum += d_loss
            g_sum += g_loss
            hooks.progress((step + 1) / steps)
        # One host sync per epoch: per-step .item() would stall the GPU queue.
        losses = EpochLosses(float(d_sum) / steps, float(g_sum) / steps)
        self.epoch += 1
        self.history.append(losses)
        return losses

    def _epoch_draws(self, n: int) -> dict[str, torch.Tensor]:
        """All of an epoch's random numbers, drawn from the CPU generator and moved to the device at once.

        Drawing up front keeps runs reproducible on any device, and one pinned, non-blocking copy per epoch
        replaces several small host-to-device copies per step that would serialise the GPU queue.
        """
        draws = {
            "index": torch.randperm(len(self.data), generator=self.rng)[:n],
            "z": torch.randn(n, self.config.nz, 1, 1, generator=self.rng),
            "flip": torch.rand(n, generator=self.rng) < 0.5,
            "sharp": torch.rand(n, generator=self.rng) < 0.5,
        }
        if self.device.type == "cuda":
            return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in draws.items()}
        return draws

    def _step(
        self, real: torch.Tensor, z: torch.Tensor, ones: torch.Tensor, zeros: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        amp = self.amp
        with amp.autocast(self.device):
            fake = self.generator(z)
            d_loss = F.binary_cross_entropy_with_logits(self.discriminator(real), ones)
            d_loss = d_loss + F.binary_cross_entropy_with_logits(self.discriminator(fake.detach()), zeros)
        self.opt_d.zero_grad(set_to_none=True)
        amp.scaler_d.scale(d_loss).backward()
        amp.scaler_d.step(self.opt_d)
        amp.scaler_d.update()
        with amp.autocast(self.device):
            g_loss = F.binary_cross_entropy_with_logits(self.discriminator(fake), ones)
        self.opt_g.zero_grad(set_to_none=True)
        amp.scaler_g.scale(g_loss).backward()
        amp.scaler_g.step(self.opt_g)
        amp.scaler_g.update()
        return d_loss.detach().float(), g_loss.detach().float()

    def sample_grid(self, fixed_noise: torch.Tensor | None = None, nrow: int = 8) -> np.ndarray:
        """Grid image (uint8 HWC) of the generator's output for `fixed_noise` (default: the run's own)."""
        noise = self.fixed_noise if fixed_noise is None else fixed_noise
        images = generate(self.generator, noise, self.device, amp_dtype=self.amp.dtype)
        from torchvision.utils import make_grid  # torchvision's import costs seconds; only grids need it

        grid = make_grid(torch.from_numpy(images).permute(0, 3, 1, 2), nrow=nrow, padding=2)
        return grid.permute(1, 2, 0).contiguous().numpy()

    def sample(self, count: int, seed: int, output_size: int | None = None) -> np.ndarray:
        """`count` images (uint8 NHWC) from seed; see `sample_images`."""
        return sample_images(self.generator, count, seed, self.device, output_size, amp_dtype=self.amp.dtype)

    # ------------------------------------------------------------------------------------- state files

    def state_bytes(self) -> bytes:
        """Full training state (``backend.core.checkpoint``): both nets, both Adam states, RNG, epoch, history."""
        return save_state(
            {
                "config": self.config.model_dump(),
                "epoch": self.epoch,
                "generator": self.generator.state_dict(),
                "discriminator": self.discriminator.state_dict(),
                "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict(),
                "scalers": {"d": self.amp.scaler_d.state_dict(), "g": self.amp.scaler_g.state_dict()},
                "rng": self.rng.get_state(),
                "history": [asdict(h) for h in self.history],
            },
            STATE_KIND,
        )

    def load_state(self, data: bytes) -> None:
        """Restore a `state_bytes()` snapshot (same architecture) so training continues exactly."""
        state = load_state(data, STATE_KIND)
        config = GanConfig(**state["config"])
        if not config.same_architecture(self.config):
            raise ValueError(f"checkpoint architecture {config} does not match {self.config}")
        if "opt_g" not in state:
            raise ValueError("checkpoint holds only the generator; it cannot resume training")
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        if state["scalers"]["d"] and self.amp.scaler_d.is_enabled():
            self.amp.scaler_d.load_state_dict(state["scalers"]["d"])
            self.amp.scaler_g.load_state_dict(state["scalers"]["g"])
        self.rng.set_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.history = [EpochLosses(**h) for h in state["history"]]


def generator_only(data: bytes) -> bytes:
    """Shrink a full checkpoint to the generator weights (what sampling needs; ~1/5 the size)."""
    state = load_state(data, STATE_KIND)
    keep = ("config", "epoch", "generator", "history")
    return save_state({k: state[k] for k in keep}, STATE_KIND)


# --------------------------------------------------------------------------------------------- sampling


@dataclass
class LoadedGenerator:
    generator: Generator
    config: GanConfig
    epoch: int


def load_generator(data: bytes, device: str) -> LoadedGenerator:
    """Generator (eval mode, on `device`) from a full or generator-only checkpoint."""
    state = load_state(data, STATE_KIND)
    config = GanConfig(**state["config"])
    generator = Generator(config.nz, config.width, config.image_size)
    generator.load_state_dict(state["generator"])
    dev = torch.device(device)
    generator.to(dev, memory_format=torch.channels_last if dev.type == "cuda" else torch.contiguous_format)
    return LoadedGenerator(generator.eval(), config, int(state["epoch"]))


@torch.no_grad()
def render(
    generator: Generator, noise: torch.Tensor, device: torch.device | str, amp_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Generator output (N, 3, S, S) float32 in [-1, 1] on `device`, computed in eval mode.

    Eval mode uses BatchNorm's running statistics, so an image depends only on its own noise vector,
    never on which other images share its batch.
    """
    dev = torch.device(device)
    was_training = generator.training
    generator.eval()
    try:
        with torch.autocast(dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            return generator(noise.to(dev)).float()
    finally:
        generator.train(was_training)


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (N, C, H, W) to size x size on its device; antialias keeps downscaled texture from aliasing."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def generate(
    generator: Generator,
    noise: torch.Tensor,
    device: torch.device | str,
    output_size: int | None = None,
    amp_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """uint8 NHWC images for `noise`, resized to `output_size` px when given."""
    x = render(generator, noise, device, amp_dtype)
    return to_uint8(x if output_size is None else resize_batch(x, output_size))


def sample_images(
    generator: Generator,
    count: int,
    seed: int,
    device: torch.device | str,
    output_size: int | None = None,
    start: int = 0,
    batch_size: int = 256,
    amp_dtype: torch.dtype | None = None,
    on_batch_size: Callable[[int, str], None] | None = None,
    with_full: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Images start..start+count-1 of the stream defined by `seed`, uint8 NHWC at `output_size` px
    (with ``with_full``, also at the generator's own size: the gallery's review copies).

    On CUDA out-of-memory the batch is halved (``on_batch_size`` hears of it); images do not depend on
    the batch size, so the output is the same.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if output_size is not None and not 8 <= output_size <= 1024:
        raise ValueError(f"output_size must be between 8 and 1024, got {output_size}")
    nz = generator.net[0].in_channels
    side = output_size or _output_side(generator)
    full_side = _output_side(generator)
    out = np.empty((count, side, side, 3), dtype=np.uint8)
    full = np.empty((count, full_side, full_side, 3), dtype=np.uint8) if with_full else None

    def batch(lo: int, n: int) -> None:
        x = render(generator, latent_noise(seed, start + lo, n, nz), device, amp_dtype)
        out[lo : lo + n] = to_uint8(x if output_size is None else resize_batch(x, output_size))
        if full is not None:
            full[lo : lo + n] = to_uint8(x)

    halving_batches(count, batch_size, batch, on_batch_size, what="GAN sampling batch")
    return (out, full) if full is not None else out


def _output_side(generator: Generator) -> int:
    # Each stride-2 transpose conv doubles the 4x4 produced by the first block.
    ups = sum(1 for m in generator.net if isinstance(m, nn.ConvTranspose2d) and m.stride == (2, 2))
    return 4 * 2**ups
