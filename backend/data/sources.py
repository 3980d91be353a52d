"""Dataset sources: CIFAR-10 via torchvision, an ImageFolder tree on disk, and scikit-learn's digits.

A source yields either decoded arrays (``ArraySource``: CIFAR-10, digits) or a listing of files still to
be decoded (``FolderListing``); ``backend.data.cache.build_cache`` turns both into the decoded cache.
"""

from __future__ import annotations

import contextlib
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backend.data.images import image_files, resize_rgb

DEFAULT_SIZE = (32, 32)  # used when a folder's images disagree on size and none was requested
MAX_NATIVE_SIDE = 512  # larger images need an explicit image_size: the cache stores every pixel
DOWNLOAD_TIMEOUT_S = 10.0  # per socket operation: an offline machine fails in seconds, not minutes


@dataclass
class ArraySource:
    """A dataset already decoded in memory (uint8 NHWC images, int64 labels)."""

    name: str
    classes: list[str]
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    info: dict = field(default_factory=dict)


@dataclass
class FolderListing:
    """Files of an ImageFolder tree, split into train/test, with the size every image will be decoded to."""

    root: Path
    classes: list[str]
    train_files: list[Path]
    train_y: np.ndarray
    test_files: list[Path]
    test_y: np.ndarray
    image_size: tuple[int, int] | None  # (h, w) requested; None: the images' own size if they agree
    split: str  # "folders" (train/ and test/ given) or "seeded" (our stratified split)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative name, reason)
    info: dict = field(default_factory=dict)


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Temporarily bound every blocking socket call; torchvision's downloader sets no timeout of its own."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


# torchvision's CIFAR10.classes, for planning before the data is loaded (load_cifar10 reads them from torchvision).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DIGITS_CLASSES = tuple(str(c) for c in range(10))


def source_classes(source: str, path: str | Path | None = None) -> list[str]:
    """The class names a ``prepare_dataset`` source will have, without decoding anything
    (``imagefolder``: its class folders, listed as :func:`scan_imagefolder` lists them)."""
    if source == "cifar10":
        return list(CIFAR10_CLASSES)
    if source == "digits":
        return list(DIGITS_CLASSES)
    if path is None:
        raise ValueError(f"source {source!r} needs a path to list its classes")
    return scan_imagefolder(path).classes


def load_cifar10(root: Path, download: bool) -> ArraySource:
    """CIFAR-10 through ``torchvision.datasets.CIFAR10`` stored under ``root`` (downloaded on first use).

    Offline, raises ``ValueError`` within seconds, naming the ``imagefolder`` alternative.
    """
    from torchvision.datasets import CIFAR10

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            train = CIFAR10(str(root), train=True, download=download)
            test = CIFAR10(str(root), train=False, download=False)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise ValueError(
            f"CIFAR-10 is not in {root} and download is off: enable download or use source 'imagefolder' "
            "with a local copy (train/<class>/*, test/<class>/*)"
        ) from exc
    except OSError as exc:  # URLError, timeouts and DNS failures are all OSErrors
        raise ValueError(
            f"could not download CIFAR-10 (offline?): {exc}. "
            "Use source 'imagefolder' with a local copy (train/<class>/*, test/<class>/*) instead"
        ) from exc
    return ArraySource(
        name="cifar10",
        classes=list(train.classes),
        train_x=np.ascontiguousarray(train.data, dtype=np.uint8),
        train_y=np.asarray(train.targets, dtype=np.int64),
        test_x=np.ascontiguousarray(test.data, dtype=np.uint8),
        test_y=np.asarray(test.targets, dtype=np.int64),
        info={"source": "torchvision.datasets.CIFAR10"},
    )


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split -> (train_idx, test_idx), both sorted; each class keeps >= 1 train sample."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    train_idx, test_idx = [], []
    for c in np.unique(labels):
        # A generator per class keeps one class's split independent of the others' sizes.
        members = np.flatnonzero(labels == c)
        rng = np.random.default_rng([seed, int(c)])
        members = rng.permutation(members)
        n_test = min(int(round(len(members) * test_fraction)), len(members) - 1)
        test_idx.append(members[:n_test])
        train_idx.append(members[n_test:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))


def _class_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def find_dataset_root(path: Path) -> Path:
    """Descend through single wrapping directories (``archive/`` inside a zip) to the ImageFolder root."""
    path = Path(path)
    for _ in range(8):
        entries = [p for p in path.iterdir() if not p.name.startswith((".", "__MACOSX"))]
        # A lone directory holding only files is a (single) class folder, not a wrapper.
        if len(entries) == 1 and entries[0].is_dir() and any(p.is_dir() for p in entries[0].iterdir()):
            path = entries[0]
        else:
            break
    return path


def scan_imagefolder(
    path: str | Path,
    test_fraction: float = 0.2,
    seed: int = 0,
    image_size: tuple[int, int] | None = None,
) -> FolderListing:
    """List an ImageFolder tree: ``train/<class>/*`` + ``test/<class>/*``, or ``<class>/*`` split here.

    Only walks the tree (no file is opened): non-image extensions are reported in ``skipped``; files that
    fail to decode are dropped and reported by ``build_cache``, which also picks the decode size: the
    images' own size when they all agree, else ``DEFAULT_SIZE``, unless ``image_size`` = (h, w) is given.
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"path {str(root)!r} is not a directory")
    root = find_dataset_root(root)
    if image_size is not None and (len(image_size) != 2 or min(image_size) < 8 or max(image_size) > 1024):
        raise ValueError(f"image_size must be [h, w] with 8 <= h, w <= 1024, got {image_size}")
    skipped: list[tuple[str, str]] = []
    has_split = (root / "train").is_dir() and (root / "test").is_dir()
    if has_split:
        train_dirs = _class_dirs(root / "train")
        test_names = {d.name for d in _class_dirs(root / "test")}
        classes = [d.name for d in train_dirs]
        missing = sorted(set(classes) ^ test_names)
        if missing:
            raise ValueError(f"train/ and test/ must have the same class folders; unmatched: {missing}")
        parts = {"train": root / "train", "test": root / "test"}
    else:
        classes = [d.name for d in _class_dirs(root)]
        parts = {"all": root}
    if len(classes) < 2:
        found = classes[0] if classes else "none"
        raise ValueError(f"an image folder needs at least 2 class folders, found {found} under {root}")

    listed: dict[str, tuple[list[Path], np.ndarray]] = {}
    for part, base in parts.items():
        files, labels = [], []
        for ci, cname in enumerate(classes):
            found = image_files(base / cname, skipped, relative_to=root)
            files += found
            labels += [ci] * len(found)
        listed[part] = (files, np.asarray(labels, dtype=np.int64))

    if has_split:
        (train_files, train_y), (test_files, test_y) = listed["train"], listed["test"]
    else:
        files, labels = listed["all"]
        tr, te = stratified_split(labels, test_fraction, seed)
        train_files, train_y = [files[i] for i in tr], labels[tr]
        test_files, test_y = [files[i] for i in te], labels[te]
    counts = Counter(train_y.tolist())
    empty = [classes[c] for c in range(len(classes)) if counts.get(c, 0) == 0]
    if empty:
        raise ValueError(f"class folders without a training image: {empty}")
    return FolderListing(
        root=root,
        classes=classes,
        train_files=train_files,
        train_y=train_y,
        test_files=test_files,
        test_y=test_y,
        image_size=None if image_size is None else (int(image_size[0]), int(image_size[1])),
        split="folders" if has_split else "seeded",
        skipped=skipped,
        info={"test_fraction": test_fraction, "seed": seed} if not has_split else {},
    )


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> ArraySource:
    """scikit-learn's bundled 8x8 digits, upscaled to 32x32 RGB, with a seeded 20% stratified test split."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    # Pixel values are 0..16 ink levels; spread them over 0..255.
    small = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    rgb = np.repeat(small[..., None], 3, axis=-1)
    big = np.stack([resize_rgb(img, (32, 32)) for img in rgb])
    labels = bunch.target.astype(np.int64)
    tr, te = stratified_split(labels, test_fraction, seed)
    return ArraySource(
        name="digits",
        classes=list(DIGITS_CLASSES),
        train_x=big[tr],
        train_y=labels[tr],
        test_x=big[te],
        test_y=labels[te],
        info={"source": "sklearn.datasets.load_digits", "test_fraction": test_fraction, "seed": seed},
    )
