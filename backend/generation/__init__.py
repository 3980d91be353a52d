"""Synthetic image generation: prompt vocabularies, Stable Diffusion (diffusers) and DCGAN."""
