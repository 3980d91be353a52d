"""Stable Diffusion through diffusers: load a pipeline fast-or-fail, generate reproducible batches.

`load_pipeline` accepts a Hugging Face id, a local pipeline directory, or `tiny` (a random tiny
pipeline built under the workspace on first use and loaded through the same `from_pretrained`).
`generate` turns `PromptItem`s into uint8 images at the dataset resolution plus a review copy.
Every image has its own `torch.Generator` seeded from its item, so the batch an image lands in
changes nothing about it.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from backend.core.hooks import NO_HOOKS, Hooks, Stopped
from backend.core.tmpdirs import make_tmp_dir
from backend.generation.oom import halving_batches
from backend.generation.prompts import PromptItem
from backend.generation.schedulers import SCHEDULERS
from backend.generation.tiny import build_tiny_pipeline, build_tiny_taesd

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

# diffusers (with transformers and peft behind it) costs seconds to import: it is imported where a
# pipeline is built, so the modules and tests that only name this one's functions do not pay for it.

log = logging.getLogger(__name__)

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
TINY = "tiny"
HUB_PROBE_TIMEOUT_S = 5.0  # an unreachable hub must fail a job in seconds, not hang it

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
MODES = ("txt2img", "img2img")


@dataclass
class GeneratedImage:
    """One finished image: `image` is H x W x 3 uint8 at the dataset size, `review` at
    min(resolution, review_size)."""

    item: PromptItem
    image: np.ndarray
    review: np.ndarray


def _hint(model: str) -> str:
    return (
        f"download it where the Hugging Face hub is reachable (`hf download {model} --local-dir DIR`)"
        " and pass DIR as the model (inside an --allow-dir), or use model 'tiny' for a random"
        " offline test model"
    )


def _looks_like_path(model: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything else is meant as a directory."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


def _from_pretrained(loader: Callable, source: str, what: str, **kwargs) -> object:
    """`loader(source, **kwargs)`, turning every way a load can fail into a ValueError in seconds.

    Tries local files (a directory or the hub cache) first; only if that fails and the hub answers
    a metadata probe within HUB_PROBE_TIMEOUT_S does it download.
    """
    local = Path(source).expanduser()
    if local.is_dir():
        try:
            return loader(str(local), local_files_only=True, **kwargs)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{what} '{source}': cannot load the local directory: {exc}") from exc
    if _looks_like_path(source):
        raise ValueError(
            f"{what} '{source}': no such directory; give a pipeline directory (with model_index.json) inside"
            " an --allow-dir, a Hugging Face id like 'owner/name', or 'tiny'"
        )
    try:
        return loader(source, local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        cached_error = exc
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ValueError(f"{what} '{source}' is not in the local cache and HF_HUB_OFFLINE is set; {_hint(source)}")
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        huggingface_hub.model_info(source, timeout=HUB_PROBE_TIMEOUT_S)
    except GatedRepoError as exc:
        raise ValueError(
            f"{what} '{source}' is gated on Hugging Face (log in with `hf auth login`); {_hint(source)}"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ValueError(f"{what} '{source}' does not exist on Hugging Face; check the id, or {_hint(source)}") from exc
    except Exception as exc:  # network errors come from several libraries (httpx, socket, ssl)
        raise ValueError(
            f"{what} '{source}' is not cached and Hugging Face is unreachable"
            f" ({type(exc).__name__}: {exc}); {_hint(source)}"
        ) from exc
    try:
        return loader(source, **kwargs)
    except Exception as exc:
        raise ValueError(f"{what} '{source}' could not be downloaded or loaded: {cached_error}; then: {exc}") from exc


def _built_once(target: Path, build: Callable[[Path], Path]) -> Path:
    """Build a local model directory once: into a temp dir, then an atomic rename, so concurrent
    workers and crashes never leave a half-written model behind."""
    marker = "model_index.json" if build is build_tiny_pipeline else "config.json"
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_tmp_dir(target.parent, target.name)
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(model: str, workspace: Path) -> str:
    """The `from_pretrained` source for `model`: `tiny` becomes its workspace directory."""
    if model == TINY:
        return str(_built_once(workspace / "models" / "tiny", build_tiny_pipeline))
    return model


def _load_vae(vae: str, workspace: Path, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import AutoencoderKL, AutoencoderTiny

    if vae == TINY:
        vae = str(_built_once(workspace / "models" / "tiny-taesd", build_tiny_taesd))
    config = _from_pretrained(AutoencoderKL.load_config, vae, "vae")
    cls = AutoencoderTiny if config.get("_class_name") == "AutoencoderTiny" else AutoencoderKL
    return _from_pretrained(cls.from_pretrained, vae, "vae", dtype=dtype)


def make_scheduler(name: str, config: dict) -> object:
    """Scheduler `name` configured with the model's noise schedule (`config`)."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler '{name}' is unknown; choose one of {', '.join(SCHEDULERS)}")
    import diffusers

    cls, overrides, _label = SCHEDULERS[name]
    return getattr(diffusers, cls).from_config(config, **overrides)


def load_pipeline(
    model: str,
    *,
    mode: str = "txt2img",
    device: str = "cpu",
    dtype: str | None = None,
    workspace: Path,
    vae: str | None = None,
    safety_checker: bool = False,
    scheduler: str = "dpmpp_2m",
    compile: bool = False,
) -> DiffusionPipeline:
    """Load a Stable Diffusion pipeline ready to generate on `device`.

    dtype: 'fp16' (CUDA default), 'bf16' or 'fp32' (CPU default; half precision on CPU is slow).
    Raises ValueError naming the model when it cannot be loaded.
    """
    if mode not in MODES:
        raise ValueError(f"mode '{mode}' is unknown; choose txt2img or img2img")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler '{scheduler}' is unknown; choose one of {', '.join(SCHEDULERS)}")
    dtype = dtype or ("fp16" if device.startswith("cuda") else "fp32")
    if dtype not in DTYPES:
        raise ValueError(f"dtype '{dtype}' is unknown; choose one of {', '.join(DTYPES)}")
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image
    from diffusers.models.attention_processor import AttnProcessor2_0

    torch_dtype = DTYPES[dtype]
    auto = AutoPipelineForText2Image if mode == "txt2img" else AutoPipelineForImage2Image
    kwargs: dict = {"dtype": torch_dtype}
    if not safety_checker:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if vae:
        kwargs["vae"] = _load_vae(vae, workspace, torch_dtype)
    source = resolve_model(model, workspace)
    pipe = _from_pretrained(auto.from_pretrained, source, "model", **kwargs)
    if safety_checker and getattr(pipe, "safety_checker", None) is None:
        raise ValueError(
            f"model '{model}' ships no safety checker; turn safety_checker off or pick a model that has one"
        )
    if not hasattr(pipe, "unet"):
        raise ValueError(f"model '{model}' is a {type(pipe).__name__}, not a Stable Diffusion pipeline")
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    if device.startswith("cuda"):
        # SDPA (flash / memory-efficient kernels) for every attention layer; channels_last lets
        # cuDNN pick its fastest NHWC convolution kernels in half precision.
        for module in (pipe.unet, pipe.vae):
            if getattr(module, "attn_processors", None):
                module.set_attn_processor(AttnProcessor2_0())
            module.to(memory_format=torch.channels_last)
        if compile:
            pipe.unet = torch.compile(pipe.unet, fullgraph=True)
    elif compile:
        pipe.unet = torch.compile(pipe.unet)
    return pipe


def is_img2img(pipe: DiffusionPipeline) -> bool:
    """Whether `pipe` takes an init image (loaded with mode='img2img')."""
    return "image" in inspect.signature(type(pipe).__call__).parameters


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """B x 3 x H x W floats in [0, 1] -> B x H x W x 3 uint8 on the CPU."""
    images = torch.nan_to_num(images.float(), nan=0.0).clamp_(0, 1)
    return images.mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    # Antialiased so 512 -> 32 averages pixels instead of aliasing like a strided pick.
    return F.interpolate(images.float(), size=(size, size), mode="bicubic", antialias=True)


# Stable Diffusion 1.x/2.x latents -> RGB by a fixed linear map (the community's "latent preview" factors, as
# ComfyUI and A1111 use): a recognisable picture of the work in progress for the cost of a 4x3 matmul, where a
# VAE decode per step would cost as much as a denoising step.
LATENT_RGB = torch.tensor(
    [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]
)


def latent_preview(latents: torch.Tensor, size: int = 64) -> np.ndarray:
    """A batch of latents (B x C x h x w) as one row of small RGB images (size x B*size x 3 uint8).

    Four-channel latents go through :data:`LATENT_RGB`; any other latent space shows its first three
    channels (or one, as grey), each image stretched to its own range."""
    x = latents.detach().float().cpu()
    if x.shape[1] == LATENT_RGB.shape[0]:
        rgb = torch.einsum("bchw,cr->brhw", x, LATENT_RGB)
    else:
        rgb = x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)
    low = rgb.amin(dim=(1, 2, 3), keepdim=True)
    high = rgb.amax(dim=(1, 2, 3), keepdim=True)
    rgb = (rgb - low) / (high - low).clamp_min(1e-6)
    rgb = F.interpolate(rgb, size=(size, size), mode="nearest")  # latents are 8x smaller: keep them blocky
    return _to_uint8(rgb).transpose(1, 0, 2, 3).reshape(size, -1, 3)


def _init_tensor(init_images: Sequence[np.ndarray], resolution: int, device: str) -> torch.Tensor:
    """H x W x 3 uint8 arrays -> B x 3 x res x res floats in [0, 1] on `device`."""
    batch = torch.stack([torch.from_numpy(np.ascontiguousarray(img)) for img in init_images])
    batch = batch.to(device).permute(0, 3, 1, 2).float().div_(255)
    return _resize(batch, resolution).clamp_(0, 1)


def generate(
    pipe: DiffusionPipeline,
    items: Sequence[PromptItem],
    *,
    steps: int,
    guidance: float,
    resolution: int,
    output_size: int,
    negative_prompt: str = "",
    init_images: Sequence[np.ndarray] | None = None,
    strength: float | None = None,
    batch_size: int = 8,
    review_size: int = 256,
    hooks: Hooks = NO_HOOKS,
    on_batch_size: Callable[[int, str], None] | None = None,
    on_step: Callable[[int, int, int, torch.Tensor], None] | None = None,
) -> list[GeneratedImage]:
    """Generate one image per item, `batch_size` at a time.

    init_images: for img2img, one H x W x 3 uint8 image per item (any size; resized to
    `resolution`). Stops between denoising steps when ``hooks.should_stop()`` is true and returns the
    images finished so far. On CUDA out-of-memory the batch is halved and retried
    (``backend.generation.oom.halving_batches``); the new size is reported through
    `on_batch_size(size, message)`, and only batch size 1 fails (ValueError). ``on_step(images, step, steps,
    latents)`` follows every denoising step of every batch (``images`` in the batch, ``step`` of ``steps`` done,
    the batch's latents for :func:`latent_preview`).
    """
    img2img = init_images is not None
    if img2img != is_img2img(pipe):
        raise ValueError("init_images are required exactly when the pipeline was loaded in img2img mode")
    if img2img and len(init_images) != len(items):
        raise ValueError(f"init_images: {len(init_images)} images for {len(items)} items")
    if img2img and (strength is None or not 0 < strength <= 1):
        raise ValueError(f"strength must be in (0, 1] for img2img, got {strength}")
    if img2img and int(steps * strength) < 1:
        raise ValueError(f"steps x strength must be at least 1 denoising step, got {steps} x {strength}")
    if resolution % 8:
        raise ValueError(f"resolution must be a multiple of 8, got {resolution}")
    stop = hooks.should_stop
    device = pipe.device.type if pipe.device.type != "cuda" else str(pipe.device)
    review_px = min(resolution, review_size)

    def interrupt(p: DiffusionPipeline, step: int, timestep: object, kwargs: dict) -> dict:
        if on_step is not None:
            latents = kwargs["latents"]
            # The pipeline's own count: img2img runs steps x strength of them.
            on_step(int(latents.shape[0]), step + 1, int(getattr(p, "num_timesteps", 0) or steps), latents)
        if stop():
            p._interrupt = True  # diffusers' own flag: the loop skips the remaining steps
        return kwargs

    results: list[GeneratedImage] = []

    def run(start: int, n: int) -> None:
        hooks.stop_point("before a denoising batch")
        batch = list(items[start : start + n])
        call: dict = {
            "prompt": [item.prompt for item in batch],
            "negative_prompt": [negative_prompt] * len(batch) if negative_prompt else None,
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            # CPU generators: the same seed gives the same starting noise on every device.
            "generator": [torch.Generator("cpu").manual_seed(item.seed) for item in batch],
            "output_type": "pt",
            "callback_on_step_end": interrupt,
            "callback_on_step_end_tensor_inputs": ["latents"],
        }
        if img2img:
            call["image"] = _init_tensor(init_images[start : start + len(batch)], resolution, device)
            call["strength"] = strength
        else:
            call["height"] = call["width"] = resolution
        with torch.inference_mode():
            images = pipe(**call).images
            hooks.stop_point("during denoising")  # interrupted mid-denoising: these images are unfinished
            dataset = _to_uint8(_resize(images, output_size))
            review = _to_uint8(_resize(images, review_px))
        results.extend(GeneratedImage(item, dataset[i], review[i]) for i, item in enumerate(batch))

    try:
        halving_batches(len(items), batch_size, run, on_batch_size, what="batch")
    except Stopped:
        pass  # the caller keeps the finished images and stops at its own stop point
    return results
