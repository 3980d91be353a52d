"""Personalisation speed: textual inversion and LoRA training steps/s and peak memory.

Trains each method for a few steps through ``backend.generation.personalize.ConceptTrainer`` on random
images, after warm-up steps, and prints steps/s and peak CUDA memory (or peak RSS on CPU).

    python benchmarks/bench_personalize.py                       # tiny random pipeline on CPU
    python benchmarks/bench_personalize.py --model sd15-random --device cuda --resolution 512 \
        --precision bf16 --precision fp16 --checkpointing       # SD 1.5-sized, random weights
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.core.allocator import keep_freed_memory  # noqa: E402
from backend.generation.diffusion import load_pipeline  # noqa: E402
from backend.generation.personalize import ConceptTrainer  # noqa: E402
from backend.generation.personalize_config import PersonalizeConfig  # noqa: E402
from benchmarks.sd15 import build_random_sd15_pipeline  # noqa: E402


def measure(model: str, workspace: Path, device: str, method: str, precision: str, args: argparse.Namespace) -> str:
    pipe = load_pipeline(model, device=device, dtype="fp32", workspace=workspace)
    images = np.random.default_rng(0).integers(0, 256, (8, args.resolution, args.resolution, 3), dtype=np.uint8)
    config = PersonalizeConfig(
        method=method,
        steps=args.warmup + args.steps,
        batch_size=args.batch_size,
        resolution=args.resolution,
        mixed_precision=precision,
        gradient_checkpointing=args.checkpointing,
        grid_images=0,
    )
    trainer = ConceptTrainer(pipe, config, images, "cat")
    trainer.train(args.warmup)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer.train(args.steps)
    if cuda:
        torch.cuda.synchronize()
    rate = args.steps / (time.perf_counter() - t0)
    if cuda:
        memory = f"peak CUDA {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
    else:
        memory = f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    del trainer, pipe
    if cuda:
        torch.cuda.empty_cache()
    return f"{method:18s} {precision:4s} batch {args.batch_size} @ {args.resolution}px: {rate:6.2f} steps/s, {memory}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny, sd15-random, or a pipeline id/directory")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", action="append", choices=["no", "fp16", "bf16"], help="repeatable")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    parser.add_argument("--method", action="append", choices=["textual_inversion", "lora"], help="repeatable")
    args = parser.parse_args()
    keep_freed_memory()  # as every Rebalance process does at start-up (backend/core/allocator.py)
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp)
        model = args.model
        if model == "sd15-random":
            model = str(build_random_sd15_pipeline(workspace / "sd15", device=args.device))
        if args.device.startswith("cuda"):
            print(torch.cuda.get_device_name(args.device))
        for method in args.method or ["textual_inversion", "lora"]:
            for precision in args.precision or ["no"]:
                print(measure(model, workspace, args.device, method, precision, args), flush=True)


if __name__ == "__main__":
    main()
