"""DCGAN training throughput (images/s) at 32x32 and 64x64, plus the batched augmentation speed-up.

CPU: full-width (1024-512-256-128, the study's net) and a reduced width, each at 32 and 64 px. CUDA
(`--device cuda`): the same nets in fp32 and with AMP (bf16, or fp16 + GradScaler) + channels_last,
side by side with the ratio. Every run also times the GAN augmentation (random vertical flip + random
sharpness) batched on tensors against per-image torchvision PIL transforms.

Images are random uint8 (speed does not depend on pixel values). Timing starts after `--warmup` steps
(cuDNN autotuning, allocator warm-up) and synchronises the device at each step boundary.

    python benchmarks/bench_gan.py                  # CPU, < 3 min on 2 cores
    python benchmarks/bench_gan.py --quick          # CPU, fewer steps
    python benchmarks/bench_gan.py --device cuda    # fp32 vs AMP on the GPU
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.core.allocator import keep_freed_memory  # noqa: E402
from backend.generation.gan import GanConfig, GanTrainer, augment_batch  # noqa: E402


def train_rate(device: str, size: int, width: float, batch: int, steps: int, warmup: int, amp: bool) -> float:
    """Training images/s (one D step + one G step per batch), measured after `warmup` steps."""
    images = np.random.default_rng(0).integers(0, 256, (batch * (warmup + steps), size, size, 3), dtype=np.uint8)
    config = GanConfig(image_size=size, batch_size=batch, width=width, amp=amp, seed=0)
    trainer = GanTrainer(config, images, device)
    marks: list[float] = []

    def tick(_fraction: float) -> None:
        if device == "cuda":
            torch.cuda.synchronize()
        marks.append(time.perf_counter())

    trainer.train_epoch(progress=tick)
    return batch * steps / (marks[-1] - marks[warmup - 1])


def peak_memory(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB GPU"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS"


def augmentation(device: str, n: int, size: int) -> tuple[float, float]:
    """(batched images/s, per-image PIL images/s) for flip + sharpness on `n` images."""
    images = np.random.default_rng(1).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    pil = T.Compose([T.RandomVerticalFlip(), T.RandomAdjustSharpness(2.0), T.PILToTensor()])
    t0 = time.perf_counter()
    torch.stack([pil(Image.fromarray(img)) for img in images])
    pil_rate = n / (time.perf_counter() - t0)

    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2)
    rng = torch.Generator().manual_seed(0)
    flip = (torch.rand(n, generator=rng) < 0.5).to(device)
    sharp = (torch.rand(n, generator=rng) < 0.5).to(device)
    augment_batch(x[:256].float() / 255, flip[:256], sharp[:256])  # warm-up (kernels, allocator)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for lo in range(0, n, 256):
        augment_batch(x[lo : lo + 256].float() / 255, flip[lo : lo + 256], sharp[lo : lo + 256])
    if device == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0), pil_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="fewer steps")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    keep_freed_memory()  # as every Rebalance process does at start-up (backend/core/allocator.py)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("--device cuda: no CUDA device is available")
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels once
        print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    else:
        print(f"device: cpu, {torch.get_num_threads()} torch threads  torch {torch.__version__}")

    if args.device == "cpu":
        # (size, width, batch, timed steps): the full-width 64 px net costs ~17 GFLOP per image per step.
        runs = [(32, 1.0, 64, 3), (32, 0.25, 64, 8), (64, 1.0, 32, 2), (64, 0.25, 64, 4)]
        warmup = 1
        if args.quick:
            runs = [(s, w, b, max(1, n // 2)) for s, w, b, n in runs]
        print(f"{'size':>4} {'width':>5} {'batch':>5}  train images/s")
        for size, width, batch, steps in runs:
            rate = train_rate("cpu", size, width, batch, steps, warmup, amp=False)
            print(f"{size:>4} {width:>5} {batch:>5}  {rate:10.1f}")
    else:
        steps, warmup = (10, 3) if args.quick else (30, 5)
        print(f"{'size':>4} {'width':>5} {'batch':>5}  {'fp32 img/s':>10}  {'AMP img/s':>10}  AMP/fp32")
        for size, width, batch in [(32, 1.0, 128), (64, 1.0, 128), (64, 1.0, 512), (64, 0.25, 128)]:
            fp32 = train_rate("cuda", size, width, batch, steps, warmup, amp=False)
            amp = train_rate("cuda", size, width, batch, steps, warmup, amp=True)
            print(f"{size:>4} {width:>5} {batch:>5}  {fp32:10.1f}  {amp:10.1f}  ratio {amp / fp32:.2f}x")
        dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16 + GradScaler"
        print(f"AMP dtype: {dtype}; channels_last on CUDA in both columns")

    n = 1024 if args.quick else 4096
    batched, per_image = augmentation(args.device, n, 64)
    print(f"augmentation 64x64 (flip + sharpness): batched {batched:,.0f} img/s, per-image PIL {per_image:,.0f} img/s")
    print(f"ratio batched/per-image: {batched / per_image:.1f}x")
    print(f"peak memory: {peak_memory(args.device)}")


if __name__ == "__main__":
    main()
