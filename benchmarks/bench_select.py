"""Selection scoring speed and memory: head-only MC-dropout vs T full forward passes.

    python benchmarks/bench_select.py [--device cuda] [--quick] [--model small|resnet18_cifar]
    python benchmarks/bench_select.py --evidence PATH/TO/cifar10   # cat share of picks per acquisition

1. Throughput, every side over the WHOLE pool (``--pool``, default 5,000 random 32x32 images, T = 20),
   alternated (A B C D A B C D ...) ``--reps`` times after a warm-up; ratios are medians of per-round
   ratios, so a shared machine's changing load stays out of them. Sides:
   - ``score_pool`` (backbone once, the T head passes as one call with ``rand >= p`` masks, bf16 where
     native, streamed);
   - "T head calls": the same with the T head passes as T calls of the head's own ``nn.Dropout``;
   - "issue-time": T head calls AND a float32 backbone -- the scoring code when issue 16 was filed
     (8f94e5a), the "today" of its >= 1.5x target;
   - naive: ``full_pass_probs`` (T full passes per batch) + ``summarize``;
   - baal 2.1: ``MCDropoutModule`` + ``ModelWrapper.predict_on_dataset`` + ``BALD``, same weights, on
     the same images pre-normalised (untimed), batch ``--batch`` // T images replicated T times in memory
     (baal's default), no loader workers (the tensors are in memory already).
   Every side scores the same channels_last model (how the trainer hands it over).
2. Memory: ``score_pool`` over 20,000 and 80,000 images read from a ``.npy`` file with ``NpyRows``,
   each in a fresh subprocess; prints the peak resident set while scoring (sampled every 5 ms), its
   growth over the RSS just before scoring, and ru_maxrss (flat = memory does not grow with the pool).
   Measured (2-core CPU VM, Intel Xeon with AVX512-BF16 and AMX, 2026-11-30 fourth session, ``--no-naive
   --reps 3``, 5,000 images, T = 20, ``small``): score_pool 9,449-10,052 img/s; T head calls 1.28-1.38x
   slower; issue-time code 4,820-5,232 img/s -> **1.67-1.76x** (two runs; target >= 1.5x met); baal 2.1
   358 img/s -> 26x. ``--model resnet18_cifar --pool 1000``: 293 vs 122 img/s -> 2.72x the issue-time code
   (bf16 does it; batching the head adds nothing there). Peak RSS while scoring 901 MB at 20,000 images,
   903 MB at 80,000 (1.00x, flat). Where the time went before: ``nn.Dropout``'s Bernoulli sampler took a
   third of ``small``'s scoring time on 1.3 M mask values per batch; ``torch.rand >= p`` draws them 4x
   faster. Fifth session, a 2-core AMD EPYC (Zen 5, AVX512-BF16) VM, every side under the malloc settings
   of backend/core/allocator.py (scoring's own gain from them, 1.53x, is in bench_malloc.py): score_pool
   24,708 img/s, T head calls 1.48x slower, issue-time code 13,191 -> **1.89x**, baal 2.1 1,020 -> 24x;
   peak RSS 900 MB at 20,000 images, 903 MB at 80,000 (flat).
3. ``--evidence``: the real-data experiment of tests/selection/test_evidence.py for every
   acquisition function (300 removed cats + 300 other images, 150 picks), then the batch-aware
   variants (stochastic sampling, k-center diversity): precision of the picks (real-cat share) and the
   share of near-duplicate pick pairs (closer than 1% of all pool pairs in round 0's feature space).
   ``--near-copies`` adds 3 near-copies of 60 cats and 60 others to the pool (a generator's pool).
   ``--seeds N`` repeats every row for seeds 0..N-1 (classifiers retrained) and prints mean +- std.

   Measured (2-core CPU VM, ``--seeds 5``), precision % / near-duplicate pick pairs %, mean +- std:

   ======================================  ===================  ===================
   row                                     plain pool           ``--near-copies``
   ======================================  ===================  ===================
   target_prob (top-k)                     75.7+-1.5 / 4.33     76.8+-3.3 / 5.64
   epig                                    58.9+-9.7 / 2.17     58.4+-10.4 / 3.98
   validity_then_epig, _bald (before)      75.7+-1.5 / 4.33     77.1+-2.9 / 5.43
   validity_then_epig, _bald (spread fill) 75.2+-2.4 / 2.07
   validity_then_epig, _bald x2            76.8+-1.1 / 3.17
   bald                                    41.7+-6.8 / 1.69     41.9+-4.8 / 2.29
   random                                  49.3+-5.1 / 1.14     49.5+-2.6 / 1.21
   target_prob + softmax b=20              75.9+-4.2 / 4.04     76.5+-2.4 / 5.26
   target_prob + power b=8                 75.2+-3.5 / 4.02     74.8+-3.1 / 5.24
   target_prob + k_center x2               77.2+-2.6 / 1.27     77.1+-3.2 / 2.50
   ======================================  ===================  ===================

   Re-measured in the fourth session after the scorer's dropout masks changed to ``rand >= p`` (other random
   draws, same distribution), plain pool, ``--quick --seeds 5``: target_prob 75.3 +- 1.2 / 3.96; epig
   57.6 +- 9.7 / 1.56; validity_then_epig (default spread 4) 76.1 +- 1.8 / 2.18 (78.7 / 76.7 / 74.7 / 76.7 /
   74.0 vs target_prob's 75.3 / 73.3 / 76.0 / 75.3 / 76.7); random 49.3 +- 5.1 / 1.23.

   EPIG (target set: the kept real cats) is NOT as precise as target_prob: a dog that looks like a cat is
   as informative about the classifier's predictions on cats as a cat is. The validity_then_* rows first
   equalled target_prob ("before") because the round-0 classifier (50 cats among 1,250 images) gives fewer
   than ``per_round`` candidates a cat posterior >= 0.5 (62 of the 75 needed in round 0, near-copy pool,
   seed 0), and the fallback took the highest posteriors, i.e. target_prob's own order. The fallback now
   keeps every valid pick and spreads the fill over the spread_factor x as many highest posteriors (k-center,
   ``ValidityThenBald._fallback``): default spread_factor 4 halves the near-duplicates at the same precision
   (75.2 +- 2.4 vs 75.7 +- 1.5, within one std); spread_factor 2 (row "x2") is 1.1 points MORE precise than
   target_prob on every seed (77.3 / 78.0 / 77.3 / 75.3 / 76.0) with a quarter fewer near-duplicates. Both
   inner scores give the same picks here: in a fallback round the spread decides, not BALD or EPIG, so
   this gain is the fallback's, not EPIG's. Tried and not kept: ranking by target_prob x EPIG, 72.8 +- 2.6 /
   3.42 (below target_prob on 4 of 5 seeds). Also tried (fourth session, an experiment script patching the
   scorer's EPIG, not kept), versions that use what EPIG ignores here -- the candidate will be added WITH the
   minority label c, and the targets' label is c too -- plain pool, precision %:
   pointwise MI of (y = c, y* = c), i.e. the expected gain in the targets' log p(c) from training on (x, c):
   34.0 (seed 0; it favours images that are cats only under a few dropout masks); KL of the targets'
   predictive after conditioning on y = c: 32.7 (seed 0); EPIG's y = c term p(c|x) KL(...): 64.5 +- 6.3;
   p(c|x) x that pointwise MI: 72.9 +- 3.4 (5 seeds; target_prob 75.7 +- 1.5 in the table, 75.3 on seed 0
   with this session's masks). None reaches target_prob: on a pool where half the candidates are not the
   class, being the class is what matters first, and every information measure rewards some confusable
   non-cats. Stochastic sampling keeps precision within a point and lowers near-duplicates only slightly
   (within about one std); k-center diversity is what halves them (or better) at the same precision.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.core.allocator import keep_freed_memory  # noqa: E402
from backend.selection.scoring import NpyRows, full_pass_probs, score_pool  # noqa: E402
from backend.training.models import build_model  # noqa: E402

MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


def _model(name: str, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    # channels_last on every device: how the trainer hands the round's classifier to scoring.
    return build_model(name, 10, dropout=0.5).to(device).to(memory_format=torch.channels_last)


def _pool(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _baal_bald(model: torch.nn.Module, pool: np.ndarray, args: argparse.Namespace) -> float:
    """Seconds for baal 2.1's MC-dropout BALD over ``pool`` (normalisation untimed)."""
    from baal.active.heuristics import BALD
    from baal.bayesian.dropout import MCDropoutModule
    from baal.modelwrapper import ModelWrapper, TrainingArgs
    from torch.utils.data import TensorDataset

    from backend.selection.scoring import to_input

    x = torch.cat([to_input(pool[i : i + 1024], MEAN, STD, "cpu") for i in range(0, len(pool), 1024)])
    data = TensorDataset(x.contiguous(), torch.zeros(len(x), dtype=torch.long))
    wrapper = ModelWrapper(
        MCDropoutModule(copy.deepcopy(model)),  # baal patches dropout layers in place: keep ours as is
        TrainingArgs(batch_size=max(1, args.batch // args.t), use_cuda=args.device.startswith("cuda"), workers=0),
    )
    t0 = time.perf_counter()
    preds = wrapper.predict_on_dataset(data, iterations=args.t, verbose=False)  # (N, C, T)
    BALD().compute_score(preds)
    _sync(args.device)
    return time.perf_counter() - t0


def _today(model, pool, kw, fp32: bool = False) -> float:
    """Seconds for ``score_pool`` with the T head passes as T calls (the code before batching them);
    ``fp32``: also with the backbone in float32 -- the scoring code when issue 16 was filed (8f94e5a)."""
    import backend.selection.scoring as scoring

    batched, precision = scoring._head_passes, scoring.scoring_bf16
    scoring._head_passes = scoring._head_passes_sequential
    if fp32:
        scoring.scoring_bf16 = lambda device: False
    try:
        t0 = time.perf_counter()
        score_pool(model, pool, MEAN, STD, target=3, **kw)
        return time.perf_counter() - t0
    finally:
        scoring._head_passes, scoring.scoring_bf16 = batched, precision


def throughput(args: argparse.Namespace) -> None:
    from backend.selection.acquisition import summarize
    from backend.selection.scoring import scoring_precision

    n = args.pool or (1000 if args.quick else 5000)
    model = _model(args.model, args.device)
    pool = _pool(n)
    kw = {"mc_samples": args.t, "device": args.device, "batch_size": args.batch}
    print(
        f"pool {n} x 32x32 (whole pool on every side), T={args.t}, model={args.model}, device={args.device}, "
        f"threads={torch.get_num_threads()}, backbone precision {scoring_precision(args.device)}, "
        f"load average {os.getloadavg()[0]:.1f} (shared machine)"
    )

    def fast() -> float:
        t0 = time.perf_counter()
        score_pool(model, pool, MEAN, STD, target=3, **kw)
        _sync(args.device)
        return time.perf_counter() - t0

    def naive() -> float:
        t0 = time.perf_counter()
        summarize(full_pass_probs(model, pool, MEAN, STD, **kw), 3)
        _sync(args.device)
        return time.perf_counter() - t0

    sides = {
        "score_pool": fast,
        "T head calls": lambda: _today(model, pool, kw),
        "issue-time: fp32, T calls": lambda: _today(model, pool, kw, fp32=True),
    }
    if not args.no_naive:
        sides["naive T full passes"] = naive
    if not args.no_baal:
        sides["baal 2.1 MCDropout+BALD"] = lambda: _baal_bald(model, pool, args)
    score_pool(model, pool[:256], MEAN, STD, target=3, **kw)  # warm-up
    rounds: list[dict[str, float]] = []
    for _ in range(args.reps):
        rounds.append({name: fn() for name, fn in sides.items()})
        print("  round: " + ", ".join(f"{k} {n / v:.0f} img/s" for k, v in rounds[-1].items()), flush=True)
    for name in sides:
        med = statistics.median(r[name] for r in rounds)
        ratio = statistics.median(r[name] / r["score_pool"] for r in rounds)
        print(f"  {name:28s} {n / med:10.1f} images/s   score_pool is {ratio:6.2f}x this")
    print("targets: >= 1.5x the issue-time code (fp32 backbone, T head calls), keep >> baal")


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _RssSampler(threading.Thread):
    """Samples the resident set every 5 ms: its peak while scoring, unlike ru_maxrss, is not hidden by a
    larger peak reached earlier (imports, warm-up)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = _rss_mb()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.005):
            self.peak = max(self.peak, _rss_mb())

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return max(self.peak, _rss_mb())


def _child(path: str, model_name: str, device: str, t: int, batch: int) -> None:
    """Subprocess body: score the pool at ``path`` and print memory figures as JSON."""
    model = _model(model_name, device)
    rows = NpyRows(path)
    score_pool(model, rows[:batch], MEAN, STD, target=3, mc_samples=t, device=device, batch_size=batch)
    before = _rss_mb()
    sampler = _RssSampler()
    sampler.start()
    t0 = time.perf_counter()
    summary = score_pool(model, rows, MEAN, STD, target=3, mc_samples=t, device=device, batch_size=batch)
    seconds = time.perf_counter() - t0
    peak = sampler.stop()
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    out = {
        "n": len(rows),
        "before_mb": before,
        "peak_mb": peak,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "summary_mb": sum(v.nbytes for v in summary.values()) / 2**20,
        "seconds": seconds,
        "gpu_peak_mb": gpu,
    }
    print(json.dumps(out))


def memory(args: argparse.Namespace) -> None:
    sizes = (2000, 8000) if args.quick else (20000, 80000)
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for n in sizes:
            path = Path(tmp) / f"pool_{n}.npy"
            out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 32, 32, 3))
            for s in range(0, n, 5000):  # written in chunks so this parent stays small too
                out[s : s + 5000] = _pool(min(5000, n - s), seed=s)
            out.flush()
            del out
            cmd = [
                sys.executable,
                __file__,
                "--child",
                str(path),
                "--model",
                args.model,
                "--device",
                args.device,
                "--t",
                str(args.t),
                "--batch",
                str(args.batch),
            ]
            res = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            path.unlink()
    for r in rows:
        gpu = f", GPU peak {r['gpu_peak_mb']:.0f} MB" if r["gpu_peak_mb"] is not None else ""
        print(
            f"  {r['n']:6d} images: peak RSS while scoring {r['peak_mb']:7.1f} MB "
            f"(+{r['peak_mb'] - r['before_mb']:5.1f} MB"
            f" over the RSS before; ru_maxrss {r['maxrss_mb']:.0f} MB; summaries {r['summary_mb']:.2f} MB){gpu}, "
            f"{r['n'] / r['seconds']:.0f} images/s"
        )
    print(
        f"peak RSS ratio {sizes[1]} vs {sizes[0]} images: {rows[1]['peak_mb'] / rows[0]['peak_mb']:.2f}x (flat ~ 1.0x)"
    )


# (label, acquisition, SelectionSpec knobs): every acquisition as top-k, then the batch-aware variants.
BATCH_VARIANTS = [
    ("target_prob + softrank b=2", "target_prob", {"stochastic": "softrank", "beta": 2.0}),
    ("target_prob + softrank b=4", "target_prob", {"stochastic": "softrank", "beta": 4.0}),
    ("target_prob + softmax b=20", "target_prob", {"stochastic": "softmax", "beta": 20.0}),
    ("target_prob + power b=8", "target_prob", {"stochastic": "power", "beta": 8.0}),
    ("target_prob + k_center x2", "target_prob", {"diversity": "k_center", "spread_factor": 2}),
    (
        "target_prob + softrank b=4 + k_center x2",
        "target_prob",
        {"stochastic": "softrank", "beta": 4.0, "diversity": "k_center", "spread_factor": 2},
    ),
    ("validity_then_epig x2", "validity_then_epig", {"spread_factor": 2}),
    ("validity_then_bald x2", "validity_then_bald", {"spread_factor": 2}),
    ("epig + softrank b=2", "epig", {"stochastic": "softrank", "beta": 2.0}),
    ("epig + k_center x2", "epig", {"diversity": "k_center", "spread_factor": 2}),
]


def evidence(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "selection"))
    from evidence_setup import ACQUISITION_NAMES, duplicate_ruler, load_evidence_data, run_picks, with_near_copies

    data = load_evidence_data(Path(args.evidence))
    if args.near_copies:
        data = with_near_copies(data)
        print(f"pool with planted near-copies: {len(data.pool_x)} images, {100 * data.pool_is_cat.mean():.0f}% cats")
    ruler = duplicate_ruler(data, device=args.device)
    seeds = list(range(args.seeds))
    print(f"near-duplicate pair: centred cosine distance <= {ruler.threshold:.4f} (1% of pool pairs)")
    print(f"seeds {seeds} (each retrains the classifiers); mean +- std over seeds, then the per-seed precisions")
    print(f"  {'acquisition':42s} {'precision':>14s} {'round 1':>8s} {'round 2':>8s} {'near-dup pairs':>16s}  per seed")
    runs = [(n, n, {}) for n in ACQUISITION_NAMES] + ([] if args.quick else BATCH_VARIANTS)
    for label, name, knobs in runs:
        if args.only and not any(o in label for o in args.only.split(",")):
            continue
        t0 = time.perf_counter()
        prec, r1, r2, dups = [], [], [], []
        for seed in seeds:
            idx = run_picks(data, name, device=args.device, seed=seed, **knobs)
            cat = data.pool_is_cat[idx]
            prec.append(100 * cat.mean())
            r1.append(100 * cat[:75].mean())
            r2.append(100 * cat[75:].mean())
            dups.append(100 * ruler.share(idx))
        sd = statistics.stdev(prec) if len(prec) > 1 else 0.0
        dsd = statistics.stdev(dups) if len(dups) > 1 else 0.0
        print(
            f"  {label:42s} {statistics.mean(prec):6.1f} +- {sd:4.1f} {statistics.mean(r1):7.1f}% "
            f"{statistics.mean(r2):7.1f}% {statistics.mean(dups):7.2f} +- {dsd:4.2f}%  "
            f"{' / '.join(f'{p:.1f}' for p in prec)}  ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="10x smaller pools")
    p.add_argument("--model", default="small", choices=["small", "resnet18_cifar"])
    p.add_argument("--t", type=int, default=20, help="MC-dropout samples")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--pool", type=int, help="throughput pool size (default 5,000; --quick 1,000)")
    p.add_argument("--reps", type=int, default=2, help="alternated throughput rounds")
    p.add_argument("--no-naive", action="store_true", help="skip the T-full-passes side (slowest)")
    p.add_argument("--no-baal", action="store_true", help="skip the baal side")
    p.add_argument("--no-memory", action="store_true", help="skip the 20k/80k memory check")
    p.add_argument("--evidence", metavar="CIFAR10_DIR", help="run the acquisition evidence instead")
    p.add_argument("--only", help="--evidence: run only the rows whose label contains one of these (comma-separated)")
    p.add_argument("--near-copies", action="store_true", help="--evidence: add planted near-copy families")
    p.add_argument("--seeds", type=int, default=1, help="--evidence: seeds 0..N-1 per row (mean +- std)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    keep_freed_memory()  # as every Rebalance process does at start-up (backend/core/allocator.py)
    if args.child:
        _child(args.child, args.model, args.device, args.t, args.batch)
        return
    if args.evidence:
        evidence(args)
        return
    throughput(args)
    if not args.no_memory:
        memory(args)


if __name__ == "__main__":
    main()
