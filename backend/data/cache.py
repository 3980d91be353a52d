"""The decoded cache: each dataset decoded once into uint8 arrays under ``<cache_root>/<content_key>/``.

Layout: ``train_x.npy`` (N,H,W,3 uint8), ``train_y.npy`` (int64), ``test_x.npy``, ``test_y.npy`` and
``meta.json`` (classes, counts, full-train-set channel mean/std, skipped files, source info). Loading maps
the image arrays (``np.load(mmap_mode="r")``), so even CIFAR-10 loads in milliseconds and pages in lazily.

Content key: a BLAKE2b hash of every file's relative path, label, size and *bytes* (plus the decode
parameters and the cache format version). Hashing bytes rather than mtimes costs one extra read of the
files, about a second for CIFAR-10, and buys reuse exactly when the content is the same: a folder copied
elsewhere, or the same zip uploaded twice (which extracts to a fresh directory with fresh mtimes).
Array sources (CIFAR-10, digits) hash their decoded arrays.

Atomicity: everything is written into a temporary sibling directory that is renamed into place last,
so a crash never leaves a half-written cache that a later load would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backend.core.hooks import NO_HOOKS, Hooks
from backend.data.images import ImageDecodeError, decode_image, probe_size, resize_rgb
from backend.data.sources import DEFAULT_SIZE, MAX_NATIVE_SIDE, ArraySource, FolderListing
from backend.data.transforms import channel_stats

CACHE_VERSION = 1
DECODE_THREADS = 4  # Pillow releases the GIL while decoding, so threads use every core without pickling
BATCH = 256  # files per decode task: large enough to amortise scheduling, small enough for smooth progress


@dataclass
class DecodedDataset:
    """A decoded dataset. Image arrays are usually read-only memory maps; labels index ``classes``."""

    train_x: np.ndarray  # uint8 (N, H, W, 3)
    train_y: np.ndarray  # int64 (N,)
    test_x: np.ndarray  # uint8 (M, H, W, 3)
    test_y: np.ndarray  # int64 (M,)
    classes: list[str]
    info: dict = field(default_factory=dict)
    key: str = ""
    path: Path | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train_x.shape[1]), int(self.train_x.shape[2])

    def train_counts(self) -> dict[str, int]:
        return _counts(self.train_y, self.classes)

    def test_counts(self) -> dict[str, int]:
        return _counts(self.test_y, self.classes)


def _counts(labels: np.ndarray, classes: list[str]) -> dict[str, int]:
    bins = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    return {c: int(n) for c, n in zip(classes, bins, strict=True)}


def _hash_file(path: Path) -> bytes:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).digest()


def content_key(source: ArraySource | FolderListing) -> str:
    """The cache key of ``source`` (see the module docstring)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"rebalance-cache-v{CACHE_VERSION}".encode())
    if isinstance(source, ArraySource):
        h.update(json.dumps(["array", source.name, source.classes, source.info], sort_keys=True).encode())
        for arr in (source.train_x, source.train_y, source.test_x, source.test_y):
            h.update(str(arr.shape).encode())
            h.update(np.ascontiguousarray(arr).data)
        return f"{source.name}-{h.hexdigest()}"
    params = ["folder", source.classes, source.image_size and list(source.image_size), source.split]
    h.update(json.dumps(params).encode())
    for part, files, labels in (
        ("train", source.train_files, source.train_y),
        ("test", source.test_files, source.test_y),
    ):
        with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
            digests = list(pool.map(_hash_file, files))
        for path, label, digest in zip(files, labels.tolist(), digests, strict=True):
            h.update(f"{part}\0{path.relative_to(source.root).as_posix()}\0{label}\0".encode())
            h.update(digest)
    return f"folder-{h.hexdigest()}"


class _MixedSizes(Exception):
    """Raised inside a decode pass when an image's size differs from the tentative target size."""


def _decode_into(
    out: np.ndarray,
    files: list[Path],
    size: tuple[int, int],
    resize: bool,
    progress: Callable[[int], None],
) -> dict[int, str]:
    """Decode ``files`` into rows of ``out`` in parallel; returns {index: reason} for those that failed.

    With ``resize`` False an image of another size raises ``_MixedSizes`` (the caller picks a common size).
    """
    failed: dict[int, str] = {}
    mixed = threading.Event()

    def work(start: int) -> dict[int, str]:
        bad = {}
        for i in range(start, min(start + BATCH, len(files))):
            if mixed.is_set():
                break
            try:
                arr = decode_image(files[i])
            except ImageDecodeError as exc:
                bad[i] = str(exc).split(": ", 1)[-1]
                continue
            if arr.shape[:2] != size:
                if not resize:
                    mixed.set()
                    break
                arr = resize_rgb(arr, size)
            out[i] = arr
        return bad

    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        for bad in pool.map(work, range(0, len(files), BATCH)):
            failed.update(bad)
            if mixed.is_set():
                raise _MixedSizes
            progress(BATCH)
    return failed


def _first_size(files: list[Path]) -> tuple[int, int] | None:
    """The size of the first file whose header reads, or None if none does."""
    for path in files:
        try:
            return probe_size(path)
        except ImageDecodeError:
            continue
    return None


def _write_array(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def build_cache(
    source: ArraySource | FolderListing,
    cache_root: str | Path,
    *,
    hooks: Hooks = NO_HOOKS,
) -> DecodedDataset:
    """Decode ``source`` into ``cache_root/<content_key>/`` (or reuse it if present) and load it.

    ``hooks.progress`` is called as files decode; a stop request between batches abandons the build
    with ``Stopped`` (nothing is left behind).
    """
    progress = hooks.progress
    cache_root = Path(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    progress(0.0, "hashing source")
    key = content_key(source)
    final = cache_root / key
    if (final / "meta.json").exists():
        progress(1.0, "reused decoded cache")
        return load_cache(final)
    tmp = cache_root / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        skipped = _fill(source, tmp, hooks)
        train_y = np.load(tmp / "train_y.npy")
        test_y = np.load(tmp / "test_y.npy")
        mean, std = channel_stats(np.load(tmp / "train_x.npy", mmap_mode="r"))
        meta = {
            "version": CACHE_VERSION,
            "key": key,
            "classes": source.classes,
            "image_size": list(np.load(tmp / "train_x.npy", mmap_mode="r").shape[1:3]),
            "train_counts": _counts(train_y, source.classes),
            "test_counts": _counts(test_y, source.classes),
            "mean": mean.tolist(),
            "std": std.tolist(),
            "skipped": [list(s) for s in skipped],
            "info": source.info,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process finished the same key first (the rename target is a non-empty directory).
            if not (final / "meta.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(1.0, "decoded cache ready")
    return load_cache(final)


def _fill(
    source: ArraySource | FolderListing,
    tmp: Path,
    hooks: Hooks,
) -> list[tuple[str, str]]:
    """Write the four arrays into ``tmp``; returns the (file, reason) pairs skipped while decoding."""
    if isinstance(source, ArraySource):
        for name in ("train_x", "train_y", "test_x", "test_y"):
            _write_array(tmp / f"{name}.npy", getattr(source, name))
        return []
    files_all = source.train_files + source.test_files
    fixed = source.image_size is not None
    size = source.image_size or _first_size(files_all) or DEFAULT_SIZE
    if not fixed and max(size) > MAX_NATIVE_SIDE:
        raise ValueError(
            f"images are {size[1]}x{size[0]} pixels; pass image_size (e.g. [64, 64]) to store them smaller"
        )
    try:
        skipped = _decode_folder(source, tmp, size, fixed, hooks)
        mixed = False
    except _MixedSizes:
        # The images disagree on size: decode again, everything resized to the default size.
        size, mixed = DEFAULT_SIZE, True
        skipped = _decode_folder(source, tmp, size, True, hooks)
    source.info.update({"image_size": list(size), "mixed_sizes": mixed})
    return skipped


def _decode_folder(
    source: FolderListing,
    tmp: Path,
    size: tuple[int, int],
    resize: bool,
    hooks: Hooks,
) -> list[tuple[str, str]]:
    skipped = list(source.skipped)
    total = len(source.train_files) + len(source.test_files)
    done = 0
    h, w = size

    def tick(n: int) -> None:
        nonlocal done
        done = min(done + n, total)
        hooks.progress(0.1 + 0.9 * done / max(total, 1), f"decoded {done:,}/{total:,} images")
        hooks.stop_point("while decoding the dataset")

    for part, files, labels in (
        ("train", source.train_files, source.train_y),
        ("test", source.test_files, source.test_y),
    ):
        path = tmp / f"{part}_x.npy"
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(files), h, w, 3))
        try:
            failed = _decode_into(out, files, (h, w), resize, tick)
            out.flush()
        finally:
            del out
        if failed:
            # Rare (a readable header over broken data): compact the rows once.
            keep = np.setdiff1d(np.arange(len(files)), list(failed))
            compact = np.asarray(np.load(path, mmap_mode="r")[keep])
            _write_array(path, compact)
            labels = labels[keep]
            skipped += [(files[i].relative_to(source.root).as_posix(), why) for i, why in sorted(failed.items())]
        _write_array(tmp / f"{part}_y.npy", np.asarray(labels, dtype=np.int64))
    train_y = np.load(tmp / "train_y.npy")
    empty = [c for c, n in _counts(train_y, source.classes).items() if n == 0]
    if empty:
        raise ValueError(f"no training image of class {empty} could be decoded")
    return skipped


def load_cache(path: str | Path) -> DecodedDataset:
    """Memory-map a cache directory written by :func:`build_cache`."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.exists():
        raise ValueError(f"no decoded cache at {path}")
    meta = json.loads(meta_path.read_text())
    info = dict(meta.get("info", {}))
    info.update({k: meta[k] for k in ("mean", "std", "skipped", "train_counts", "test_counts") if k in meta})
    return DecodedDataset(
        train_x=np.load(path / "train_x.npy", mmap_mode="r"),
        train_y=np.load(path / "train_y.npy"),
        test_x=np.load(path / "test_x.npy", mmap_mode="r"),
        test_y=np.load(path / "test_y.npy"),
        classes=list(meta["classes"]),
        info=info,
        key=meta["key"],
        path=path,
    )
