"""The decoded cache: each dataset decoded once into uint8 arrays under ``<cache_root>/<content_key>/``.

Layout: ``train_x.npy`` (N,H,W,3 uint8), ``train_y.npy`` (int64), ``test_x.npy``, ``test_y.npy`` and
``meta.json`` (classes, counts, full-train-set channel mean/std, skipped files, source info). Loading maps
the image arrays (``np.load(mmap_mode="r")``), so even CIFAR-10 loads in milliseconds and pages in lazily.

Content key: a BLAKE2b hash of every file's relative path, label, size and *bytes* (plus the decode
parameters and the cache format version). The bytes hashed are the ones read to decode (each file is
read once), and hashing bytes rather than mtimes buys reuse exactly when the content is the same: a folder
copied elsewhere, or the same zip uploaded twice (which extracts to a fresh directory with fresh mtimes).
Folders decode in parallel processes; their channel statistics are exact integer sums taken as rows land.
Array sources (CIFAR-10, digits) hash their decoded arrays.

Atomicity: everything is written into a temporary sibling directory that is renamed into place last,
so a crash never leaves a half-written cache that a later load would trust.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import shutil
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backend.core.hooks import NO_HOOKS, Hooks
from backend.data.images import ImageDecodeError, decode_rows, probe_size
from backend.data.sources import DEFAULT_SIZE, MAX_NATIVE_SIDE, ArraySource, FolderListing
from backend.data.transforms import channel_stats

CACHE_VERSION = 1
BATCH = 256  # files per decode task at most: large enough to amortise scheduling, small enough for progress
PARALLEL_MIN_FILES = 512  # below this, decoding in this process beats starting decode processes


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


def _folder_key(source: FolderListing, digests: dict[str, list[bytes]]) -> str:
    """The content key of a folder from each file's digest (``digests[part][i]`` for ``part``'s file i)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"rebalance-cache-v{CACHE_VERSION}".encode())
    params = ["folder", source.classes, source.image_size and list(source.image_size), source.split]
    h.update(json.dumps(params).encode())
    for part, files, labels in (
        ("train", source.train_files, source.train_y),
        ("test", source.test_files, source.test_y),
    ):
        for path, label, digest in zip(files, labels.tolist(), digests[part], strict=True):
            h.update(f"{part}\0{_relative(path, source.root)}\0{label}\0".encode())
            h.update(digest)
    return f"folder-{h.hexdigest()}"


def _relative(path: Path, root: Path) -> str:
    """``path.relative_to(root).as_posix()``, by string slicing for the usual case (10x cheaper per file)."""
    full, prefix = str(path), str(root) + os.sep
    if full.startswith(prefix):
        return full[len(prefix) :].replace(os.sep, "/")
    return path.relative_to(root).as_posix()


def _file_digest(path: Path) -> bytes:
    try:
        return hashlib.blake2b(path.read_bytes(), digest_size=16).digest()
    except OSError:
        return b""  # as decode_rows: an unreadable file hashes as empty (and is skipped when decoding)


def content_key(source: ArraySource | FolderListing) -> str:
    """The cache key of ``source`` (see the module docstring).

    ``build_cache`` computes the same key for a folder from the bytes it reads to decode; this standalone
    version reads the files just to hash them.
    """
    if isinstance(source, ArraySource):
        h = hashlib.blake2b(digest_size=16)
        h.update(f"rebalance-cache-v{CACHE_VERSION}".encode())
        h.update(json.dumps(["array", source.name, source.classes, source.info], sort_keys=True).encode())
        for arr in (source.train_x, source.train_y, source.test_x, source.test_y):
            h.update(str(arr.shape).encode())
            h.update(np.ascontiguousarray(arr).data)
        return f"{source.name}-{h.hexdigest()}"
    digests = {
        "train": [_file_digest(p) for p in source.train_files],
        "test": [_file_digest(p) for p in source.test_files],
    }
    return _folder_key(source, digests)


class _MixedSizes(Exception):
    """Raised by a decode pass when an image's size differs from the tentative target size."""


def decode_processes(n_files: int) -> int:
    """Decode processes for ``n_files``: one per usable core, none extra for small folders.

    Small folders decode in this process: starting workers costs more than decoding a few hundred files.
    """
    if n_files < PARALLEL_MIN_FILES:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores)


@dataclass
class _Decoded:
    """What one decode pass over a folder produced (the pixels are in the ``.npy`` files)."""

    digests: dict[str, list[bytes]]
    failed: dict[str, dict[int, str]]
    hist: np.ndarray  # int64 (3, 256): per-channel histogram of the decoded train pixels


def _tasks(files: list[Path], size: tuple[int, int], processes: int) -> list[tuple[int, list[str]]]:
    """Split ``files`` into (first row, names) tasks: at most ``BATCH`` files or ~4M pixels each, and at
    least a few per process so the processes stay busy to the end."""
    cap = max(1, min(BATCH, (1 << 22) // (size[0] * size[1])))
    per = max(1, min(cap, math.ceil(len(files) / (4 * processes))))
    return [(s, [str(p) for p in files[s : s + per]]) for s in range(0, len(files), per)]


def _decode_pass(
    source: FolderListing,
    paths: dict[str, Path],
    offsets: dict[str, int],
    size: tuple[int, int],
    resize: bool,
    hooks: Hooks,
    processes: int,
) -> _Decoded:
    """Read, hash and decode every file once into the ``.npy`` files at ``paths`` ({part: path}), whose
    data start at ``offsets`` ({part: byte offset}).

    Runs ``images.decode_rows`` tasks in ``processes`` processes (tiny JPEGs decode faster than the GIL
    lets threads hand them out). Raises ``_MixedSizes`` when ``resize`` is False and sizes disagree.
    """
    parts = {"train": source.train_files, "test": source.test_files}
    total = sum(len(f) for f in parts.values())
    digests = {part: [b""] * len(files) for part, files in parts.items()}
    failed: dict[str, dict[int, str]] = {part: {} for part in parts}
    hist = np.zeros((3, 256), np.int64)
    mixed = False
    done = 0
    jobs = [(part, row0, names) for part, files in parts.items() for row0, names in _tasks(files, size, processes)]

    def collect(part: str, row0: int, result: tuple) -> None:
        nonlocal mixed, done
        got, bad, task_hist, was_mixed = result
        digests[part][row0 : row0 + len(got)] = got
        failed[part].update({row0 + i: why for i, why in bad.items()})
        if part == "train":
            hist[:] += task_hist
        mixed |= was_mixed
        done += len(got)
        hooks.progress(0.05 + 0.9 * done / max(total, 1), f"decoded {done:,}/{total:,} images")
        hooks.stop_point("while decoding the dataset")

    if processes <= 1:
        for part, row0, names in jobs:
            collect(part, row0, decode_rows(str(paths[part]), offsets[part], row0, names, size, resize))
    else:
        # fork: the children only run numpy/PIL code, and spawn would re-import the caller's __main__
        # (the server, torch) in every worker, which costs more than decoding CIFAR-10.
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=processes, mp_context=ctx) as pool:
            futures = [
                (part, row0, pool.submit(decode_rows, str(paths[part]), offsets[part], row0, names, size, resize))
                for part, row0, names in jobs
            ]
            try:
                for part, row0, future in futures:
                    collect(part, row0, future.result())
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    if mixed:
        raise _MixedSizes
    return _Decoded(digests, failed, hist)


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
    processes: int | None = None,
) -> DecodedDataset:
    """Decode ``source`` into ``cache_root/<content_key>/`` (or reuse it if present) and load it.

    A folder is read once: each file's bytes are hashed and decoded in the same pass, in ``processes``
    processes (default ``decode_processes``), and the channel statistics come from exact integer sums
    gathered on the way. The key is known only after that pass, so re-registering a folder already cached
    decodes it again before reusing the cache (the new copy is discarded). ``hooks.progress`` is called as
    files decode; a stop request between tasks abandons the build with ``Stopped`` (nothing is left behind).
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
    else:
        progress(0.0, "reading, hashing and decoding files")
    tmp = cache_root / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        if isinstance(source, ArraySource):
            for name in ("train_x", "train_y", "test_x", "test_y"):
                _write_array(tmp / f"{name}.npy", getattr(source, name))
            skipped: list[tuple[str, str]] = []
            mean, std = channel_stats(source.train_x)
        else:
            key, skipped, mean, std = _fill_folder(source, tmp, hooks, processes)
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


def _fill_folder(
    source: FolderListing, tmp: Path, hooks: Hooks, processes: int | None
) -> tuple[str, list[tuple[str, str]], np.ndarray, np.ndarray]:
    """Decode a folder into ``tmp`` -> (content key, skipped (file, reason) pairs, channel mean, std)."""
    files_all = source.train_files + source.test_files
    if processes is None:
        processes = decode_processes(len(files_all))
    fixed = source.image_size is not None
    size = source.image_size or _first_size(files_all) or DEFAULT_SIZE
    if not fixed and max(size) > MAX_NATIVE_SIDE:
        raise ValueError(
            f"images are {size[1]}x{size[0]} pixels; pass image_size (e.g. [64, 64]) to store them smaller"
        )
    try:
        decoded, skipped = _decode_folder(source, tmp, size, fixed, hooks, processes)
        mixed = False
    except _MixedSizes:
        # The images disagree on size: decode again, everything resized to the default size.
        size, mixed = DEFAULT_SIZE, True
        decoded, skipped = _decode_folder(source, tmp, size, True, hooks, processes)
    source.info.update({"image_size": list(size), "mixed_sizes": mixed})
    mean, std = _stats(decoded.hist)
    return _folder_key(source, decoded.digests), skipped, mean, std


def _stats(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean, std (3,) float32 in 0-1 units from a (3, 256) histogram (exact integer sums)."""
    levels = np.arange(256, dtype=np.int64)
    count = max(int(hist[0].sum()), 1)
    mean = (hist @ levels) / count
    var = np.maximum((hist @ (levels * levels)) / count - mean**2, 0.0)
    return (mean / 255.0).astype(np.float32), (np.sqrt(var) / 255.0).astype(np.float32)


def _decode_folder(
    source: FolderListing,
    tmp: Path,
    size: tuple[int, int],
    resize: bool,
    hooks: Hooks,
    processes: int,
) -> tuple[_Decoded, list[tuple[str, str]]]:
    h, w = size
    parts = (("train", source.train_files, source.train_y), ("test", source.test_files, source.test_y))
    paths = {part: tmp / f"{part}_x.npy" for part, _, _ in parts}
    offsets = {}
    for part, files, _ in parts:
        out = np.lib.format.open_memmap(paths[part], mode="w+", dtype=np.uint8, shape=(len(files), h, w, 3))
        offsets[part] = out.offset  # the decode tasks write their rows at this offset themselves
        del out
    decoded = _decode_pass(source, paths, offsets, size, resize, hooks, processes)
    skipped = list(source.skipped)
    for part, files, labels in parts:
        failed = decoded.failed[part]
        if failed:
            # Rare (unreadable, or a readable header over broken data): compact the rows once.
            keep = np.setdiff1d(np.arange(len(files)), list(failed))
            compact = np.asarray(np.load(paths[part], mmap_mode="r")[keep])
            _write_array(paths[part], compact)
            labels = labels[keep]
            skipped += [(files[i].relative_to(source.root).as_posix(), why) for i, why in sorted(failed.items())]
        _write_array(tmp / f"{part}_y.npy", np.asarray(labels, dtype=np.int64))
    train_y = np.load(tmp / "train_y.npy")
    empty = [c for c, n in _counts(train_y, source.classes).items() if n == 0]
    if empty:
        raise ValueError(f"no training image of class {empty} could be decoded")
    return decoded, skipped


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
