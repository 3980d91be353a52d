"""Decoded cache: build, reuse by content, skipped files, mixed sizes, cancellation, real CIFAR-10."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.core.hooks import Hooks, Stopped
from backend.data import cache as cache_mod
from backend.data.cache import DecodedDataset, build_cache, content_key, load_cache
from backend.data.images import decode_image
from backend.data.sources import load_digits, scan_imagefolder
from backend.data.transforms import channel_stats
from tests.data.conftest import write_folder


@pytest.fixture(params=["threads", "processes"], autouse=True)
def executor(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every folder test runs on both decode paths: threads (small folders) and worker processes (large
    ones; forced here by lowering the threshold, so the same small folders go through the process pool)."""
    if request.param == "processes":
        monkeypatch.setattr(cache_mod, "PROCESS_MIN_FILES", 0)
        monkeypatch.setattr(cache_mod, "_workers", lambda: 2)  # two real worker processes, even on one CPU
    return request.param


def test_build_and_load_round_trip(tmp_path: Path) -> None:
    write_folder(tmp_path / "ds", {"a": 6, "b": 4}, size=(10, 12))
    listing = scan_imagefolder(tmp_path / "ds")
    calls: list[float] = []
    ds = build_cache(listing, tmp_path / "cache", hooks=Hooks(progress=lambda f, m=None: calls.append(f)))
    assert ds.image_size == (10, 12)  # all images agree: their own size is kept
    assert isinstance(ds.train_x, np.memmap)
    assert ds.train_counts() == {"a": 5, "b": 3} and ds.test_counts() == {"a": 1, "b": 1}
    assert np.array_equal(ds.train_x[0], decode_image(listing.train_files[0]))
    assert calls[-1] == 1.0
    again = load_cache(ds.path)
    assert again.classes == ["a", "b"] and again.key == ds.key
    # One read per file gives the key two reads give (caches built before stay valid), and the integer
    # statistics of the tasks equal a float pass over the stored training images.
    assert ds.key == content_key(listing)
    mean, std = channel_stats(np.asarray(ds.train_x))
    np.testing.assert_allclose(again.info["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(again.info["std"], std, rtol=1e-5)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp")]


def test_same_content_elsewhere_reuses_cache(tmp_path: Path) -> None:
    write_folder(tmp_path / "one", {"a": 3, "b": 3})
    shutil.copytree(tmp_path / "one", tmp_path / "two")  # fresh mtimes, same bytes
    first = build_cache(scan_imagefolder(tmp_path / "one"), tmp_path / "cache")
    messages: list[str | None] = []
    second = build_cache(
        scan_imagefolder(tmp_path / "two"),
        tmp_path / "cache",
        hooks=Hooks(progress=lambda f, m=None: messages.append(m)),
    )
    assert second.path == first.path and "reused decoded cache" in messages
    (tmp_path / "two" / "a" / "000.png").unlink()
    third = build_cache(scan_imagefolder(tmp_path / "two"), tmp_path / "cache")
    assert third.key != first.key


def test_bad_images_skipped_and_reported(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "ds", {"a": 4, "b": 4})
    (root / "a" / "empty.png").write_bytes(b"")
    (root / "b" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    good = (root / "a" / "000.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    listing = scan_imagefolder(root, test_fraction=0.25)
    ds = build_cache(listing, tmp_path / "cache")
    skipped = dict(ds.info["skipped"])
    assert set(skipped) == {"a/empty.png", "b/corrupt.jpg", "b/truncated.png"}
    assert skipped["a/empty.png"] == "empty file"
    assert len(ds.train_y) + len(ds.test_y) == 8
    # Rows of the skipped files are gone, and the statistics cover only the images kept.
    mean, _ = channel_stats(np.asarray(ds.train_x))
    np.testing.assert_allclose(ds.info["mean"], mean, rtol=1e-6)
    assert ds.key == content_key(listing)


def test_mixed_sizes_become_32_unless_size_given(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "ds", {"a": 3, "b": 3}, size=(8, 8))
    Image.new("L", (20, 14), 128).save(root / "b" / "gray_big.png")
    ds = build_cache(scan_imagefolder(root), tmp_path / "cache")
    assert ds.image_size == (32, 32) and ds.info["mixed_sizes"] is True
    sized = build_cache(scan_imagefolder(root, image_size=(16, 24)), tmp_path / "cache")
    assert sized.image_size == (16, 24) and sized.key != ds.key


def test_stop_request_leaves_nothing(tmp_path: Path) -> None:
    write_folder(tmp_path / "ds", {"a": 3, "b": 3})
    with pytest.raises(Stopped):
        build_cache(scan_imagefolder(tmp_path / "ds"), tmp_path / "cache", hooks=Hooks(should_stop=lambda: True))
    assert list((tmp_path / "cache").iterdir()) == []


def test_array_source_cache(tmp_path: Path) -> None:
    src = load_digits()
    ds = build_cache(src, tmp_path / "cache")
    assert np.array_equal(np.asarray(ds.test_x), src.test_x)
    assert ds.key == content_key(src) and ds.key.startswith("digits-")


@pytest.mark.slow
def test_real_cifar10_counts_and_round_trip(cifar_cache: DecodedDataset, cifar10_root: Path) -> None:
    assert cifar_cache.classes[3] == "cat" and len(cifar_cache.classes) == 10
    assert set(cifar_cache.train_counts().values()) == {5000}
    assert set(cifar_cache.test_counts().values()) == {1000}
    assert cifar_cache.image_size == (32, 32)
    loaded = load_cache(cifar_cache.path)
    # Files are listed class by class in sorted order: row 3*5000 is the first cat.
    first_cat = sorted((cifar10_root / "train" / "cat").iterdir())[0]
    assert np.array_equal(loaded.train_x[3 * 5000], decode_image(first_cat))
    mean = np.asarray(loaded.info["mean"])
    assert np.allclose(mean, [0.491, 0.482, 0.447], atol=0.01)  # the well-known CIFAR-10 statistics
