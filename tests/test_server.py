"""Composition at the top: the studio reaches its own API."""

from __future__ import annotations

from pathlib import Path

from backend.server import api_base_url
from tests.conftest import make_settings


def test_the_studio_reaches_a_wildcard_bind_over_loopback(tmp_path: Path) -> None:
    assert api_base_url(make_settings(tmp_path, host="0.0.0.0", port=8123)) == "http://127.0.0.1:8123/api"
    assert api_base_url(make_settings(tmp_path, host="::1", port=80)) == "http://[::1]:80/api"
    assert api_base_url(make_settings(tmp_path, host="10.0.0.5", port=7860)) == "http://10.0.0.5:7860/api"


def test_the_driver_moves_an_experiment_on_while_nobody_reads_it(tmp_path: Path) -> None:
    """A study launched from the browser must reach its next stage with no browser polling it."""
    import time

    from backend import experiment_runs as runs
    from backend.jobs.worker import JobWorker
    from backend.runtime import prepare
    from backend.server import start_experiment_driver

    settings = make_settings(tmp_path)
    db = prepare(settings)
    config = {
        "name": "unwatched",
        "dataset": {"source": "digits"},
        "imbalance": {"minority": "3", "keep": 5, "seed": 0},
        "sd": {"enabled": False},
        "gan": {"enabled": False},
        "benchmark": {"variants": ["imbalanced"], "model": "small", "epochs": 1, "batch_size": 64},
    }
    experiment_id = runs.launch(db, settings, runs.prepare(config, settings, base_dir=tmp_path))
    worker = JobWorker(settings, db=db, worker_id="test")
    assert worker.run_once() is not None  # the dataset stage finishes; nothing reads the experiment
    stop = start_experiment_driver(settings, db, every_s=0.1)
    try:
        deadline = time.monotonic() + 30
        while runs.describe(db, settings, experiment_id)["stages"][1]["job_id"] is None:
            assert time.monotonic() < deadline, "the driver never submitted the benchmark stage"
            time.sleep(0.1)
        assert worker.run_once() is not None  # the benchmark the driver submitted
        while runs.describe(db, settings, experiment_id)["status"] == "running":
            assert time.monotonic() < deadline, "the driver never finished the experiment"
            time.sleep(0.1)
    finally:
        stop.set()
    assert runs.describe(db, settings, experiment_id)["status"] == "succeeded"
    db.dispose()
