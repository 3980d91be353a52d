"""Personalise a Stable Diffusion pipeline on a few real images: textual inversion or LoRA.

:class:`ConceptTrainer` trains on a pipeline from ``diffusion.load_pipeline`` (fp32 weights; autocast on
CUDA). The real images are encoded once by the pipeline's VAE (mean and std of each latent, flipped and
not); every step then draws its images, captions, latent samples, timesteps and noise from a generator
seeded by (seed, step), so a run restored from :meth:`state` continues exactly as if never stopped.
Textual inversion trains only the new token rows (a forward hook splices them into the embedding
lookup); LoRA trains peft adapters on the UNet attention. :func:`save_concept` writes the files diffusers'
own loaders read (``load_textual_inversion`` / ``load_lora_weights``) plus ``concept.json`` naming the base
model; :func:`apply_concept` swaps concepts in and out of a cached generation pipeline.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from backend.core.hooks import NO_HOOKS, Hooks
from backend.generation.personalize_config import GRID_PROMPT, LORA_FILE, TEMPLATES, TI_FILE, PersonalizeConfig

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline, StableDiffusionPipeline
# diffusers itself (seconds to import) is imported by the code that trains or saves a concept.

INFO_FILE = "concept.json"
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
ENCODE_BATCH = 8
GRID_TILE_MAX = 256  # px per grid tile: grids are for eyes, not for datasets


def step_seed(seed: int, step: int) -> int:
    """The seed of one optimiser step's randomness, independent of every other step."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{step}".encode()).digest()[:8], "little") >> 1


def token_names(token: str, n: int) -> list[str]:
    """diffusers' multi-vector names: `<t>`, `<t>_1`, ... (``maybe_convert_prompt`` expands `<t>` to them)."""
    return [token] + [f"{token}_{i}" for i in range(1, n)]


@dataclass
class LossPoint:
    step: int  # optimiser steps done at the end of the stretch
    loss: float  # mean noise-prediction MSE over the stretch


class ConceptTrainer:
    """Textual inversion or LoRA on ``images`` (uint8 N x H x W x 3) through ``pipe``'s own modules."""

    def __init__(
        self, pipe: StableDiffusionPipeline, config: PersonalizeConfig, images: np.ndarray, initializer: str
    ) -> None:
        if len(images) == 0:
            raise ValueError("no training image")
        if any(p.dtype != torch.float32 for p in pipe.unet.parameters()):
            raise ValueError("train on a pipeline loaded with dtype 'fp32' (autocast gives the speed on CUDA)")
        self.pipe, self.config = pipe, config
        self.device = pipe.device
        self.step = 0
        self.history: list[LossPoint] = []
        cuda = self.device.type == "cuda"
        self.amp = cuda and config.mixed_precision != "no"
        self.amp_dtype = torch.bfloat16 if config.mixed_precision == "bf16" else torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if self.amp and config.mixed_precision == "fp16" else None
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            module.requires_grad_(False)
            module.eval()  # no dropout: a step is a pure function of its seed and the weights
        self.mean, self.std = self._encode(images)
        torch.manual_seed(config.seed)  # LoRA's gaussian init
        self.params = self._add_tokens(initializer) if config.method == "textual_inversion" else self._add_lora()
        if config.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
            if config.method == "textual_inversion":
                pipe.text_encoder.gradient_checkpointing_enable()
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=config.learning_rate, weight_decay=0.0)
        self._prompt_cache: dict[int, torch.Tensor] = {}

    # ------------------------------------------------------------------------------------------ set-up

    @torch.no_grad()
    def _encode(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent mean and std of every image and its mirror: N x 2 x C x h x w each (CPU, fp32)."""
        vae, res = self.pipe.vae, self.config.resolution
        means, stds = [], []
        for i in range(0, len(images), ENCODE_BATCH):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + ENCODE_BATCH])).permute(0, 3, 1, 2).float()
            if x.shape[-2:] != (res, res):
                x = F.interpolate(x, size=(res, res), mode="bicubic", antialias=True)
            x = (x / 127.5 - 1.0).clamp(-1, 1).to(self.device)
            both = torch.stack([x, x.flip(-1)], 1).flatten(0, 1)
            dist = vae.encode(both).latent_dist
            means.append(dist.mean.float().cpu().unflatten(0, (-1, 2)))
            stds.append(dist.std.float().cpu().unflatten(0, (-1, 2)))
        return torch.cat(means), torch.cat(stds)

    def _add_tokens(self, initializer: str) -> dict[str, torch.nn.Parameter]:
        tok, enc, cfg = self.pipe.tokenizer, self.pipe.text_encoder, self.config
        names = token_names(cfg.token, cfg.num_vectors)
        if tok.add_tokens(names) != len(names):
            raise ValueError(f"token {cfg.token!r} is already a word of the tokenizer; choose another token")
        self.token_ids = tok.convert_tokens_to_ids(names)
        enc.resize_token_embeddings(len(tok), mean_resizing=False)  # the new rows are set just below
        table = enc.get_input_embeddings()
        pieces = tok(initializer, add_special_tokens=False).input_ids
        pieces = pieces or tok("object", add_special_tokens=False).input_ids
        start = table.weight[pieces].detach().float().mean(0)
        # A real CLIP word is one piece; the tiny byte tokenizer's are letters, hence the mean.
        rows = torch.nn.Parameter(start.repeat(len(names), 1).clone())
        with torch.no_grad():
            table.weight[self.token_ids] = rows.to(table.weight.dtype)
        first = min(self.token_ids)

        def splice(module: torch.nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
            ids = inputs[0]
            mask = ids >= first
            if not mask.any():
                return out
            new = rows[(ids - first).clamp(min=0)].to(out.dtype)
            return torch.where(mask.unsqueeze(-1), new, out)

        self._hook = table.register_forward_hook(splice)
        return {"embeddings": rows}

    def _add_lora(self) -> dict[str, torch.nn.Parameter]:
        from peft import LoraConfig

        unet, rank = self.pipe.unet, self.config.rank
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
        return {name: p for name, p in unet.named_parameters() if p.requires_grad}

    # ---------------------------------------------------------------------------------------- training

    def _prompts(self, templates: list[int]) -> torch.Tensor:
        pipe = self.pipe
        if self.config.method == "lora":  # frozen text encoder: each caption is encoded once
            for t in set(templates) - set(self._prompt_cache):
                caption = TEMPLATES[t].format(self.config.token)
                with torch.no_grad():
                    self._prompt_cache[t] = pipe.encode_prompt(caption, self.device, 1, False)[0]
            return torch.cat([self._prompt_cache[t] for t in templates])
        captions = [TEMPLATES[t].format(self.config.token) for t in templates]
        return pipe.encode_prompt(captions, self.device, 1, False)[0]  # the path inference takes, with gradients

    def _loss(self, step: int) -> torch.Tensor:
        cfg, n = self.config, len(self.mean)
        g = torch.Generator().manual_seed(step_seed(cfg.seed, step))
        idx = torch.randint(n, (cfg.batch_size,), generator=g)
        flip = (torch.rand(cfg.batch_size, generator=g) < 0.5).long() if cfg.flip else torch.zeros_like(idx)
        templates = torch.randint(len(TEMPLATES), (cfg.batch_size,), generator=g).tolist()
        t = torch.randint(self.noise_scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=g)
        mean, std = self.mean[idx, flip], self.std[idx, flip]
        sample = torch.randn(mean.shape, generator=g)
        noise = torch.randn(mean.shape, generator=g)
        latents = ((mean + std * sample) * self.pipe.vae.config.scaling_factor).to(self.device)
        noise, t = noise.to(self.device), t.to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, t)
        else:
            target = noise
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            pred = self.pipe.unet(noisy, t, self._prompts(templates)).sample
        return F.mse_loss(pred.float(), target.float())

    def train(self, steps: int, hooks: Hooks = NO_HOOKS) -> float:
        """Run ``steps`` optimiser steps (stopping at ``config.steps``); returns their mean loss."""
        steps = min(steps, self.config.steps - self.step)
        total = 0.0
        for i in range(steps):
            hooks.stop_point("between personalisation steps")
            loss = self._loss(self.step)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            self.step += 1
            value = loss.item()
            total += value
            hooks.progress((i + 1) / steps, f"step {self.step}/{self.config.steps}, loss {value:.4f}")
        mean = total / max(steps, 1)
        if steps:
            self.history.append(LossPoint(self.step, mean))
        return mean

    @torch.no_grad()
    def loss_at(self, steps: range) -> float:
        """Mean loss on the batches and noise of ``steps`` without training: a noise-free measure of progress."""
        return sum(self._loss(s).item() for s in steps) / max(len(steps), 1)

    # --------------------------------------------------------------------------------------- outputs

    def weights(self) -> dict[str, torch.Tensor]:
        """The trained tensors, as the diffusers file stores them."""
        if self.config.method == "textual_inversion":
            return {self.config.token: self.params["embeddings"].detach().float().cpu().clone()}
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        state = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.pipe.unet))
        return {k: v.detach().float().cpu().clone() for k, v in state.items()}

    @torch.no_grad()
    def sample_grid(self) -> np.ndarray | None:
        """One row of ``grid_images`` images of the token, the same seeds every time (uint8 H x W x 3)."""
        cfg = self.config
        if cfg.grid_images == 0:
            return None
        k = cfg.grid_images
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            out = self.pipe(
                prompt=[GRID_PROMPT.format(cfg.token)] * k,
                num_inference_steps=cfg.grid_steps,
                guidance_scale=cfg.grid_guidance,
                height=cfg.resolution,
                width=cfg.resolution,
                generator=[torch.Generator("cpu").manual_seed(cfg.seed + i) for i in range(k)],
                output_type="pt",
            ).images
        side = min(cfg.resolution, GRID_TILE_MAX)
        out = F.interpolate(out.float().cpu(), size=(side, side), mode="bicubic", antialias=True)
        tiles = out.nan_to_num(0.0).clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1)
        return torch.cat(list(tiles), dim=1).numpy()

    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs (for ``backend.core.checkpoint.save_state``)."""
        return {
            "config": self.config.model_dump(mode="json"),
            "step": self.step,
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "history": [[h.step, h.loss] for h in self.history],
        }

    def restore(self, state: dict[str, Any]) -> None:
        if state["config"] != self.config.model_dump(mode="json"):
            raise ValueError("the checkpoint was trained with other settings; cannot resume")
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(state["params"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.history = [LossPoint(int(s), float(v)) for s, v in state["history"]]


# ------------------------------------------------------------------------------------------ artifacts


def save_concept(trainer: ConceptTrainer, folder: Path, base_model: str) -> None:
    """Write the diffusers-readable weights and ``concept.json`` into ``folder`` (replaced atomically)."""
    import safetensors.torch

    cfg = trainer.config
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    info = {
        "method": cfg.method,
        "base_model": base_model,
        "token": cfg.token,
        "num_vectors": cfg.num_vectors,
        "rank": cfg.rank,
        "steps": trainer.step,
    }
    if cfg.method == "textual_inversion":
        meta = {k: str(v) for k, v in info.items()}
        safetensors.torch.save_file(trainer.weights(), tmp / TI_FILE, metadata=meta)
    else:
        from diffusers import StableDiffusionPipeline

        StableDiffusionPipeline.save_lora_weights(
            tmp, unet_lora_layers=trainer.weights(), weight_name=LORA_FILE, safe_serialization=True
        )
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=1))
    shutil.rmtree(folder, ignore_errors=True)  # a stretch redone after a crash replaces its own files
    tmp.rename(folder)


def read_concept(folder: Path) -> dict[str, Any]:
    """The ``concept.json`` of a saved concept folder."""
    return json.loads((folder / INFO_FILE).read_text())


def load_concept(pipe: DiffusionPipeline, folder: Path) -> dict[str, Any]:
    """Load a saved concept into ``pipe`` through diffusers' own loaders; returns its ``concept.json``."""
    info = read_concept(folder)
    if info["method"] == "textual_inversion":
        pipe.load_textual_inversion(str(folder), weight_name=TI_FILE, token=info["token"], local_files_only=True)
    else:
        pipe.load_lora_weights(str(folder), weight_name=LORA_FILE, adapter_name="concept", local_files_only=True)
    return info


def unload_concept(pipe: DiffusionPipeline, info: dict[str, Any]) -> None:
    """Undo :func:`load_concept`."""
    if info["method"] == "textual_inversion":
        pipe.unload_textual_inversion(token_names(info["token"], int(info.get("num_vectors", 1))))
    else:
        pipe.unload_lora_weights()


def apply_concept(pipe: DiffusionPipeline, folder: Path | None) -> None:
    """Make ``folder``'s concept (None: no concept) the one loaded in a reused pipeline."""
    current: tuple[str, dict[str, Any]] | None = getattr(pipe, "_rebalance_concept", None)
    wanted = str(folder) if folder is not None else None
    if current is not None and current[0] == wanted:
        return
    if current is not None:
        unload_concept(pipe, current[1])
        pipe._rebalance_concept = None
    if folder is not None:
        pipe._rebalance_concept = (wanted, load_concept(pipe, folder))
