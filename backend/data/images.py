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

import hashlib
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


class ImageDecodeError(ValueError):
    """An image file could not be decoded safely (empty, truncated, corrupt, too large)."""


def is_image_name(name: str) -> bool:
    """True when the file name has an image extension we try to decode."""
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def image_files(folder: Path, skipped: list[tuple[str, str]], relative_to: Path | None = None) -> list[Path]:
    """Every image file under ``folder``, recursively, in sorted order: the one folder walker.

    Hidden files and folders are ignored; other non-image files and links that lead outside
    ``relative_to`` (default ``folder``) are appended to ``skipped`` as (path relative to it, reason),
    so a link can never read outside the directory the operator allowed. Linked folders are not entered
    (as ``os.walk``). Walks with ``os.scandir``: the entry types come with the listing, so a 60,000-file
    tree costs no per-file system call.
    """
    root = Path(relative_to or folder)
    inside = root.resolve()
    files: list[Path] = []

    def rel_name(path: str) -> str:
        # A name that is not UTF-8 (e.g. Latin-1 from an old zip) is shown with U+FFFD, JSON-safe.
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        return rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")

    def walk(directory: str) -> None:
        with os.scandir(directory) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        subdirs = []
        for entry in entries:
            if entry.is_dir():
                if not entry.is_symlink():
                    subdirs.append(entry.path)
            elif os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
                skipped.append((rel_name(entry.path), "not an image file"))
            elif entry.is_symlink() and not Path(entry.path).resolve().is_relative_to(inside):
                skipped.append((rel_name(entry.path), "link leads outside the folder"))
            else:
                files.append(Path(entry.path))
        for sub in subdirs:
            walk(sub)

    if Path(folder).is_dir():
        walk(str(folder))
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


def _decode_pil(
    data: bytes, name: str, size: tuple[int, int] | None, max_pixels: int, background: tuple[int, int, int]
) -> Image.Image:
    """The file's bytes -> an 8-bit RGB PIL image (see ``decode_image``); raises ``ImageDecodeError``."""
    if not data:
        raise ImageDecodeError(f"{name}: empty file")
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > max_pixels:
            raise ImageDecodeError(f"{name}: {img.width}x{img.height} exceeds the {max_pixels:,}-pixel cap")
        if img.width == 0 or img.height == 0:
            raise ImageDecodeError(f"{name}: image has no pixels")
        img.load()  # raises on truncated data (ImageFile.LOAD_TRUNCATED_IMAGES stays False)
        # in place: without an orientation tag, the default would copy every image for nothing.
        ImageOps.exif_transpose(img, in_place=True)
        img = _to_rgb(img, background)
        if size is not None and (img.height, img.width) != tuple(size):
            img = img.resize((size[1], size[0]), Image.Resampling.BICUBIC)
        if img.mode != "RGB" or len(img.getbands()) != 3:
            raise ImageDecodeError(f"{name}: decoded to unexpected mode {img.mode}")
        return img
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"{name}: decompression bomb refused ({exc})") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageDecodeError(f"{name}: not a recognised image format") from exc
    except Exception as exc:  # untrusted input: any decoder failure is a decode error, never a crash
        raise ImageDecodeError(f"{name}: corrupt or truncated image ({type(exc).__name__}: {exc})") from exc


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
    arr = np.asarray(_decode_pil(data, name, size, max_pixels, background), dtype=np.uint8)
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


def _plain_jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(h, w) of a baseline/progressive 3-component JPEG without EXIF, from its markers; None otherwise.

    Such files decode identically in torchvision's libjpeg-turbo binding and in PIL (both libjpeg-turbo,
    same defaults) with nothing to rotate; everything else (EXIF, grey, CMYK, odd files) goes through PIL.
    """
    if data[:2] != b"\xff\xd8":
        return None
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xE1 and data[pos + 4 : pos + 8] == b"Exif":
            return None  # a possible orientation tag: PIL's exif_transpose decides
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            if pos + 10 > end or data[pos + 9] != 3:
                return None
            return int.from_bytes(data[pos + 5 : pos + 7], "big"), int.from_bytes(data[pos + 7 : pos + 9], "big")
        if marker == 0xDA:  # start of scan before any frame header: malformed
            return None
        pos += 2 + length
    return None


def _decode_jpegs(datas: list[bytes]) -> list[bytes] | None:
    """Decode plain JPEGs in one libjpeg-turbo call (torchvision) -> RGB bytes each; None if any fails.

    Several times faster than PIL for small images, whose cost is PIL's Python header parsing.
    """
    try:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    try:
        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        out = decode_jpeg(tensors, mode=ImageReadMode.RGB)
    except RuntimeError:  # a corrupt file: PIL decodes the task's files one by one and names it
        return None
    return [t.permute(1, 2, 0).contiguous().numpy().tobytes() for t in out]


def decode_rows(
    out_path: str,
    offset: int,
    row0: int,
    files: list[str],
    size: tuple[int, int],
    resize: bool,
) -> tuple[list[bytes], dict[int, str], np.ndarray, bool]:
    """Read, hash and decode ``files`` into rows ``row0...`` of the ``.npy`` at ``out_path``: one decode task.

    ``offset`` is where the array's data start in the file (after the header). Each file is read once: the
    bytes are hashed (BLAKE2b-128) and decoded from memory; the task's rows go to the file in one write.
    Plain JPEGs of the target size decode in one batched libjpeg-turbo call, everything else through
    ``decode_image``'s PIL path (same pixels; see ``_plain_jpeg_size``).
    Returns ``(digests, failed, histogram, mixed)``: a digest per file (of the bytes read; b"" for an
    unreadable file), {position in ``files``: reason} for files that did not decode (their rows stay zero),
    the int64 (3, 256) per-channel histogram of the decoded pixels (exact integer statistics), and whether
    an image of another size was met with ``resize`` False (decoding then stops, hashing goes on).

    A module-level function of this module so decode processes need nothing else.
    """
    h, w = size
    row = h * w * 3
    rows = bytearray(row * len(files))
    digests: list[bytes] = []
    failed: dict[int, str] = {}
    mixed = False
    jpegs: list[tuple[int, bytes]] = []  # (position, bytes) of plain JPEGs of the target size
    others: list[tuple[int, bytes]] = []
    for i, name in enumerate(files):
        try:
            with open(name, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            digests.append(b"")
            failed[i] = f"unreadable ({exc.strerror or type(exc).__name__})"
            continue
        digests.append(hashlib.blake2b(data, digest_size=16).digest())
        (jpegs if _plain_jpeg_size(data) == (h, w) else others).append((i, data))
    decoded = _decode_jpegs([d for _, d in jpegs]) if jpegs else []
    if decoded is None:
        others, decoded = sorted(others + jpegs), []
    for (i, _), pixels in zip(jpegs, decoded, strict=False):
        rows[i * row : (i + 1) * row] = pixels
    for i, data in others:
        try:
            img = _decode_pil(data, files[i], None, MAX_PIXELS, (0, 0, 0))
        except ImageDecodeError as exc:
            failed[i] = str(exc).split(": ", 1)[-1]
            continue
        if (img.height, img.width) != (h, w):
            if not resize:
                mixed = True
                break
            img = img.resize((w, h), Image.Resampling.BICUBIC)
        rows[i * row : (i + 1) * row] = img.tobytes()  # RGB, row-major: exactly the (h, w, 3) uint8 layout
    fd = os.open(out_path, os.O_WRONLY)
    try:
        os.pwrite(fd, rows, offset + row0 * row)
    finally:
        os.close(fd)
    # One bincount over the task's pixels, channel c counted at c * 256 + level. Failed rows are zero:
    # they land at level 0 and are taken off again.
    pixels = np.frombuffer(rows, dtype=np.uint8).reshape(-1, 3)
    hist = np.bincount((pixels + _CHANNEL_OFFSETS).ravel(), minlength=768).reshape(3, 256)
    hist[:, 0] -= len(failed) * h * w
    return digests, failed, hist, mixed


_CHANNEL_OFFSETS = np.array([0, 256, 512], dtype=np.uint16)
