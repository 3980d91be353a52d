"""An SD 1.5-sized Stable Diffusion pipeline with random weights, for GPU speed benchmarks.

Same architecture as the real model (860M-parameter UNet, 512 px), so steps/s, memory and FLOP use are
those of real weights, with nothing downloaded. Built through the tokenizer/text-encoder helpers of
``backend.generation.tiny`` and loaded by the same ``load_pipeline`` as real weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from backend.generation.tiny import SD_SCHEDULE, _text_encoder, build_tokenizer

SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
SD15_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD15_TEXT = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}


def build_random_sd15_pipeline(dir: Path, seed: int = 0, device: str = "cpu") -> Path:
    """Create an SD 1.5-sized pipeline with random weights (fp16 files) in `dir`.

    `device` only speeds up initialisation (860M UNet parameters); the files are the same.
    """
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    with torch.device(device):
        pipe = StableDiffusionPipeline(
            vae=AutoencoderKL(**SD15_VAE),
            text_encoder=_text_encoder(tokenizer, vocab_size=49408, **SD15_TEXT),
            tokenizer=tokenizer,
            unet=UNet2DConditionModel(**SD15_UNET),
            scheduler=PNDMScheduler.from_config(SD_SCHEDULE, skip_prk_steps=True),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    dir.mkdir(parents=True, exist_ok=True)
    pipe.to(dtype=torch.float16).save_pretrained(dir)
    return dir
