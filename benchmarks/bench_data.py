"""Datasets benchmark: JPEG folder -> decoded cache, cache load time, batched vs per-image augmentation.

    python benchmarks/bench_data.py [--device cuda] [--quick] [--folder DIR]

Without ``--folder`` the real CIFAR-10 JPEGs (../shared/data/cifar10-jpg.tar.gz) are extracted into a
temporary directory first (``--quick``: only the first 500 images per class and split). The augmentation
comparison runs the same images through (a) our batched tensor transforms on ``--device`` and (b)
torchvision's per-image PIL transforms, the way a classic DataLoader pipeline does it.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as tv

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--folder", type=Path, help="an ImageFolder tree to use instead of CIFAR-10")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: the PIL baseline is single-threaded too, and on a shared "
        "machine extra threads oversubscribe the cores)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"device={args.device} torch threads={torch.get_num_threads()} cpus={os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        folder = args.folder or extract(tmp / "src", 500 if args.quick else None)
        listing = scan_imagefolder(folder)
        n_files = len(listing.train_files) + len(listing.test_files)
        start = time.perf_counter()
        ds = build_cache(listing, tmp / "cache")
        build_s = time.perf_counter() - start
        print(f"folder -> cache: {n_files:,} images in {build_s:.1f} s = {n_files / build_s:,.0f} images/s")
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
        for strong, label in ((False, "crop+flip+normalize"), (True, "strong_augment+crop+flip+normalize")):
            bench_batched(x[:256], args.device, strong)  # warm-up (allocator, kernels)
            fast = bench_batched(x, args.device, strong)
            slow = bench_pil(x[:n_pil], strong)
            print(f"{label}: batched {fast:,.0f} img/s vs per-image PIL {slow:,.0f} img/s -> ratio {fast / slow:.1f}x")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak:.0f} MB")
    if args.device == "cuda":
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
