"""Sampling a trained class-conditional diffusion model: DDIM or DPM++ (2M), classifier-free guidance, SDEdit.

Image *i*'s starting noise comes only from ``image_seed(seed, i)`` and both samplers are deterministic
(DDIM with eta = 0, DPM-Solver++), so an image does not depend on the batch it was computed in: a job may
chunk, resume after a crash or halve its batch after a CUDA OOM and still write the same pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from backend.core.hooks import NO_HOOKS, Hooks
from backend.generation.ddpm import MAX_GRID_CLASSES, DiffusionModel, autocast_dtype, fit_square
from backend.generation.ddpm_config import SampleConfig
from backend.generation.oom import halving_batches
from backend.generation.pixels import to_uint8 as _to_uint8
from backend.generation.prompts import image_seed

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

SAMPLER_CLASSES = {"ddim": "DDIMScheduler", "dpmpp": "DPMSolverMultistepScheduler"}  # diffusers class names


def make_sampler(model: DiffusionModel, config: SampleConfig) -> SchedulerMixin:
    """A fresh sampler (schedulers keep per-run state) on the model's training schedule."""
    import diffusers  # seconds to import: paid when a model samples, not by every importer of this module

    # "trailing" spacing starts at the last training timestep: with few steps, "leading" would start
    # from a partly denoised level the model never saw as pure noise.
    # Pixel-space samplers must keep their x0 estimate in the data range: at the first steps of the cosine
    # schedule sqrt(alpha_bar) is ~1e-3, so eps errors come back 1000x larger in x0 and every image
    # saturates. DDIM clips x0 to [-1, 1]; DPM++ does the same through thresholding with a maximum of 1.
    extra = {"clip_sample": True, "clip_sample_range": 1.0}
    if config.sampler == "dpmpp":
        extra = {"thresholding": True, "sample_max_value": 1.0}
    scheduler = getattr(diffusers, SAMPLER_CLASSES[config.sampler]).from_config(
        model.scheduler_config, timestep_spacing="trailing", **extra
    )
    scheduler.set_timesteps(config.steps)
    return scheduler


def initial_noise(indices: Sequence[int], seed: int, size: int) -> torch.Tensor:
    """(N, 3, size, size) standard normal noise; row j depends only on (seed, indices[j])."""
    rows = [
        torch.randn((3, size, size), generator=torch.Generator().manual_seed(image_seed(seed, int(i)))) for i in indices
    ]
    return torch.stack(rows) if rows else torch.zeros((0, 3, size, size))


@torch.no_grad()
def _denoise(
    model: DiffusionModel,
    labels: torch.Tensor,
    noise: torch.Tensor,
    start: torch.Tensor | None,
    config: SampleConfig,
    hooks: Hooks,
) -> torch.Tensor:
    """One batch through the sampler; returns (N, 3, S, S) in [-1, 1] on the model's device."""
    dev = model.device
    scheduler = make_sampler(model, config)
    timesteps = scheduler.timesteps
    x = noise.to(dev)
    if start is not None:
        # SDEdit: noise the start images to the level `strength` of the way up, then denoise from there.
        skip = config.steps - int(config.steps * config.strength)
        timesteps = timesteps[skip * scheduler.order :]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(skip * scheduler.order)
        x = scheduler.add_noise(start.to(dev), x, timesteps[:1].repeat(len(x)))
    n = len(x)
    null = torch.full_like(labels, model.null_class)
    g = config.guidance
    # Guidance 1 is the plain conditional prediction and 0 the unconditional one: one UNet pass each.
    # Otherwise both run in one doubled batch and are mixed: eps_u + g (eps_c - eps_u).
    class_in = labels if g == 1.0 else null if g == 0.0 else torch.cat([labels, null])
    amp = autocast_dtype(dev, model.config.amp)
    for i, t in enumerate(timesteps):
        hooks.stop_point(f"at denoising step {i + 1}")
        x_in = x if len(class_in) == n else torch.cat([x, x])
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            eps = model.unet(scheduler.scale_model_input(x_in, t), t, class_labels=class_in).sample.float()
        if len(eps) != n:
            cond, uncond = eps.chunk(2)
            eps = uncond + g * (cond - uncond)
        x = scheduler.step(eps, t, x).prev_sample
    return x.clamp(-1, 1)


def generate(
    model: DiffusionModel,
    labels: Sequence[int],
    indices: Sequence[int],
    config: SampleConfig,
    start_images: np.ndarray | None = None,
    output_size: int | None = None,
    hooks: Hooks = NO_HOOKS,
    on_batch_size: Callable[[int, str], None] | None = None,
) -> np.ndarray:
    """uint8 (N, S, S, 3) images: image j has class ``labels[j]`` and noise from ``(config.seed, indices[j])``.

    ``start_images`` (uint8 NHWC, any size): SDEdit from ``start_images[indices[j] % M]`` at
    ``config.strength``. ``output_size``: resize (antialiased) from the model's side. Batches of
    ``config.batch_size`` are halved on CUDA out-of-memory; the output does not depend on the batch size.
    """
    if len(labels) != len(indices):
        raise ValueError(f"{len(labels)} labels but {len(indices)} indices")
    k = len(model.classes)
    bad = [c for c in labels if not 0 <= int(c) < k]
    if bad:
        raise ValueError(f"class index {bad[0]} is out of range for a model of {k} classes")
    if output_size is not None and not 8 <= output_size <= 1024:
        raise ValueError(f"output_size must be between 8 and 1024, got {output_size}")
    size = model.config.image_size
    starts = None
    if start_images is not None and config.strength < 1.0:
        if len(start_images) == 0:
            raise ValueError("start_images is empty")
        starts = fit_square(np.asarray(start_images), size).float().div_(127.5).sub_(1.0)
    side = output_size or size
    out = np.empty((len(labels), side, side, 3), dtype=np.uint8)
    label_t = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    total = len(labels)

    def batch(lo: int, n: int) -> None:
        idx = [int(i) for i in indices[lo : lo + n]]
        start = None if starts is None else starts[[i % len(starts) for i in idx]]
        x = _denoise(
            model, label_t[lo : lo + n].to(model.device), initial_noise(idx, config.seed, size), start, config, hooks
        )
        if side != size:
            x = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
        if model.grayscale:
            x = x.mean(1, keepdim=True).expand(-1, 3, -1, -1)
        out[lo : lo + n] = _to_uint8(x)
        hooks.progress((lo + n) / total, f"{lo + n}/{total} images")

    halving_batches(total, config.batch_size, batch, on_batch_size, what="diffusion sampling batch")
    return out


def sample(
    model: DiffusionModel,
    class_name: str,
    count: int,
    config: SampleConfig,
    first_index: int = 0,
    **kwargs,
) -> np.ndarray:
    """``count`` images of ``class_name`` (indices first_index..first_index+count-1); see :func:`generate`."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    c = model.class_index(class_name)
    return generate(model, [c] * count, range(first_index, first_index + count), config, **kwargs)


def class_grid(model: DiffusionModel) -> np.ndarray:
    """uint8 HWC grid: a row per class (the first 16), ``grid_per_class`` columns sharing their noise.

    Column j uses the same noise in every row, so the rows show what the class label alone changes, and
    the same noise every epoch, so successive grids show what training changed.
    """
    cfg = model.config
    per = cfg.grid_per_class
    classes = range(min(len(model.classes), MAX_GRID_CLASSES))
    labels = [c for c in classes for _ in range(per)]
    indices = [j for _ in classes for j in range(per)]
    config = SampleConfig(sampler="ddim", steps=cfg.grid_steps, guidance=cfg.grid_guidance, seed=cfg.seed)
    images = generate(model, labels, indices, config)
    from torchvision.utils import make_grid  # torchvision's import costs seconds; only grids need it

    grid = make_grid(torch.from_numpy(images).permute(0, 3, 1, 2), nrow=per, padding=2)
    return grid.permute(1, 2, 0).contiguous().numpy()
