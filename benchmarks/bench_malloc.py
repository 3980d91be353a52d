"""What the malloc settings (backend/core/allocator.py) are worth: the trainer and MC-dropout scoring, each
in fresh processes with glibc's defaults and with the settings every Rebalance process applies at start-up.

Each side runs in its own new Python process (malloc settings are process-wide and cannot be undone), the
two alternate ``--reps`` times, and the ratio printed is the median of the per-pair ratios. Every process
also reports its minor page faults per step / per scored image batch (field 10 of /proc/self/stat), the
cost the settings remove: with the defaults, freed activations go back to the kernel and come back as
fresh zeroed pages the next step.

    python benchmarks/bench_malloc.py            # `small`: fit 10,240 images x 3 epochs, score 5,000, T = 20
    python benchmarks/bench_malloc.py --quick    # fewer images

Measured on the 2-core VM (AMD EPYC, Zen 5, AVX512-BF16; 2026-11-30; 3 pairs, 2 min 11 s):
  fit fp32    7,524 / 6,769 / 7,183 -> 7,786 / 7,448 / 7,488 images/s: 1.04x; faults/step 1,800-3,300 -> ~400
  fit bf16    1.02x (faults/step ~300 -> ~240 either way: bf16 activations are half the size)
  score_pool  15,114 / 15,193 / 13,306 -> 22,019 / 23,264 / 22,836 images/s: 1.53x; faults per 512
              images 12,900 -> ~100
  Earlier, in single fresh processes, fp32 training ran at 5,100-7,200 images/s with 3,600-14,000
  faults per step against 7,850 with the settings: how much the defaults cost depends on how the heap
  happened to settle.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
import numpy as np, torch
from backend.core.allocator import keep_freed_memory
mode, what, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "tuned":
    keep_freed_memory()

def faults():
    return int(open("/proc/self/stat").read().split()[9])

rng = np.random.default_rng(0)
images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
if what == "fit":
    from backend.training.trainer import TrainConfig, fit
    labels = rng.integers(0, 10, n).astype(np.int64)
    config = TrainConfig(model="small", epochs=3, batch_size=256, precision=sys.argv[4], compile="off")
    f0 = faults()
    result = fit((images, labels), config, mean=(0.5,) * 3, std=(0.25,) * 3, num_classes=10)
    steps = 3 * (n // 256)
    print(json.dumps({"rate": n / result.history[-1]["seconds"], "faults": (faults() - f0) / steps}))
else:
    from backend.selection.scoring import score_pool
    from backend.training.models import build_model
    torch.manual_seed(0)
    model = build_model("small", 10, dropout=0.5)
    score_pool(model, images, (0.5,) * 3, (0.25,) * 3, target=3)  # warm-up
    f0, t0 = faults(), time.perf_counter()
    score_pool(model, images, (0.5,) * 3, (0.25,) * 3, target=3)
    seconds = time.perf_counter() - t0
    print(json.dumps({"rate": n / seconds, "faults": (faults() - f0) / max(n // 512, 1)}))
"""


def run(mode: str, what: str, n: int, precision: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, what, str(n), precision],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3, help="alternated pairs of fresh processes per workload")
    ap.add_argument("--quick", action="store_true", help="2,048 training images, 2,000 scored")
    args = ap.parse_args()
    workloads = [
        ("fit fp32", "fit", 2048 if args.quick else 10_240, "fp32", "images/s (last epoch)", "faults/step"),
        ("fit bf16", "fit", 2048 if args.quick else 10_240, "bf16", "images/s (last epoch)", "faults/step"),
        ("score_pool", "score", 2000 if args.quick else 5000, "auto", "images/s", "faults/512 images"),
    ]
    for label, what, n, precision, unit, per in workloads:
        pairs = []
        for _ in range(args.reps):
            default, tuned = run("default", what, n, precision), run("tuned", what, n, precision)
            pairs.append((default, tuned))
            print(
                f"  [{label}] glibc defaults {default['rate']:8.0f} {unit}, {default['faults']:7.0f} {per}"
                f" | kept freed memory {tuned['rate']:8.0f}, {tuned['faults']:7.0f}",
                flush=True,
            )
        ratio = statistics.median(t["rate"] / d["rate"] for d, t in pairs)
        rates = ", ".join(f"{d['rate']:.0f}->{t['rate']:.0f}" for d, t in pairs)
        print(f"{label}: kept freed memory / glibc defaults {ratio:.2f}x (median of pairs; {rates})")


if __name__ == "__main__":
    main()
