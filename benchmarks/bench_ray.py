"""Ray executor: 1 shard vs N shards of the same generation job, and serial vs Ray benchmark runs.

Both sides run the real job handlers through a worker against a fresh workspace. Generation: the same
`generate_sd` job (image i is the same either way) with `shards=1` and `shards=N` on a local Ray instance
(N = the cluster's GPUs, else `--shards`), after a warm-up job that started the actors and loaded the
pipeline, so both sides time generation, not start-up. Benchmark: the same `benchmark` job (variants x
seeds of the `small` CNN on the digits demo) in the worker's process, then as Ray tasks.

    python benchmarks/bench_ray.py                    # CPU: tiny SD, 2 shards on 2 CPUs (~5 min on 2 busy cores)
    python benchmarks/bench_ray.py --quick            # fewer images and epochs
    python benchmarks/bench_ray.py --model DIR --count 256 --resolution 512   # a GPU machine: 1 vs all GPUs

Measured on the 2-core CPU VM (Intel Xeon, 2026-11-30 fourth session, nothing else running), ``--count 192
--resolution 128 --steps 8 --epochs 3``, two runs: generate_sd without Ray (2 threads) 15.26 s, 1 shard 16.07 /
17.94 s, 2 shards 9.24 / 9.96 s -> 1.74x / 1.80x over 1 shard, 1.53x over no Ray; benchmark serial (2 threads)
4.41 / 7.60 s vs Ray tasks (warm workers) 2.71 / 2.58 s -> 1.63x / 2.95x (the serial side's time varies with
the VM); the first Ray benchmark run, which starts the task workers, took 11-13 s. ``--quick`` and the defaults:
1.46-1.62x generation, 1.30x benchmark. The session before measured 0.91x and 0.53x: the first actor took
every shard's first piece (so the second actor was still cold when timed) and the serial side ran one thread.
Each actor or task gets one CPU, so on 2 cores 2 shards simply use both; several GPUs or hosts are not measured
(no GPU lent).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402
import torch  # noqa: E402

from backend.config import Settings  # noqa: E402
from backend.jobs import queue, ray_executor  # noqa: E402
from backend.jobs.worker import JobWorker  # noqa: E402
from backend.runtime import prepare  # noqa: E402

CAT = {"template": "{color} cat on a {thing}", "slots": {"color": ["red", "black"], "thing": ["bed", "sofa"]}}


def run(db: Any, settings: Settings, kind: str, params: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Submit and run one job; (its result, wall seconds)."""
    job, _ = queue.submit(db, kind, params)
    t0 = time.perf_counter()
    JobWorker(settings, db=db, worker_id=f"bench-{job.id}").run_once()
    seconds = time.perf_counter() - t0
    with db.read_session() as s:
        row = s.get(type(job), job.id)
        if row.status != "succeeded":
            raise SystemExit(f"{kind} job failed: {row.error}")
        return dict(row.result), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="an existing Ray cluster (default: start one here)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--shards", type=int, help="shards of the parallel side (default: GPUs, else --cpus)")
    parser.add_argument("--model", default="tiny", help="SD model: tiny, or a local pipeline directory")
    parser.add_argument("--count", type=int, default=24, help="images per generation job")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per benchmark run")
    parser.add_argument("--quick", action="store_true", help="fewer images and epochs")
    args = parser.parse_args()
    if args.quick:
        args.count, args.epochs = 12, 1

    if args.address:
        ray.init(address=args.address, include_dashboard=False)
    else:
        # Ray starts its workers at nice 15: on a shared host they would wait behind every other process.
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(num_cpus=args.cpus, include_dashboard=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    device = "cuda" if gpus else "cpu"
    shards = args.shards or gpus or args.cpus
    # The serial side keeps torch's default threads (all cores), as a worker runs a benchmark without Ray;
    # each Ray actor or task gets one CPU (one thread).
    address = ray.get_runtime_context().gcs_address
    print(f"Ray at {address}: {ray.cluster_resources().get('CPU', 0):.0f} CPUs, {gpus} GPUs; device {device}")

    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        serial = Settings(workspace=Path(tmp) / "ws", workers=0, device=device, start_dir=Path(tmp))
        on_ray = serial.model_copy(update={"ray_address": address})
        db = prepare(serial)

        # -- generation: 1 shard vs N shards (warm actors on both sides)
        sd = {"model": args.model, "resolution": args.resolution, "steps": args.steps, "vocabulary": CAT}
        sd |= {"batch_size": 4, "chunk_size": 4, "count": args.count}
        run(db, on_ray, "generate_sd", sd | {"shards": shards, "count": 4 * shards})  # start actors, load
        _, one = run(db, on_ray, "generate_sd", sd | {"shards": 1})
        _, many = run(db, on_ray, "generate_sd", sd | {"shards": shards})
        run(db, serial, "generate_sd", sd | {"count": 4})  # load the pipeline in this process
        _, here = run(db, serial, "generate_sd", sd)
        print(f"\ngenerate_sd, {args.count} images of {args.model} at {args.resolution} px, {args.steps} steps:")
        print(f"  without Ray  {here:7.2f} s  {args.count / here:7.2f} images/s  ({torch.get_num_threads()} threads)")
        print(f"  1 shard      {one:7.2f} s  {args.count / one:7.2f} images/s")
        print(f"  {shards} shards     {many:7.2f} s  {args.count / many:7.2f} images/s")
        print(f"  speed-up     {one / many:7.2f}x over 1 shard, {here / many:.2f}x over no Ray")
        ray_executor.release_actors()

        # -- benchmark: serial runs in the worker's process vs Ray tasks
        dataset, _ = run(db, serial, "prepare_dataset", {"source": "digits"})
        bench = {
            "dataset_id": dataset["dataset_id"],
            "imbalance": {"minority": "3", "keep": 5, "seed": 0},
            "variants": ["imbalanced", "oversample"],
            "seeds": [0, 1],
            "model": "small",
            "epochs": args.epochs,
            "batch_size": 64,
        }
        _, alone = run(db, serial, "benchmark", bench)
        # The first Ray run starts the task workers (each imports torch): timed apart, as a cold start.
        _, cold = run(db, on_ray, "benchmark", bench | {"seeds": [10, 11]})
        _, spread = run(db, on_ray, "benchmark", bench)
        print(f"\nbenchmark, 2 variants x 2 seeds of `small`, {args.epochs} epochs each:")
        print(f"  serial       {alone:7.2f} s  ({torch.get_num_threads()} threads, in this process)")
        print(f"  Ray tasks    {spread:7.2f} s  (GPU share {0.25 if gpus else 0} each, 1 CPU each; warm workers)")
        print(f"  (the first Ray run, other seeds, starting the workers: {cold:.2f} s)")
        print(f"  speed-up     {alone / spread:7.2f}x")
        db.dispose()
    ray.shutdown()


if __name__ == "__main__":
    main()
