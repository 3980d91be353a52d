"""Image files for generated images: PNG with generation parameters, WebP review copies.

The PNG carries a `parameters` text chunk in the format A1111-style tools read and write
(prompt / "Negative prompt:" / "Steps: …, Sampler: …, CFG scale: …, Seed: …, Size: WxH, Model: …")
plus a `rebalance` chunk with the full metadata as JSON, so a file copied out of the workspace
still says how to regenerate it. `AsyncEncoder` encodes on a thread pool so the generation loop
never waits on zlib or libwebp.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from backend.generation.schedulers import sampler_label

JSON_KEY = "rebalance"
WEBP_QUALITY = 90


def a1111_parameters(meta: dict[str, Any]) -> str:
    """The `parameters` text of `meta` (keys: prompt, negative_prompt, steps, scheduler, guidance,
    seed, width, height, model, strength)."""
    lines = [meta.get("prompt", "")]
    if meta.get("negative_prompt"):
        lines.append(f"Negative prompt: {meta['negative_prompt']}")
    fields = [
        ("Steps", meta.get("steps")),
        ("Sampler", sampler_label(meta["scheduler"]) if meta.get("scheduler") else None),
        ("CFG scale", meta.get("guidance")),
        ("Seed", meta.get("seed")),
        ("Size", f"{meta['width']}x{meta['height']}" if "width" in meta and "height" in meta else None),
        ("Model", meta.get("model")),
        ("Denoising strength", meta.get("strength")),
    ]
    lines.append(", ".join(f"{key}: {value}" for key, value in fields if value is not None))
    return "\n".join(lines)


def parse_a1111_parameters(text: str) -> dict[str, str]:
    """Inverse of `a1111_parameters` for the fields we write (values stay strings)."""
    lines = text.split("\n")
    result = {"prompt": lines[0]}
    for line in lines[1:-1]:
        if line.startswith("Negative prompt: "):
            result["negative_prompt"] = line.removeprefix("Negative prompt: ")
    for part in lines[-1].split(", ") if len(lines) > 1 else []:
        key, _, value = part.partition(": ")
        result[key] = value
    return result


def encode_png(image: np.ndarray, meta: dict[str, Any] | None = None) -> bytes:
    """H x W x 3 uint8 -> PNG bytes with the JSON metadata chunk, plus the `parameters` chunk when
    `meta` has a prompt (GAN and imported images have none)."""
    info = PngImagePlugin.PngInfo()
    if meta and "prompt" in meta:
        info.add_itxt("parameters", a1111_parameters(meta))
    if meta:
        info.add_itxt(JSON_KEY, json.dumps(meta, sort_keys=True, default=str))
    buffer = io.BytesIO()
    Image.fromarray(_check(image)).save(buffer, format="PNG", pnginfo=info, compress_level=6)
    return buffer.getvalue()


def read_png_metadata(data: bytes) -> tuple[str | None, dict | None]:
    """The (`parameters` text, JSON metadata) stored in PNG bytes."""
    with Image.open(io.BytesIO(data)) as img:
        text = img.text  # type: ignore[attr-defined]
        meta = json.loads(text[JSON_KEY]) if JSON_KEY in text else None
        return text.get("parameters"), meta


def encode_webp(image: np.ndarray, max_size: int = 256) -> bytes:
    """H x W x 3 uint8 -> WebP bytes, downscaled (Lanczos) so neither side exceeds `max_size`."""
    img = Image.fromarray(_check(image))
    if max(img.size) > max_size:
        img.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    img.save(buffer, format="WEBP", quality=WEBP_QUALITY, method=4)
    return buffer.getvalue()


def _check(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 uint8 image, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


class AsyncEncoder:
    """Runs encode jobs on a small thread pool (PIL releases the GIL while compressing).

    `submit(fn, *args)` returns a Future; `wait()` returns every pending result in submission
    order and re-raises the first failure. Use as a context manager.
    """

    def __init__(self, workers: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="encode")
        self._pending: list[Future] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future = self._pool.submit(fn, *args)
        self._pending.append(future)
        return future

    def wait(self) -> list[Any]:
        pending, self._pending = self._pending, []
        return [future.result() for future in pending]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> AsyncEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
