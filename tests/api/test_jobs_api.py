"""The job API contract: submit, validation, idempotency, listing, logs, cancel, retry, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.api.app import create_api
from backend.jobs.registry import load_kinds
from backend.runtime import prepare
from tests.conftest import ApiHarness, make_settings

load_kinds(["tests.jobs.kinds_for_tests"])


def test_health_reports_database_workers_and_device(api: ApiHarness) -> None:
    body = api.client.get("/api/health").json()
    assert body["status"] == "ok"
    assert body["database"]["ok"] is True and body["database"]["dialect"] == "sqlite"
    assert body["device"] == "cpu"
    assert body["live_workers"] == 0 and body["workers"] == []


def test_docs_and_openapi_are_served(api: ApiHarness) -> None:
    assert api.client.get("/api/docs").status_code == 200
    spec = api.client.get("/api/openapi.json").json()
    assert "/api/jobs" in spec["paths"] and "/api/health" in spec["paths"]


def test_submit_returns_201_queued_job_and_runs(api: ApiHarness) -> None:
    r = api.client.post("/api/jobs", json={"kind": "test_echo", "params": {"n": 3}})
    assert r.status_code == 201
    job = r.json()
    assert job["status"] == "queued" and job["params"] == {"n": 3} and job["progress"] == 0
    (done,) = api.run_jobs()
    assert done["id"] == job["id"] and done["status"] == "succeeded"
    assert done["result"] == {"n": 3} and done["progress"] == 1.0
    assert done["started_at"] and done["finished_at"] and done["attempts"] == 1
    logs = api.client.get(f"/api/jobs/{job['id']}/logs").json()
    assert [entry["message"] for entry in logs] == ["ran n=3"]


def test_unknown_kind_is_422_naming_the_field(api: ApiHarness) -> None:
    r = api.client.post("/api/jobs", json={"kind": "no_such_kind", "params": {}})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "kind"]
    assert "no_such_kind" in r.json()["message"] and "test_echo" in r.json()["message"]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"n": -1}, "n"), ({"n": "many"}, "n"), ({"n": 1, "extra": 2}, "extra")],
)
def test_invalid_params_are_422_naming_the_field(api: ApiHarness, params: dict, field: str) -> None:
    r = api.client.post("/api/jobs", json={"kind": "test_echo", "params": params})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "params", field]
    assert r.json()["message"].startswith(f"params.{field}:")


def test_malformed_json_and_wrong_types_are_4xx(api: ApiHarness) -> None:
    r = api.client.post("/api/jobs", content=b'{"kind": "test_echo", ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["message"]
    r = api.client.post("/api/jobs", json={"kind": "test_echo", "params": [1, 2]})
    assert r.status_code == 422 and "params" in r.json()["message"]


def test_params_over_1mb_are_413(api: ApiHarness) -> None:
    r = api.client.post("/api/jobs", json={"kind": "test_echo", "params": {"n": 1, "pad": "x" * 1_100_000}})
    assert r.status_code == 413 and "too large" in r.json()["detail"]


def test_idempotency_key_returns_the_same_job(api: ApiHarness) -> None:
    body = {"kind": "test_echo", "params": {"n": 1}, "idempotency_key": "click-123"}
    first = api.client.post("/api/jobs", json=body)
    second = api.client.post("/api/jobs", json=body)
    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert api.client.get("/api/jobs").json()["total"] == 1


def test_list_filters_and_paginates(api: ApiHarness) -> None:
    for i in range(5):
        api.submit("test_echo", {"n": i})
    api.submit("test_fail", {})
    api.run_jobs()
    page = api.client.get("/api/jobs", params={"kind": "test_echo", "limit": 2, "offset": 1}).json()
    assert page["total"] == 5 and len(page["items"]) == 2 and page["offset"] == 1
    assert [j["params"]["n"] for j in page["items"]] == [3, 2]  # newest first
    failed = api.client.get("/api/jobs", params={"status": "failed"}).json()
    assert failed["total"] == 1 and "boom" in failed["items"][0]["error"]
    assert "Traceback" in failed["items"][0]["traceback"]
    assert api.client.get("/api/jobs", params={"status": "exploded"}).status_code == 422


def test_unknown_id_is_404(api: ApiHarness) -> None:
    for path in ("/api/jobs/999", "/api/jobs/999/logs"):
        r = api.client.get(path)
        assert r.status_code == 404 and r.json()["detail"] == "job 999 not found"
    assert api.client.post("/api/jobs/999/cancel").status_code == 404


def test_cancel_queued_job_and_retry_it(api: ApiHarness) -> None:
    job = api.submit("test_count", {"chunks": 2, "chunk_s": 0})
    r = api.client.post(f"/api/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert api.run_jobs() == []
    r = api.client.post(f"/api/jobs/{job['id']}/retry")
    assert r.status_code == 200 and r.json()["status"] == "queued"
    (done,) = api.run_jobs()
    assert done["status"] == "succeeded"
    assert api.client.post(f"/api/jobs/{job['id']}/cancel").status_code == 409
    assert api.client.post(f"/api/jobs/{job['id']}/retry").status_code == 409


def test_job_kinds_lists_params_schema(api: ApiHarness) -> None:
    kinds = {k["name"]: k for k in api.client.get("/api/jobs/kinds").json()}
    assert kinds["test_echo"]["params_schema"]["properties"]["n"]["minimum"] == 0


def test_auth_protects_api_but_not_health(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, auth="alice:s3cret")
    db = prepare(settings)
    with TestClient(create_api(settings, db)) as client:
        assert client.get("/api/jobs").status_code == 401
        assert client.get("/api/jobs", auth=("alice", "wrong")).status_code == 401
        assert client.get("/api/jobs", auth=("alice", "s3cret")).status_code == 200
        assert client.get("/api/health").status_code == 200
    db.dispose()


def test_validator_messages_read_without_pydantics_prefix(api: ApiHarness) -> None:
    """Issue 30.12: the message says the problem in the user's words, still naming the field."""
    r = api.client.post("/api/jobs", json={"kind": "prepare_dataset", "params": {"source": "zip", "path": "x"}})
    assert r.status_code == 422
    assert r.json()["message"] == (
        "params.path: for source 'zip', path is the upload_id returned by POST /api/datasets/upload"
    )
    assert all(not e["msg"].startswith("Value error") for e in r.json()["detail"])
    e = api.client.post(
        "/api/experiments", json={"dataset": {"source": "digits"}, "rounds": 2, "sd": {"enabled": False}}
    )
    assert e.status_code == 422 and "Value error" not in e.json()["message"], e.json()
