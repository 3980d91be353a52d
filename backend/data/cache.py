"""The decoded cache: each dataset decoded once into uint8 arrays under ``<cache_root>/<content_key>/``.

Layout: ``train_x.npy`` (N,H,W,3 uint8), ``train_y.npy`` (int64), ``test_x.npy``, ``test_y.npy`` and
``meta.json`` (classes, counts, full-train-set channel mean/std, skipped files, source info). Loading maps
the image arrays (``np.load(mmap_mode="r")``), so even CIFAR-10 loads in milliseconds and pages in lazily.

Content key: a BLAKE2b hash of every file's relative path, label, size and *bytes* (plus the decode
parameters and the cache format version). Hashing bytes rather than mtimes buys reuse exactly when the
content is the same: a folder copied elsewhere, or the same zip uploaded twice (which extracts to a fresh
directory with fresh mtimes). A folder is read once: each file's bytes are hashed and decoded in the same
task (``decode_worker.py``, in worker processes sized to the CPUs for large folders), the channel
statistics come from the tasks' integer sums, and an identical cache is found after the decode. Array
sources (CIFAR-10, digits) hash their decoded arrays.

Atomicity: everything is written into a temporary sibling directory that is renamed into place last,
so a crash never leaves a half-written cache that a later load would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backend.core.hooks import NO_HOOKS, Hooks
from backend.core.tmpdirs import make_tmp_dir
from backend.data.decode_worker import TaskResult, WorkerPool, decode_rows
from backend.data.images import ImageDecodeError, probe_size
from backend.data.sources import DEFAULT_SIZE, MAX_NATIVE_SIDE, ArraySource, FolderListing
from backend.data.transforms import channel_stats

CACHE_VERSION = 1
DECODE_THREADS = 4  # Pillow releases the GIL while decoding, so threads use every core without pickling
BATCH = 256  # files per decode task: large enough to amortise scheduling, small enough for smooth progress
PROCESS_MIN_FILES = 4096  # below this, threads: starting worker processes costs more than it saves


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
    """The cache key of ``source`` (see the module docstring). ``build_cache`` computes the same key for a
    folder from the bytes it reads while decoding; this reads every file once more."""
    if isinstance(source, ArraySource):
        h = _key_hash()
        h.update(json.dumps(["array", source.name, source.classes, source.info], sort_keys=True).encode())
        for arr in (source.train_x, source.train_y, source.test_x, source.test_y):
            h.update(str(arr.shape).encode())
            h.update(np.ascontiguousarray(arr).data)
        return f"{source.name}-{h.hexdigest()}"
    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        digests = {part: list(pool.map(_hash_file, files)) for part, files, _ in _parts(source)}
    return _folder_key(source, digests)


def _key_hash() -> hashlib.blake2b:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"rebalance-cache-v{CACHE_VERSION}".encode())
    return h


def _parts(source: FolderListing) -> list[tuple[str, list[Path], np.ndarray]]:
    return [("train", source.train_files, source.train_y), ("test", source.test_files, source.test_y)]


def _folder_key(source: FolderListing, digests: dict[str, list[bytes]]) -> str:
    """The key of a folder from each file's BLAKE2b-128 digest, by part, in listing order."""
    h = _key_hash()
    params = ["folder", source.classes, source.image_size and list(source.image_size), source.split]
    h.update(json.dumps(params).encode())
    # Listed files lie under the root (the walker builds them from it): slicing the string gives
    # relative_to().as_posix() without pathlib's per-file parsing.
    prefix = len(os.path.join(str(source.root), ""))
    for part, files, labels in _parts(source):
        for path, label, digest in zip(files, labels.tolist(), digests[part], strict=True):
            rel = str(path)[prefix:].replace(os.sep, "/")
            h.update(f"{part}\0{rel}\0{label}\0".encode())
            h.update(digest)
    return f"folder-{h.hexdigest()}"


class _MixedSizes(Exception):
    """Raised inside a decode pass when an image's size differs from the tentative target size."""


def _workers() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count: containers pin CPUs)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _executor(n_files: int) -> Executor | WorkerPool:
    """Worker processes sized to the CPUs for large folders: decoding small images is mostly Python work
    per file, which threads serialise on the GIL. Threads for small folders, where starting processes
    costs more than it saves."""
    workers = _workers()
    if n_files >= PROCESS_MIN_FILES and workers > 1:
        return WorkerPool(workers)
    return ThreadPoolExecutor(max_workers=DECODE_THREADS)


def _decode_into(
    pool: Executor | WorkerPool,
    path: Path,
    files: list[Path],
    size: tuple[int, int],
    resize: bool,
    stats: bool,
    tick: Callable[[int], None],
) -> list[TaskResult]:
    """Decode ``files`` into the ``.npy`` at ``path`` in tasks of ``BATCH`` files; results in row order.

    ``tick(n)`` runs as tasks finish (it may raise ``Stopped``: the tasks not started are cancelled). With
    ``resize`` False an image of another size raises ``_MixedSizes`` (the caller picks a common size).
    """
    names = [str(f) for f in files]
    futures = [
        pool.submit(decode_rows, str(path), names[i : i + BATCH], i, size, resize, stats)
        for i in range(0, len(names), BATCH)
    ]
    results = []
    try:
        for fut in as_completed(futures):
            res = fut.result()
            if res.mixed:
                raise _MixedSizes
            results.append(res)
            tick(len(res.digests))
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise
    return sorted(results, key=lambda r: r.start)


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


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def build_cache(
    source: ArraySource | FolderListing,
    cache_root: str | Path,
    *,
    hooks: Hooks = NO_HOOKS,
) -> DecodedDataset:
    """Decode ``source`` into ``cache_root/<content_key>/`` (or reuse it if present) and load it.

    A folder is read once: each file's bytes are hashed for the key and decoded in the same task, so the
    key is known (and an identical cache found) only after decoding. ``hooks.progress`` is called as files
    decode; a stop request between tasks abandons the build with ``Stopped`` (nothing is left behind).
    """
    progress = hooks.progress
    cache_root = Path(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    if isinstance(source, ArraySource):
        progress(0.0, "hashing source")
        key = content_key(source)
        if (cache_root / key / "meta.json").exists():
            progress(1.0, "reused decoded cache")
            return load_cache(cache_root / key)
    tmp = make_tmp_dir(cache_root, "decode")  # named for its writer: start-up removes it once that is gone
    try:
        if isinstance(source, ArraySource):
            for name in ("train_x", "train_y", "test_x", "test_y"):
                _write_array(tmp / f"{name}.npy", getattr(source, name))
            skipped: list[tuple[str, str]] = []
            mean, std = channel_stats(np.load(tmp / "train_x.npy", mmap_mode="r"))
        else:
            key, skipped, mean, std = _fill_folder(source, tmp, hooks)
            if (cache_root / key / "meta.json").exists():
                shutil.rmtree(tmp, ignore_errors=True)
                progress(1.0, "reused decoded cache")
                return load_cache(cache_root / key)
        final = cache_root / key
        train_y = np.load(tmp / "train_y.npy")
        test_y = np.load(tmp / "test_y.npy")
        meta = {
            "version": CACHE_VERSION,
            "key": key,
            "classes": source.classes,
            "image_size": list(np.load(tmp / "train_x.npy", mmap_mode="r").shape[1:3]),
            "train_counts": _counts(train_y, source.classes),
            "test_counts": _counts(test_y, source.classes),
            "mean": np.asarray(mean).tolist(),
            "std": np.asarray(std).tolist(),
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


def _fill_folder(
    source: FolderListing, tmp: Path, hooks: Hooks
) -> tuple[str, list[tuple[str, str]], np.ndarray, np.ndarray]:
    """Decode the folder into ``tmp``; returns (content key, skipped (file, reason) pairs, mean, std)."""
    files_all = source.train_files + source.test_files
    fixed = source.image_size is not None
    size = source.image_size or _first_size(files_all) or DEFAULT_SIZE
    if not fixed and max(size) > MAX_NATIVE_SIDE:
        raise ValueError(
            f"images are {size[1]}x{size[0]} pixels; pass image_size (e.g. [64, 64]) to store them smaller"
        )
    with _executor(len(files_all)) as pool:
        try:
            out = _decode_folder(pool, source, tmp, size, fixed, hooks)
            mixed = False
        except _MixedSizes:
            # The images disagree on size: decode again, everything resized to the default size.
            size, mixed = DEFAULT_SIZE, True
            out = _decode_folder(pool, source, tmp, size, True, hooks)
    source.info.update({"image_size": list(size), "mixed_sizes": mixed})
    return out


def _decode_folder(
    pool: Executor | WorkerPool,
    source: FolderListing,
    tmp: Path,
    size: tuple[int, int],
    resize: bool,
    hooks: Hooks,
) -> tuple[str, list[tuple[str, str]], np.ndarray, np.ndarray]:
    skipped = list(source.skipped)
    total = len(source.train_files) + len(source.test_files)
    done = 0
    h, w = size

    def tick(n: int) -> None:
        nonlocal done
        done = min(done + n, total)
        hooks.progress(0.1 + 0.9 * done / max(total, 1), f"decoded {done:,}/{total:,} images")
        hooks.stop_point("while decoding the dataset")

    digests: dict[str, list[bytes]] = {}
    sums, squares, pixels = np.zeros(3, dtype=np.float64), np.zeros(3, dtype=np.float64), 0
    for part, files, labels in _parts(source):
        path = tmp / f"{part}_x.npy"
        del_me = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(files), h, w, 3))
        del del_me  # the header and the file's size are written; the tasks fill the rows
        results = _decode_into(pool, path, files, (h, w), resize, part == "train", tick)
        _fsync(path)
        digests[part] = [d for r in results for d in r.digests]
        failed = {i: why for r in results for i, why in r.failed.items()}
        if part == "train":
            # Integer sums from the tasks: exact, and no second pass over the pixels.
            sums += [sum(r.sums[c] for r in results) for c in range(3)]
            squares += [sum(r.squares[c] for r in results) for c in range(3)]
            pixels = sum(r.pixels for r in results)
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
    mean = sums / pixels
    std = np.sqrt(np.maximum(squares / pixels - mean**2, 0.0))
    key = _folder_key(source, digests)
    return key, skipped, (mean / 255.0).astype(np.float32), (std / 255.0).astype(np.float32)


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
