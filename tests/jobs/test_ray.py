"""Jobs on a local Ray instance (CPU only, 2 CPUs): sharded generation gives the unsharded images, a Ray
worker killed mid-shard still ends with exactly N images, a benchmark through Ray writes the serial
results, cancel stops the Ray work, and without Ray nothing changes (ray is not even imported)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from backend.api.app import create_api
from backend.core import allocator
from backend.db.models import PoolImage
from backend.jobs import ray_executor
from backend.jobs.worker import JobWorker
from backend.runtime import prepare
from backend.store import FileStore
from tests.conftest import REPO, ApiHarness, make_settings

TINY_SD = {"model": "tiny", "resolution": 64, "steps": 2, "batch_size": 2, "chunk_size": 2, "review_size": 48}
CAT = {"template": "{color} cat on a {thing}", "slots": {"color": ["red", "black"], "thing": ["bed", "sofa"]}}
ACTOR = b"ray::ShardActor"  # the process title Ray gives a shard actor's worker process


pytestmark = pytest.mark.slow  # seconds to minutes a test: outside the fast tier (README)


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """One local Ray instance for the module (starting one takes ~10 s on this machine)."""
    import ray  # under a second to import, but every worker collecting the suite would pay it

    # Ray starts its workers at nice 15; on a shared test host that starves them behind every other
    # process, and the actors' imports alone would take minutes.
    os.environ.setdefault("RAY_worker_niceness", "0")
    for attempt in range(3):  # Ray gives its node 30 s to register: an overloaded host can miss that
        try:
            ray.init(num_cpus=2, include_dashboard=False)
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    yield ray.get_runtime_context().gcs_address
    ray_executor.release_actors()
    ray.shutdown()


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # The Ray workers run single-threaded (OMP_NUM_THREADS=1); the serial runs match them, so both sides
    # add the same floats in the same order.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def api(tmp_path: Path, ray_address: str) -> Iterator[ApiHarness]:
    """The API on a Ray-enabled workspace; ``run_with`` runs a job with or without Ray."""
    settings = make_settings(tmp_path, ray_address=ray_address, lease_s=1.5)
    db = prepare(settings)
    with TestClient(create_api(settings, db)) as client:
        yield ApiHarness(client=client, settings=settings, db=db)
    db.dispose()


def run_job(api: ApiHarness, kind: str, params: dict[str, Any], ray_on: bool) -> dict[str, Any]:
    job = api.submit(kind, params)
    settings = api.settings if ray_on else api.settings.model_copy(update={"ray_address": None})
    assert JobWorker(settings, db=api.db, worker_id=f"w-{job['id']}").run_once() == job["id"]
    return api.job(job["id"])


def pool_images(api: ApiHarness, pool_id: int) -> dict[int, tuple[np.ndarray, dict]]:
    """idx -> (dataset pixels, row meta) of every row of the pool (each idx once: a duplicate fails)."""
    store = FileStore(api.settings.workspace_dir)
    with api.db.read_session() as s:
        rows = list(s.scalars(select(PoolImage).where(PoolImage.pool_id == pool_id)))
    out = {}
    for row in rows:
        assert row.idx not in out, f"image {row.idx} is in the pool twice"
        pixels = np.asarray(Image.open(io.BytesIO(store.path(row.file).read_bytes())).convert("RGB"))
        assert store.path(row.review_file).is_file()
        out[row.idx] = (pixels, row.meta)
    return out


def same_images(a: dict[int, tuple[np.ndarray, dict]], b: dict[int, tuple[np.ndarray, dict]]) -> None:
    assert sorted(a) == sorted(b)
    for idx in a:
        assert np.array_equal(a[idx][0], b[idx][0]), f"image {idx} differs"
        assert {k: v for k, v in a[idx][1].items() if k != "job_id"} == {
            k: v for k, v in b[idx][1].items() if k != "job_id"
        }


def actor_pids() -> list[int]:
    """The live processes of shard actors on this machine."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(ACTOR):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def rows_of_job(api: ApiHarness, job_id: int) -> int:
    from backend.db.models import Pool

    with api.db.read_session() as s:
        pool = s.scalars(select(Pool.id).where(Pool.job_id == job_id)).first()
        if pool is None:
            return 0
        return len(list(s.scalars(select(PoolImage.idx).where(PoolImage.pool_id == pool))))


def in_thread(fn: Any) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


def wait_for(condition: Any, what: str, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------- generation


def test_sharded_sd_generation_gives_the_unsharded_images(api: ApiHarness) -> None:
    params = TINY_SD | {"count": 8, "seed": 5, "vocabulary": CAT}
    serial = run_job(api, "generate_sd", params, ray_on=False)
    assert serial["status"] == "succeeded", serial["error"]
    # 4 pieces of 2 images in 3 shards on 2 actors: one actor loads its pipeline once and runs 2 shards.
    sharded = run_job(api, "generate_sd", params | {"shards": 3}, ray_on=True)
    assert sharded["status"] == "succeeded", sharded["error"]
    logs = api.client.get(f"/api/jobs/{sharded['id']}/logs").json()
    assert any("3 shard(s) on Ray" in line["message"] for line in logs), logs
    a = pool_images(api, serial["result"]["pool_id"])
    b = pool_images(api, sharded["result"]["pool_id"])
    assert sorted(b) == list(range(8))
    same_images(a, b)
    assert sharded["progress"] == 1.0


def test_sharded_gan_generation_gives_the_unsharded_images(api: ApiHarness, tmp_path: Path) -> None:
    folder = tmp_path / "cats"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    tiny = {"image_size": 32, "width": 0.125, "batch_size": 8, "seed": 1, "epochs": 1}
    gan = run_job(api, "train_gan", tiny | {"source": {"path": str(folder)}}, ray_on=False)
    assert gan["status"] == "succeeded", gan["error"]
    params = {"gan_id": gan["result"]["gan_id"], "count": 10, "seed": 3, "output_size": 16, "chunk_size": 3}
    serial = run_job(api, "generate_gan", params, ray_on=False)
    sharded = run_job(api, "generate_gan", params | {"shards": 2}, ray_on=True)
    assert sharded["status"] == "succeeded", sharded["error"]
    same_images(pool_images(api, serial["result"]["pool_id"]), pool_images(api, sharded["result"]["pool_id"]))


def test_sharded_diffusion_generation_gives_the_unsharded_images(api: ApiHarness, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):  # a folder source: one <class>/ subfolder per class
        (tmp_path / "two" / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                tmp_path / "two" / name / f"{i}.png"
            )
    tiny = {"image_size": 16, "width": 0.125, "layers_per_block": 1, "attention": False, "epochs": 1}
    model = run_job(
        api, "train_diffusion", tiny | {"source": {"path": str(tmp_path / "two")}, "grid_per_class": 0}, False
    )
    assert model["status"] == "succeeded", model["error"]
    params = {"diffusion_id": model["result"]["diffusion_id"], "class": "b", "count": 6, "steps": 2, "chunk_size": 2}
    serial = run_job(api, "generate_diffusion", params, ray_on=False)
    sharded = run_job(api, "generate_diffusion", params | {"shards": 2}, ray_on=True)
    assert sharded["status"] == "succeeded", sharded["error"]
    logs = api.client.get(f"/api/jobs/{sharded['id']}/logs").json()
    assert any("2 shard(s) on Ray" in line["message"] for line in logs), logs
    same_images(pool_images(api, serial["result"]["pool_id"]), pool_images(api, sharded["result"]["pool_id"]))


@pytest.mark.timeout(1500)  # a restarted actor imports torch and diffusers again: minutes on a loaded host
def test_a_ray_worker_killed_mid_shard_still_gives_exactly_n_images(api: ApiHarness) -> None:
    params = TINY_SD | {"count": 8, "seed": 7, "vocabulary": CAT, "shards": 2}
    reference = run_job(api, "generate_sd", params, ray_on=False)
    job = api.submit("generate_sd", params)
    worker = JobWorker(api.settings, db=api.db, worker_id="killed")
    thread = in_thread(worker.run_once)
    wait_for(lambda: rows_of_job(api, job["id"]) >= 2, "the first piece")
    victims = actor_pids()
    assert victims, "no shard actor is running"
    os.kill(victims[0], signal.SIGKILL)  # a Ray worker process dies mid-shard
    killed_at = rows_of_job(api, job["id"])
    thread.join(900)
    done = api.job(job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert killed_at < 8  # the kill hit the job while images were still missing
    images = pool_images(api, done["result"]["pool_id"])
    assert sorted(images) == list(range(8))
    same_images(pool_images(api, reference["result"]["pool_id"]), images)
    assert api.client.get(f"/api/pools/{done['result']['pool_id']}").json()["count"] == 8


def test_cancel_stops_the_ray_work(api: ApiHarness) -> None:
    job = api.submit("generate_sd", TINY_SD | {"count": 200, "vocabulary": CAT, "shards": 2})
    worker = JobWorker(api.settings, db=api.db, worker_id="cancelled")
    thread = in_thread(worker.run_once)
    wait_for(lambda: rows_of_job(api, job["id"]) >= 2, "the first piece")
    working = set(actor_pids())
    assert working
    assert api.client.post(f"/api/jobs/{job['id']}/cancel").status_code == 200
    thread.join(300)
    assert not thread.is_alive()
    done = api.job(job["id"])
    assert done["status"] == "cancelled"
    wait_for(lambda: not working & set(actor_pids()), "the actors to be killed", timeout=30)
    made = rows_of_job(api, job["id"])
    time.sleep(1.0)
    assert rows_of_job(api, job["id"]) == made < 200  # nothing more arrives after the cancel


# -------------------------------------------------------------------------------------------- benchmark


def test_a_benchmark_through_ray_writes_the_serial_results(api: ApiHarness) -> None:
    from backend.db.models import BenchmarkRun

    dataset = run_job(api, "prepare_dataset", {"source": "digits"}, ray_on=False)
    assert dataset["status"] == "succeeded", dataset["error"]
    params = {
        "dataset_id": dataset["result"]["dataset_id"],
        "imbalance": {"minority": "3", "keep": 5, "seed": 0},
        "variants": ["imbalanced"],
        "seeds": [0, 1],
        "model": "small",
        "epochs": 1,
        "batch_size": 64,
    }
    serial = run_job(api, "benchmark", params, ray_on=False)
    parallel = run_job(api, "benchmark", params, ray_on=True)
    assert parallel["status"] == "succeeded", parallel["error"]
    csv = [
        api.client.get(f"/api/benchmarks/{job['result']['benchmark_id']}/results.csv").text
        for job in (serial, parallel)
    ]
    assert csv[0].count("\n") == 3 and csv[0] == csv[1]
    with api.db.read_session() as s:
        runs = [
            {
                (r.variant, r.seed): ([{k: v for k, v in h.items() if k != "seconds"} for h in r.history], r.confusion)
                for r in s.scalars(select(BenchmarkRun).filter_by(benchmark_id=job["result"]["benchmark_id"]))
            }
            for job in (serial, parallel)
        ]
    assert runs[0] == runs[1]  # every epoch of every run, not only the final accuracies


# ---------------------------------------------------------------------------------------------- the rest


def test_health_reports_the_ray_cluster(api: ApiHarness) -> None:
    executor = api.client.get("/api/health").json()["executor"]
    assert executor["executor"] == "ray" and executor["ok"] is True
    assert executor["cpus"] == 2.0 and executor["gpus"] == 0.0 and executor["nodes"] == 1


def test_the_server_hands_its_local_cluster_to_its_workers(tmp_path: Path, ray_address: str) -> None:
    from backend.server import join_ray

    # `local` in a process that already runs Ray: the workers get that instance's address, not "local".
    assert join_ray(make_settings(tmp_path, ray_address="local")).ray_address == ray_address
    assert join_ray(make_settings(tmp_path, ray_address=ray_address)).ray_address == ray_address


WITHOUT_RAY = """
import sys, json
from pathlib import Path
from fastapi.testclient import TestClient
from backend.api.app import create_api
from backend.jobs import ray_executor
from backend.jobs.worker import JobWorker
from backend.runtime import prepare
from tests.conftest import make_settings

settings = make_settings(Path(sys.argv[1]))
db = prepare(settings)
client = TestClient(create_api(settings, db))
params = {"model": "tiny", "resolution": 64, "steps": 1, "batch_size": 2, "chunk_size": 2, "count": 2}
job = client.post("/api/jobs", json={"kind": "generate_sd", "params": params}).json()
JobWorker(settings, db=db, worker_id="plain").run_once()
done = client.get(f"/api/jobs/{job['id']}").json()
health = client.get("/api/health").json()["executor"]
print(json.dumps({"status": done["status"], "error": done["error"], "health": health, "ray": "ray" in sys.modules}))
"""


def test_a_job_without_ray_runs_as_before_and_never_imports_ray(tmp_path: Path) -> None:
    import json

    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_RAY, str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == "succeeded", out["error"]
    assert out["health"] == {"executor": "local"}
    assert out["ray"] is False


def _pid_worker(config: Any, hooks: Any, device: str) -> Any:
    """A shard worker that says which process made each item (module-level: Ray pickles it by name)."""
    return lambda piece: [[(i, os.getpid()) for i in piece]]


def _release_and_wait() -> None:
    """Kill this process's idle actors and wait until Ray has their CPUs back (a kill lands
    asynchronously; a job started before would find fewer free CPUs and start fewer actors)."""
    import ray

    ray_executor.release_actors()
    deadline = time.monotonic() + 20
    while ray.available_resources().get("CPU", 0.0) < ray.cluster_resources()["CPU"] and time.monotonic() < deadline:
        time.sleep(0.05)


def _malloc_settings(device: str) -> bool | None:
    """A unit that says whether its Ray worker process runs with backend.core.allocator's settings."""
    return allocator._done


def _malloc_worker(config: Any, hooks: Any, device: str) -> Any:
    return lambda piece: [[_malloc_settings(device) for _ in piece]]


@pytest.mark.skipif(not allocator.supported(), reason="glibc malloc only (Linux)")
def test_ray_actors_and_tasks_run_with_the_malloc_settings(ray_address: str) -> None:
    # Ray's worker processes never run ``prepare``: the actor and the task wrapper apply the settings.
    _release_and_wait()
    from_actor: list[bool | None] = []
    spec = ray_executor.ShardSpec(_malloc_worker, None, gpu=False)
    ray_executor.run_shards(spec, [[[0]]], on_result=from_actor.extend, should_stop=lambda: False, address=ray_address)
    _release_and_wait()
    from_task: dict[str, bool | None] = {}
    ray_executor.run_units(
        _malloc_settings,
        [("unit", ())],
        on_result=from_task.__setitem__,
        should_stop=lambda: False,
        address=ray_address,
    )
    assert from_actor == [True] and from_task == {"unit": True}


def test_each_actor_gets_its_own_shard_first(ray_address: str) -> None:
    """Two shards of one piece each run on two actors, not both on the first one (which would leave the
    second actor idle and its model unloaded for the next job)."""
    _release_and_wait()
    got: list[tuple[int, int]] = []
    spec = ray_executor.ShardSpec(_pid_worker, None, gpu=False)
    ray_executor.run_shards(spec, [[[0]], [[1]]], on_result=got.extend, should_stop=lambda: False, address=ray_address)
    ray_executor.release_actors()
    assert sorted(i for i, _ in got) == [0, 1]
    assert len({pid for _, pid in got}) == 2


def test_a_shard_longer_than_an_actor_s_queue_is_fed_to_the_end(ray_address: str) -> None:
    """Each actor holds IN_FLIGHT_PER_ACTOR pieces at once and gets the next one as each result comes back: a
    shard of more pieces than that comes back whole (without the feeding, pieces 2-5 were lost silently)."""
    _release_and_wait()
    got: list[tuple[int, int]] = []
    pieces = [[i] for i in range(3 * ray_executor.IN_FLIGHT_PER_ACTOR)]
    spec = ray_executor.ShardSpec(_pid_worker, None, gpu=False)
    ray_executor.run_shards(spec, [pieces], on_result=got.extend, should_stop=lambda: False, address=ray_address)
    ray_executor.release_actors()
    assert sorted(i for i, _ in got) == list(range(len(pieces)))
