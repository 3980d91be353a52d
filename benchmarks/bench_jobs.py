"""Spine benchmarks (issue 2).

1. Queued-to-running latency on an idle worker (target < 1 s): default polling vs a naive 2 s poll.
2. GET /api/jobs/{id} latency p50/p99 with 8 concurrent clients while 2 workers write progress
   (target p99 < 50 ms on SQLite): buffered progress (what handlers use) vs a committed write per update.

    python benchmarks/bench_jobs.py [--db-url URL] [--requests 400]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend.config import Settings  # noqa: E402
from backend.db.models import Job  # noqa: E402
from backend.jobs import queue  # noqa: E402
from backend.runtime import prepare  # noqa: E402

PLUGIN = "benchmarks.jobkinds"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "app.py", *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def wait_until(cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise TimeoutError


def queue_latency(ws: Path, db_url: str, poll_s: float, n: int) -> list[float]:
    settings = Settings(workspace=ws, db_url=db_url, workers=0, plugins=[PLUGIN])
    db = prepare(settings)
    env = {**os.environ, "PYTHONPATH": str(REPO), "REBALANCE_POLL_S": str(poll_s)}
    worker = spawn(["worker", "--workspace", str(ws), "--db-url", settings.database_url, "--plugins", PLUGIN], env)
    try:
        first, _ = queue.submit(db, "bench_noop", {})  # warm-up: the worker has started once this runs
        wait_until(lambda: _status(db, first.id) == "succeeded", 120)
        out = []
        for _ in range(n):
            time.sleep(poll_s * 0.37 + 0.05)  # land at different phases of the poll cycle
            job, _ = queue.submit(db, "bench_noop", {})
            wait_until(lambda j=job: _status(db, j.id) == "succeeded")
            with db.read_session() as s:
                j = s.get(Job, job.id)
                out.append((j.started_at - j.created_at).total_seconds())
        return out
    finally:
        worker.terminate()
        worker.wait()
        db.dispose()


def _status(db, job_id: int) -> str:
    with db.read_session() as s:
        return s.get(Job, job_id).status


def get_latency(ws: Path, db_url: str | None, mode: str, requests: int) -> list[float]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    settings = Settings(workspace=ws, db_url=db_url, workers=0, plugins=[PLUGIN])
    db = prepare(settings)
    url = settings.database_url
    server = spawn(
        ["--workspace", str(ws), "--db-url", url, "--port", str(port), "--workers", "0", "--plugins", PLUGIN], env
    )
    workers = [spawn(["worker", "--workspace", str(ws), "--db-url", url, "--plugins", PLUGIN], env) for _ in range(2)]
    base = f"http://127.0.0.1:{port}/api"
    try:
        wait_until(lambda: _ok(base + "/health"), 120)
        ids = []
        for _ in range(2):
            r = httpx.post(
                base + "/jobs",
                json={"kind": "bench_progress", "params": {"updates": 100_000, "interval_s": 0.002, "mode": mode}},
            )
            ids.append(r.json()["id"])
        wait_until(lambda: all(httpx.get(f"{base}/jobs/{i}").json()["status"] == "running" for i in ids), 120)
        time.sleep(1.0)

        def client_loop(k: int) -> list[float]:
            # One keep-alive connection per client, as a polling browser tab would hold.
            out = []
            with httpx.Client() as c:
                for _ in range(requests // 8):
                    t = time.perf_counter()
                    c.get(f"{base}/jobs/{ids[k % 2]}").raise_for_status()
                    out.append(time.perf_counter() - t)
            return out

        with ThreadPoolExecutor(8) as pool:
            lat = [x for xs in pool.map(client_loop, range(8)) for x in xs]
        for i in ids:
            httpx.post(f"{base}/jobs/{i}/cancel")
        return lat
    finally:
        for p in [server, *workers]:
            p.terminate()
        for p in [server, *workers]:
            p.wait()
        db.dispose()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db-url", default=None, help="default: SQLite in a temp workspace")
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--latency-samples", type=int, default=10)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        print("== queued -> running latency on an idle worker (target < 1 s)")
        res = {}
        for label, poll in (("default poll 0.2 s", 0.2), ("naive poll 2.0 s", 2.0)):
            ws = Path(tmp) / f"lat-{poll}"
            lat = queue_latency(ws, args.db_url or f"sqlite:///{ws}/rebalance.db", poll, args.latency_samples)
            res[label] = lat
            print(f"  {label:20s} mean {statistics.mean(lat) * 1000:7.1f} ms   max {max(lat) * 1000:7.1f} ms")
        ratio = statistics.mean(res["naive poll 2.0 s"]) / statistics.mean(res["default poll 0.2 s"])
        print(f"  ratio naive/default mean latency: {ratio:.1f}x")

        print(f"== GET /api/jobs/{{id}}, 8 concurrent clients, {args.requests} requests, 2 workers writing progress")
        p99 = {}
        for mode in ("buffered", "direct"):
            ws = Path(tmp) / f"get-{mode}"
            lat = get_latency(ws, args.db_url, mode, args.requests)
            p99[mode] = pct(lat, 0.99)
            print(f"  progress {mode:8s}: p50 {pct(lat, 0.5) * 1000:6.1f} ms   p99 {p99[mode] * 1000:6.1f} ms")
        print(f"  ratio p99 direct/buffered: {p99['direct'] / p99['buffered']:.2f}x (target p99 < 50 ms)")


if __name__ == "__main__":
    main()
