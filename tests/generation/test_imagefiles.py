"""PNG parameters/JSON chunks, WebP review copies, off-thread encoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from backend.generation.imagefiles import (
    AsyncEncoder,
    a1111_parameters,
    encode_png,
    encode_webp,
    parse_a1111_parameters,
    read_png_metadata,
)

META = {
    "prompt": "Bengal cat under the ottoman",
    "negative_prompt": "blurry, text",
    "steps": 25,
    "scheduler": "dpmpp_2m",
    "guidance": 7.5,
    "seed": 1776487815097645905,
    "width": 512,
    "height": 512,
    "model": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "slots": {"breed": "Bengal", "preposition": "under", "furniture": "ottoman"},
}


def image(h: int = 32, w: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_a1111_parameters_format() -> None:
    text = a1111_parameters(META)
    assert text == (
        "Bengal cat under the ottoman\n"
        "Negative prompt: blurry, text\n"
        "Steps: 25, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 1776487815097645905, Size: 512x512, "
        "Model: stable-diffusion-v1-5/stable-diffusion-v1-5"
    )
    parsed = parse_a1111_parameters(text)
    assert parsed["prompt"] == META["prompt"] and parsed["negative_prompt"] == "blurry, text"
    assert parsed["Seed"] == str(META["seed"]) and parsed["Sampler"] == "DPM++ 2M"
    assert "Negative prompt" not in a1111_parameters(META | {"negative_prompt": ""})
    assert "Denoising strength: 0.6" in a1111_parameters(META | {"strength": 0.6})


def test_png_round_trip_pixels_and_metadata() -> None:
    pixels = image()
    data = encode_png(pixels, META)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), pixels)
    text, meta = read_png_metadata(data)
    assert text == a1111_parameters(META)
    assert meta == META


def test_webp_review_is_bounded() -> None:
    big = encode_webp(image(512, 512), max_size=256)
    with Image.open(io.BytesIO(big)) as img:
        assert img.format == "WEBP" and img.size == (256, 256)
    with Image.open(io.BytesIO(encode_webp(image(64, 64), max_size=256))) as img:
        assert img.size == (64, 64)


def test_rejects_non_uint8_rgb() -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        encode_webp(np.zeros((8, 8, 3), np.float32))


def test_async_encoder_keeps_order_and_raises() -> None:
    arrays = [np.full((16, 16, 3), i, np.uint8) for i in range(6)]
    with AsyncEncoder(workers=2) as encoder:
        for arr in arrays:
            encoder.submit(encode_png, arr, {"prompt": str(arr[0, 0, 0])})
        results = encoder.wait()
        assert [read_png_metadata(r)[1]["prompt"] for r in results] == [str(i) for i in range(6)]
        encoder.submit(encode_png, np.zeros((4, 4), np.uint8))
        with pytest.raises(ValueError):
            encoder.wait()
