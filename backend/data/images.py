"""Decode one untrusted image file into a uint8 H x W x 3 RGB array, or fail with ``ImageDecodeError``.

Handled: any PIL-readable format; grayscale, palette, CMYK, 16-bit and 32-bit integer modes; alpha
(composited onto ``background``, black by default: the same zero fill the augmentations use); EXIF
orientation; multi-frame files (first frame). Refused: empty, truncated, corrupt and unidentifiable
files, and images with more than ``max_pixels`` pixels (decompression bombs).

The pixel cap is checked on the header before any pixel is decoded. We check it ourselves rather than
by changing ``PIL.Image.MAX_IMAGE_PIXELS`` or the warning filters, which are process-global and would
race across the decoding threads. Our cap sits below PIL's warning threshold, so every image PIL would
merely warn about is an ``ImageDecodeError`` here, and PIL's ``DecompressionBombError`` becomes one too.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# About a 7000 x 5700 photo, below PIL's own warning threshold (89M pixels) so our check always fires first.
MAX_PIXELS = 40_000_000
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


JPEG_MAGIC = b"\xff\xd8\xff"  # start of image + the first marker's prefix: Pillow's own test for JPEG


class ImageDecodeError(ValueError):
    """An image file could not be decoded safely (empty, truncated, corrupt, too large)."""


def is_image_name(name: str) -> bool:
    """True when the file name has an image extension we try to decode."""
    # os.path, not pathlib: this runs once per file of a folder scan (60,000 for CIFAR-10).
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def image_files(folder: Path, skipped: list[tuple[str, str]], relative_to: Path | None = None) -> list[Path]:
    """Every image file under ``folder``, recursively, in sorted order: the one folder walker.

    Hidden files and folders are ignored; other non-image files and links that lead outside
    ``relative_to`` (default ``folder``) are appended to ``skipped`` as (path relative to it, reason),
    so a link can never read outside the directory the operator allowed.
    """
    root = Path(relative_to or folder)
    inside = root.resolve()
    files: list[Path] = []
    # String work and os.scandir's cached entry types, not a Path and a stat per file: a 60,000-file folder
    # lists in a fraction of a second (pathlib's per-file parsing took seconds).
    root_prefix = len(os.path.join(str(root), ""))
    stack = [str(folder)]
    while stack:
        dirpath = stack.pop()
        with os.scandir(dirpath) as it:
            entries = sorted(it, key=lambda e: e.name)
        subdirs = []
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            if entry.is_dir():
                if not entry.is_symlink():  # as os.walk: a linked folder is never walked into
                    subdirs.append(entry.path)
                continue
            # A name that is not UTF-8 (e.g. Latin-1 from an old zip) is shown with U+FFFD, JSON-safe.
            rel = entry.path[root_prefix:].replace(os.sep, "/")
            rel = rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            if not is_image_name(name):
                skipped.append((rel, "not an image file"))
            elif entry.is_symlink() and not Path(entry.path).resolve().is_relative_to(inside):
                skipped.append((rel, "link leads outside the folder"))
            else:
                files.append(Path(entry.path))
        stack.extend(reversed(subdirs))  # depth-first in sorted order, as os.walk's top-down walk
    return files


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; alpha is composited onto ``background``."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        # 16-bit sources use the full 0-65535 range; 'I'/'F' images are treated the same when they exceed 255.
        if img.mode.startswith("I;16") or float(arr.max(initial=0)) > 255:
            arr = arr.astype(np.float64) / 257.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def decode_image(
    src: str | Path | bytes,
    *,
    size: tuple[int, int] | None = None,
    max_pixels: int = MAX_PIXELS,
    background: tuple[int, int, int] = (0, 0, 0),
) -> np.ndarray:
    """Decode ``src`` (a path or the file's bytes) to uint8 (H, W, 3) RGB, resized to ``size`` = (h, w) if given.

    Resizing uses PIL's antialiased bicubic filter. Raises ``ImageDecodeError`` naming the file.
    """
    name = str(src) if not isinstance(src, bytes) else "<bytes>"
    data = src if isinstance(src, bytes) else Path(src).read_bytes()
    if not data:
        raise ImageDecodeError(f"{name}: empty file")
    try:
        # A JPEG (the common case) goes straight to Pillow's JPEG reader: the same reader Pillow's own
        # probing picks for these bytes (no other format starts with FF D8 FF), without the probing,
        # 15 % of a small JPEG's decode.
        img = Image.open(io.BytesIO(data), formats=("JPEG",) if data[:3] == JPEG_MAGIC else None)
        if img.width * img.height > max_pixels:
            raise ImageDecodeError(f"{name}: {img.width}x{img.height} exceeds the {max_pixels:,}-pixel cap")
        if img.width == 0 or img.height == 0:
            raise ImageDecodeError(f"{name}: image has no pixels")
        img.load()  # raises on truncated data (ImageFile.LOAD_TRUNCATED_IMAGES stays False)
        # A JPEG keeps its orientation only in an APP1 EXIF block (img.info["exif"]): without one there is
        # nothing to turn, and skipping the EXIF parse saves ~15% of a small JPEG's decode. Other formats
        # (TIFF tags, PNG eXIf, WebP) always go through exif_transpose.
        if img.format != "JPEG" or "exif" in img.info:
            img = ImageOps.exif_transpose(img)
        img = _to_rgb(img, background)
        if size is not None and (img.height, img.width) != tuple(size):
            img = img.resize((size[1], size[0]), Image.Resampling.BICUBIC)
        arr = np.asarray(img, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"{name}: decompression bomb refused ({exc})") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageDecodeError(f"{name}: not a recognised image format") from exc
    except Exception as exc:  # untrusted input: any decoder failure is a decode error, never a crash
        raise ImageDecodeError(f"{name}: corrupt or truncated image ({type(exc).__name__}: {exc})") from exc
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageDecodeError(f"{name}: decoded to unexpected shape {arr.shape}")
    return arr


def probe_size(src: str | Path, *, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(h, w) from the header only, after EXIF orientation; raises ``ImageDecodeError`` like ``decode_image``."""
    try:
        with Image.open(src) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"{src}: decompression bomb refused ({exc})") from exc
    except Exception as exc:
        raise ImageDecodeError(f"{src}: not a readable image ({type(exc).__name__})") from exc
    if w * h > max_pixels:
        raise ImageDecodeError(f"{src}: {w}x{h} exceeds the {max_pixels:,}-pixel cap")
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)  # orientations 5-8 swap width and height


def resize_rgb(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 (H, W, 3) array to ``size`` = (h, w) with PIL's antialiased bicubic filter."""
    if arr.shape[:2] == tuple(size):
        return arr
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))
    return np.asarray(img.resize((size[1], size[0]), Image.Resampling.BICUBIC), dtype=np.uint8)
