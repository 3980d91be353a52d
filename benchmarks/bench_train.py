"""Training throughput: Rebalance's trainer vs a plain torchvision DataLoader with per-image PIL transforms.

Both sides train the same model with the same SGD step on the same images; only the input pipeline
differs. The trainer keeps uint8 tensors on the device and augments whole batches (pad-4 crop, flip,
normalise); the baseline decodes every sample through PIL (RandomCrop(32, padding=4),
RandomHorizontalFlip, ToTensor, Normalize) and collates in a DataLoader.

Data are random uint8 32x32 images (speed does not depend on pixel values); labels are random too.

    python benchmarks/bench_train.py                     # CPU, `small`, 8,192 images
    python benchmarks/bench_train.py --quick             # CPU, 2,048 images
    python benchmarks/bench_train.py --device cuda --model resnet18_cifar   # 50,000 images (CIFAR-10 sized)
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.training.models import build_model  # noqa: E402
from backend.training.trainer import TrainConfig, fit, uses_bf16  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class PilDataset(Dataset):
    """The textbook pipeline: one PIL image per sample, torchvision transforms, default collate."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels
        self.transform = T.Compose(
            [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def baseline_epoch_seconds(images, labels, model_name: str, device: torch.device, batch: int, workers: int) -> float:
    """Seconds for one epoch of the DataLoader pipeline (after one warm-up epoch)."""
    torch.manual_seed(0)
    model = build_model(model_name, 10).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1 * batch / 256, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(
        PilDataset(images, labels),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    seconds = []
    for _ in range(2):
        t0 = time.perf_counter()
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
    return seconds[-1]


def base_precision(device: torch.device) -> str:
    """The baseline's arithmetic: textbook fp32 NCHW on CPU; bf16 + channels_last on CUDA, as the trainer."""
    return "bf16 autocast, channels_last" if device.type == "cuda" else "fp32, NCHW"


def pipeline_seconds(images, labels, device: torch.device, batch: int, workers: int) -> tuple[float, float]:
    """Seconds to produce one epoch of augmented, normalised batches without a model: (batched, PIL)."""
    from backend.data.transforms import normalize, random_crop_flip

    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).contiguous()
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    perm = torch.randperm(len(x), generator=g).to(device)
    for i in range(len(x) // batch):
        xb = x[perm[i * batch : (i + 1) * batch]]
        normalize(random_crop_flip(xb, pad=4, flip=True, generator=g), MEAN, STD)
    if device.type == "cuda":
        torch.cuda.synchronize()
    fast = time.perf_counter() - t0
    loader = DataLoader(PilDataset(images, labels), batch_size=batch, shuffle=True, drop_last=True, num_workers=workers)
    t0 = time.perf_counter()
    for xb, _ in loader:
        xb.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return fast, time.perf_counter() - t0


def trainer_epoch_seconds(
    images, labels, model_name: str, device: torch.device, batch: int, precision: str = "auto"
) -> float:
    """Seconds of the trainer's second epoch (the first warms up kernels and caches)."""
    config = TrainConfig(model=model_name, epochs=2, batch_size=batch, device=str(device), precision=precision)
    result = fit((images, labels), config, mean=MEAN, std=STD, num_classes=10)
    return result.history[-1]["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default=None, help="default: small on CPU, resnet18_cifar on CUDA")
    parser.add_argument("--images", type=int, default=None, help="default: 8,192 on CPU, 50,000 on CUDA")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for the baseline")
    parser.add_argument("--quick", action="store_true", help="2,048 images")
    args = parser.parse_args()
    device = torch.device(args.device)
    model_name = args.model or ("resnet18_cifar" if device.type == "cuda" else "small")
    n = 2048 if args.quick else args.images or (50_000 if device.type == "cuda" else 8192)

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int64)
    trained = (n // args.batch_size) * args.batch_size
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"model {model_name}, {n:,} random uint8 32x32 images, batch {args.batch_size}, {where}")

    bf16 = uses_bf16("auto", device)
    fast = trainer_epoch_seconds(images, labels, model_name, device, args.batch_size)
    fp32 = trainer_epoch_seconds(images, labels, model_name, device, args.batch_size, "fp32") if bf16 else fast
    base = baseline_epoch_seconds(images, labels, model_name, device, args.batch_size, args.workers)
    auto = "bf16 autocast" if bf16 else "fp32 (no native bf16 here)"
    print(f"trainer, precision auto = {auto}: epoch {fast:8.2f} s  {trained / fast:9.0f} images/s")
    if bf16:
        print(f"trainer, precision fp32:               epoch {fp32:8.2f} s  {trained / fp32:9.0f} images/s")
    print(
        f"DataLoader + PIL ({args.workers} workers), {base_precision(device)}: epoch {base:8.2f} s"
        f"  {trained / base:9.0f} images/s"
    )
    print(f"ratio: trainer (auto) is {base / fast:.2f}x the DataLoader baseline's images/s")
    if bf16:
        print(f"ratio: trainer (fp32) is {base / fp32:.2f}x the DataLoader baseline's images/s")
    p_fast, p_base = pipeline_seconds(images, labels, device, args.batch_size, args.workers)
    print(
        f"input pipeline alone (no model): batched {trained / p_fast:.0f} images/s, PIL {trained / p_base:.0f} images/s"
        f" -> ratio {p_base / p_fast:.1f}x"
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak = f"peak RSS {rss:.0f} MiB"
    if device.type == "cuda":
        peak += f", peak CUDA memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"
    print(peak)


if __name__ == "__main__":
    main()
