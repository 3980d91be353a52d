"""Data-domain fixtures: tiny generated image folders and the real CIFAR-10 decoded once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.data.cache import DecodedDataset, build_cache, load_cache
from backend.data.sources import scan_imagefolder
from tests.conftest import built_once


def write_folder(
    root: Path,
    counts: dict[str, int],
    size: tuple[int, int] = (8, 8),
    *,
    split: bool = False,
    test_counts: dict[str, int] | None = None,
    seed: int = 0,
) -> Path:
    """Write random PNGs: ``<class>/<i>.png`` (or train/ and test/ trees when ``split``)."""
    rng = np.random.default_rng(seed)
    trees = [("train", counts), ("test", test_counts or counts)] if split else [("", counts)]
    for part, per_class in trees:
        for cname, n in per_class.items():
            d = root / part / cname if part else root / cname
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def cifar_cache(cifar10_root: Path, tmp_path_factory: pytest.TempPathFactory) -> DecodedDataset:
    """The real CIFAR-10 JPEGs decoded into a cache once per run (~20 s on 2 cores), shared by the workers."""
    folder = built_once(tmp_path_factory, "cifar10-cache", lambda d: build_cache(scan_imagefolder(cifar10_root), d))
    (key,) = [d for d in folder.iterdir() if (d / "meta.json").exists()]
    return load_cache(key)
