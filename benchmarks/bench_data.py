"""Datasets benchmark: JPEG folder -> decoded cache, cache load time, batched vs per-image augmentation.

    python benchmarks/bench_data.py [--device cuda] [--quick] [--per-class N] [--folder DIR] [--reps 3]

Without ``--folder`` the real CIFAR-10 JPEGs (../shared/data/cifar10-jpg.tar.gz) are extracted into a
temporary directory first (``--per-class N``: only the first N images per class and split, so 1000 gives
10,000 train + 10,000 test; ``--quick``: 500).

1. Registration: ``scan_imagefolder`` + ``build_cache`` (read once, hash, decode in processes, integer
   statistics, write the cache) against the naive peer: torchvision ``ImageFolder`` + one PIL decode per
   image, one thread, writing nothing. The two alternate (A B A B ...) ``--reps`` times after a warm-up
   of each (page cache); the ratio printed is the median of the per-pair ratios.
2. Augmentation: the same images through (a) our batched tensor transforms on ``--device``, with torch's
   default thread count, and (b) torchvision's per-image PIL transforms, the way a classic DataLoader
   pipeline does it; alternated the same way, once on the machine as it is and once while a busy process
   started here keeps one core loaded (``--no-load`` skips that).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as tv
from torchvision.datasets import ImageFolder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.data.cache import build_cache, load_cache  # noqa: E402
from backend.data.sources import scan_imagefolder  # noqa: E402
from backend.data.transforms import normalize, random_crop_flip, strong_augment  # noqa: E402

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def extract(dest: Path, per_class: int | None) -> Path:
    counts: dict[str, int] = {}
    with tarfile.open(ARCHIVE) as tar:
        members = []
        for m in tar:
            parts = Path(m.name).parts
            if m.isfile() and len(parts) == 4:
                key = f"{parts[1]}/{parts[2]}"
                counts[key] = counts.get(key, 0) + 1
                if per_class is not None and counts[key] > per_class:
                    continue
            members.append(m)
        tar.extractall(dest, members=members, filter="data")
    return dest / "cifar10"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench_batched(x_nhwc: np.ndarray, device: str, strong: bool, batch: int = 1024) -> float:
    """Images/s for the batched pipeline on uint8 data resident on ``device`` (NCHW), as the trainer keeps it."""
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    gen = torch.Generator(device=device).manual_seed(0)
    data = torch.from_numpy(np.array(x_nhwc)).permute(0, 3, 1, 2).contiguous().to(device)
    sync(device)
    start = time.perf_counter()
    for i in range(0, len(data), batch):
        xb = data[i : i + batch]
        if strong:
            xb = strong_augment(xb, generator=gen)
        out = normalize(random_crop_flip(xb, generator=gen), mean, std)
    sync(device)
    assert out.dtype == torch.float32
    return len(data) / (time.perf_counter() - start)


def bench_pil(x_nhwc: np.ndarray, strong: bool) -> float:
    """Images/s for torchvision's per-image PIL pipeline (array -> PIL -> transforms -> tensor)."""
    steps: list = []
    if strong:
        steps += [
            tv.ColorJitter(brightness=0.5, hue=0.3),
            tv.RandomPerspective(distortion_scale=0.2, fill=0),
            tv.RandomRotation((0, 180), fill=0),
            tv.RandomSolarize(threshold=0.75 * 255, p=0.5),
        ]
    steps += [tv.RandomCrop(32, padding=4), tv.RandomHorizontalFlip(), tv.ToTensor(), tv.Normalize(MEAN, STD)]
    pipeline = tv.Compose(steps)
    start = time.perf_counter()
    for img in x_nhwc:
        pipeline(Image.fromarray(img))
    return len(x_nhwc) / (time.perf_counter() - start)


def alternate(fast: Callable[[], float], slow: Callable[[], float], reps: int) -> tuple[list[float], list[float]]:
    """Run ``fast`` and ``slow`` alternately ``reps`` times after one warm-up each -> their rates."""
    fast(), slow()
    fast_r, slow_r = [], []
    for _ in range(reps):
        fast_r.append(fast())
        slow_r.append(slow())
    return fast_r, slow_r


def report(label: str, fast_r: list[float], slow_r: list[float], unit: str) -> float:
    """Print medians and the median per-pair ratio (fast rate / slow rate); returns that ratio."""
    ratio = statistics.median(f / s for f, s in zip(fast_r, slow_r, strict=True))
    print(
        f"{label}: Rebalance {statistics.median(fast_r):,.0f} {unit} vs peer {statistics.median(slow_r):,.0f} {unit}"
        f" -> ratio {ratio:.2f}x (median of {len(fast_r)} pairs; pairs: "
        + ", ".join(f"{f / s:.2f}" for f, s in zip(fast_r, slow_r, strict=True))
        + ")"
    )
    return ratio


def naive_register(folder: Path) -> float:
    """Images/s of the peer: ImageFolder over each split + one PIL decode per image, writing nothing."""
    start = time.perf_counter()
    n = 0
    for split in [folder / "train", folder / "test"] if (folder / "train").is_dir() else [folder]:
        ds = ImageFolder(str(split))  # the default loader opens the file and decodes it (convert("RGB"))
        for i in range(len(ds)):
            ds[i]
            n += 1
    return n / (time.perf_counter() - start)


def our_register(folder: Path, scratch: Path) -> float:
    """Images/s of scanning + caching ``folder`` into a fresh cache (deleted afterwards, untimed)."""
    cache = Path(tempfile.mkdtemp(dir=scratch))
    start = time.perf_counter()
    ds = build_cache(scan_imagefolder(folder), cache)
    rate = (len(ds.train_y) + len(ds.test_y)) / (time.perf_counter() - start)
    shutil.rmtree(cache)
    return rate


BUSY = "import time\nend = time.time() + 3600\nwhile time.time() < end: pass\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="500 images per class and split, fewer augmentations")
    ap.add_argument("--per-class", type=int, help="extract only this many images per class and split")
    ap.add_argument("--folder", type=Path, help="an ImageFolder tree to use instead of CIFAR-10")
    ap.add_argument("--reps", type=int, default=3, help="timed pairs per comparison (after one warm-up pair)")
    ap.add_argument("--no-load", action="store_true", help="skip the augmentation run with one core kept busy")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"device={args.device} torch threads={torch.get_num_threads()} cpus={os.cpu_count()} "
        f"load average {os.getloadavg()[0]:.1f} (a shared machine: only ratios of alternated runs mean much)"
    )
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        per_class = 500 if args.quick else args.per_class
        folder = args.folder or extract(tmp / "src", per_class)
        listing = scan_imagefolder(folder)
        n_files = len(listing.train_files) + len(listing.test_files)
        print(f"registering {folder.name}: {n_files:,} files")
        fast_r, slow_r = alternate(lambda: our_register(folder, tmp), lambda: naive_register(folder), args.reps)
        report("folder registration (scan + hash + decode + stats + write)", fast_r, slow_r, "images/s")
        ds = build_cache(listing, tmp / "cache")
        start = time.perf_counter()
        ds = load_cache(ds.path)
        load_s = time.perf_counter() - start
        print(f"cache load: {load_s * 1000:.1f} ms for {len(ds.train_y):,} train + {len(ds.test_y):,} test images")
        start = time.perf_counter()
        train = np.array(ds.train_x)  # read everything once, as a trainer putting data on the device would
        read_ms = (time.perf_counter() - start) * 1000
        print(f"first full read of train_x: {read_ms:.0f} ms ({train.nbytes / 1e6:.0f} MB)")

        n_aug = 2000 if args.quick else 10_000
        x = train[:n_aug]
        n_pil = min(len(x), 1000 if args.quick else 3000)  # the slow baseline on a subset; rates are per image
        loads = [False] if args.no_load or args.device != "cpu" else [False, True]
        for busy in loads:
            hog = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
            try:
                where = "one core kept busy by another process" if busy else "machine as it is"
                for strong, label in ((False, "crop+flip+normalize"), (True, "strong_augment+crop+flip+normalize")):
                    fast_r, slow_r = alternate(
                        lambda s=strong: bench_batched(x, args.device, s),
                        lambda s=strong: bench_pil(x[:n_pil], s),
                        args.reps,
                    )
                    report(f"{label} [{where}]: batched vs per-image PIL", fast_r, slow_r, "img/s")
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak:.0f} MB")
    if args.device == "cuda":
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
