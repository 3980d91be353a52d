"""GAN source images from a folder: recursive, any size or mode, corrupt files skipped and reported.

Decoding (modes, alpha, EXIF, bomb cap) is the datasets module's `decode_image`; this module adds the
folder walk and the square crop, so mixed photos, grayscale scans, palette PNGs, RGBA icons and 16-bit
TIFFs train as one set at the GAN's size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from backend.core.hooks import NO_HOOKS, Hooks
from backend.data.images import ImageDecodeError, decode_image, image_files

MAX_FILES = 200_000  # bounds memory: 200k x 64 x 64 x 3 bytes = 2.4 GB


@dataclass
class FolderImages:
    """Decoded images (uint8 N x size x size x 3), their relative paths, and what was skipped and why."""

    images: np.ndarray
    paths: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def display_name(path: Path, root: Path) -> str:
    """Relative path that is always valid UTF-8 (undecodable bytes become U+FFFD) for reports and JSON."""
    return os.fsencode(path.relative_to(root)).decode("utf-8", errors="replace")


def center_square(arr: np.ndarray, size: int) -> np.ndarray:
    """Center-crop uint8 (H, W, 3) to a square and resize to `size` px (antialiased Lanczos)."""
    h, w = arr.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = arr[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    img = Image.fromarray(np.ascontiguousarray(square))
    return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def load_image_folder(
    root: Path,
    size: int,
    hooks: Hooks = NO_HOOKS,
    max_files: int = MAX_FILES,
) -> FolderImages:
    """Decode every image under `root` (recursively, in sorted order) to `size` x `size` RGB.

    Files that are not images, links that lead outside `root` and images that fail to decode are
    listed in `skipped` with the reason.
    A stop request raises ``Stopped``.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"source path {str(root)!r} is not a directory")
    refused: list[tuple[str, str]] = []
    files = image_files(root, refused)
    if len(files) > max_files:
        raise ValueError(f"source folder has {len(files)} image files; at most {max_files} are supported")
    images: list[np.ndarray] = []
    paths: list[str] = []
    skipped = [{"path": name, "reason": why} for name, why in refused]
    for i, path in enumerate(files):
        hooks.stop_point("while loading source images")
        name = display_name(path, root)
        try:
            images.append(center_square(decode_image(path), size))
            paths.append(name)
        except (ImageDecodeError, OSError) as exc:
            # decode_image names the absolute path; the report names the file relative to the source.
            reason = str(exc).replace(str(path), "").lstrip(": ") or type(exc).__name__
            skipped.append({"path": name, "reason": reason[:200]})
        if i % 64 == 0 or i == len(files) - 1:
            hooks.progress((i + 1) / len(files), f"decoded {i + 1}/{len(files)} source images")
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return FolderImages(stacked, paths, skipped)
