"""Randomly initialised Stable Diffusion pipelines built locally, without any download.

`build_tiny_pipeline` makes a real `StableDiffusionPipeline` small enough to generate on a CPU in
milliseconds per step: tests and the offline demo load it through the same `from_pretrained` path as
a Hugging Face model. (The SD 1.5-sized random pipeline for GPU benchmarks is ``benchmarks/sd15.py``.)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import CLIPTextModel, CLIPTokenizer

# diffusers and transformers cost seconds to import; they are imported by the builders that need them.

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_TOKENS = 77  # CLIP's context length; the pipelines truncate prompts to it

# The noise schedule every SD 1.x checkpoint ships with (scheduler_config.json of SD 1.5); passed
# through `from_config`, which ignores the keys a scheduler class does not take.
SD_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "clip_sample": False,
    "prediction_type": "epsilon",
}

TINY_UNET = {
    "sample_size": 8,  # latent side; x8 VAE -> 64 px default, like 64 -> 512 for SD 1.5
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": (32, 64),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}
# Four blocks so the VAE downsamples by 8 like the real one: `resolution` means the same thing for
# `tiny` and for SD 1.5, and the UNet works on a 64x smaller latent.
TINY_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (8, 16, 16, 16),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
}
TINY_TAESD = {
    "encoder_block_out_channels": (16, 16, 16, 16),
    "decoder_block_out_channels": (16, 16, 16, 16),
    "num_encoder_blocks": (1, 1, 1, 1),
    "num_decoder_blocks": (1, 1, 1, 1),
}


def build_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP BPE tokenizer with no merges: every UTF-8 byte is a token, so any prompt
    tokenises (one token per byte) without downloading the real 49k-token vocabulary."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for char in alphabet:
        vocab[char] = len(vocab)
    for char in alphabet:  # CLIP's BPE marks the last symbol of a word with </w>
        vocab[char + "</w>"] = len(vocab)
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)


def _text_encoder(tokenizer: CLIPTokenizer, **config: int | str) -> CLIPTextModel:
    from transformers import CLIPTextConfig, CLIPTextModel

    text_config = CLIPTextConfig(
        vocab_size=max(len(tokenizer), int(config.pop("vocab_size", 0))),
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config,
    )
    return CLIPTextModel(text_config).eval()


def build_tiny_pipeline(dir: Path, seed: int = 0) -> Path:
    """Create a randomly initialised tiny SD pipeline in `dir` (model_index.json + components).

    Deterministic for a given seed. Returns `dir`.
    """
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**TINY_VAE),
        text_encoder=_text_encoder(
            tokenizer,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            projection_dim=32,
        ),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**TINY_UNET),
        scheduler=DPMSolverMultistepScheduler.from_config(SD_SCHEDULE, algorithm_type="dpmsolver++"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(dir)
    return dir


def build_tiny_taesd(dir: Path, seed: int = 0) -> Path:
    """Create a randomly initialised TAESD-style `AutoencoderTiny` matching the tiny pipeline's latents."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    dir.mkdir(parents=True, exist_ok=True)
    AutoencoderTiny(**TINY_TAESD).save_pretrained(dir)
    return dir
