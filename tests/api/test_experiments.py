"""/api/experiments: a whole study launched as one thing, through the same graph of jobs as the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from sqlalchemy import func, select

from backend.db.models import Job
from backend.experiment_cli import run_experiment
from backend.reports.tables import read_results_csv

# The digits demo with the SD and GAN stages off and one epoch of the small net: seconds on a CPU.
TINY: dict[str, Any] = {
    "name": "tiny-digits",
    "device": "cpu",
    "dataset": {"source": "digits"},
    "imbalance": {"minority": "3", "keep": 5, "seed": 0},
    "sd": {"enabled": False},
    "gan": {"enabled": False},
    "benchmark": {"variants": ["imbalanced", "full"], "model": "small", "epochs": 1, "batch_size": 64},
}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny batches gain nothing from intra-op threads, and they thrash on a busy shared CI host.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _job_count(api) -> int:
    with api.db.read_session() as s:
        return s.scalar(select(func.count(Job.id))) or 0


def _run_to_end(api, experiment_id: int) -> dict[str, Any]:
    """Run queued jobs in-process and read the experiment (which advances it) until it is finished."""
    for _ in range(20):  # one round per stage is enough; the bound only guards against a stuck graph
        api.run_jobs()
        body = api.client.get(f"/api/experiments/{experiment_id}").json()
        if body["status"] != "running":
            return body
    raise AssertionError(f"experiment {experiment_id} did not finish: {body}")


def test_unknown_key_is_named(api) -> None:
    r = api.client.post("/api/experiments", json={**TINY, "nmae": "x", "sd": {"bogus": 1}})
    assert r.status_code == 422, r.text
    assert "unknown key 'nmae'" in r.json()["message"] and "unknown key 'sd.bogus'" in r.json()["message"]
    # The YAML form gets the same message; nothing was recorded or queued.
    r = api.client.post("/api/experiments", json={"yaml": "name: x\nbenchmark: {epohcs: 1}\n"})
    assert r.status_code == 422 and "unknown key 'benchmark.epohcs'" in r.json()["message"], r.text
    assert api.client.get("/api/experiments").json()["total"] == 0 and _job_count(api) == 0


@pytest.mark.parametrize(
    ("section", "value"),
    [("dataset", {"source": "imagefolder", "path": "/etc"}), ("gan", {"source_path": "../../../../../../etc"})],
)
def test_paths_outside_the_allowed_directories_are_refused(api, section: str, value: dict) -> None:
    field = f"{section}.{'path' if section == 'dataset' else 'source_path'}"
    r = api.client.post("/api/experiments", json={**TINY, "gan": {"enabled": True}, section: value})
    assert r.status_code == 422, r.text
    assert r.json()["message"].startswith(f"{field}: ") and "outside the allowed directories" in r.json()["message"]
    assert _job_count(api) == 0


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_templates_are_valid_configs(api) -> None:
    names = {t["name"]: t["yaml"] for t in api.client.get("/api/experiments/templates").json()}
    assert {"cifar10_cat", "cifar10_cat_cpu"} <= set(names)
    path = yaml.safe_load(names["cifar10_cat_cpu"])["dataset"]["path"]
    assert Path(path).is_absolute() and path.endswith("cifar10-jpg.tar.gz")
    # Issue 30.14: a recipe keeps its comments (the form showed it re-dumped, "Sized for 2 CPU cores" gone), and
    # is otherwise the file: only its relative paths are made absolute.
    assert "Sized for 2 CPU cores" in names["digits_diffusion_cpu"]
    from backend.experiment_runs import PATH_KEYS

    def without_paths(data: dict[str, Any]) -> dict[str, Any]:
        for section, key in PATH_KEYS:
            (data.get(section) or {}).pop(key, None)
        return data

    for name, text in names.items():
        written = (EXAMPLES / f"{name}.yaml").read_text()
        assert text.count("#") == written.count("#") > 0, name
        assert without_paths(yaml.safe_load(text)) == without_paths(yaml.safe_load(written)), name


def test_cancel_stops_every_stage(api) -> None:
    r = api.client.post("/api/experiments", json={**TINY, "name": "to-cancel"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "running" and [s["name"] for s in body["stages"]] == ["dataset", "benchmark"]
    assert body["stages"][0]["status"] == "queued" and body["stages"][1]["status"] == "waiting"
    r = api.client.post(f"/api/experiments/{body['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert api.job(body["stages"][0]["job_id"])["status"] == "cancelled"
    assert api.run_jobs() == []  # nothing left to run, and reading it submits nothing more
    after = api.client.get(f"/api/experiments/{body['id']}").json()
    assert after["status"] == "cancelled" and after["stages"][1]["job_id"] is None
    # Resume retries the cancelled job and the graph goes on to the end.
    assert api.client.post(f"/api/experiments/{body['id']}/resume").json()["status"] == "running"
    assert _run_to_end(api, body["id"])["status"] == "succeeded"
    assert api.client.post(f"/api/experiments/{body['id']}/cancel").status_code == 409
    assert api.client.post("/api/experiments/999999/cancel").status_code == 404


def test_tiny_study_finishes_and_the_cli_reuses_its_jobs(api, tmp_path: Path) -> None:
    r = api.client.post("/api/experiments", json={"yaml": yaml.safe_dump(TINY)})
    assert r.status_code == 201, r.text
    body = _run_to_end(api, r.json()["id"])
    assert body["status"] == "succeeded", body["error"]
    assert all(s["status"] == "succeeded" and s["progress"] == 1.0 for s in body["stages"])
    assert [(row["variant"], row["seed"]) for row in body["rows"]] == [("imbalanced", 0), ("full", 0)]
    assert body["minority"] == ["3"] and set(body["headline"]) == {"imbalanced", "full"}
    csv = api.client.get(body["links"]["results.csv"])
    classes, rows = read_results_csv(csv.text)
    assert classes == [str(c) for c in range(10)] and rows[1]["per_class"]["3"] == pytest.approx(
        body["rows"][1]["per_class"]["3"], abs=0.01
    )
    report = api.client.get(body["links"]["report.html"])
    assert report.status_code == 200 and '<th class="minority">3</th>' in report.text
    listed = api.client.get("/api/experiments").json()
    assert listed["total"] == 1 and listed["items"][0]["headline"] == body["headline"]

    # The CLI on the same config and workspace finds every stage's job finished: no new job at all.
    jobs_before = _job_count(api)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY), "utf-8")
    settings = api.settings.model_copy(update={"workers": 1})
    result = run_experiment(config, tmp_path / "out", settings, quiet=True, poll_s=0.05)
    assert _job_count(api) == jobs_before
    assert result.jobs == {s["name"]: s["job_id"] for s in body["stages"]}
    assert (tmp_path / "out" / "results.csv").read_text("utf-8") == csv.text
    assert api.client.get("/api/experiments").json()["total"] == 2  # the CLI run is listed too


def test_a_failed_stage_fails_the_experiment_with_its_message(api, tmp_path: Path) -> None:
    empty = tmp_path / "empty"  # inside the allowed directories, but no class folders in it
    empty.mkdir()
    r = api.client.post("/api/experiments", json={**TINY, "dataset": {"source": "imagefolder", "path": str(empty)}})
    assert r.status_code == 201, r.text
    body = _run_to_end(api, r.json()["id"])
    assert body["status"] == "failed" and body["links"] == {}
    assert body["error"].startswith(f"dataset (prepare_dataset job {body['stages'][0]['job_id']}) failed: ")
    assert api.client.get(f"/api/experiments/{body['id']}/report.html").status_code == 409
