"""Hostile and out-of-range input (issue 15): every refusal a clear 4xx naming the field, on SQLite and
PostgreSQL alike, and nothing written outside the workspace."""

from __future__ import annotations

import base64
import io
import re
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from backend.api.app import create_api
from backend.jobs.registry import load_kinds
from backend.runtime import prepare
from tests.conftest import ApiHarness, make_settings

PLUGIN = "tests.jobs.kinds_for_tests"
load_kinds([PLUGIN])

TOO_BIG_IDS = ("2147483648", "9223372036854775808")  # past PostgreSQL INTEGER, past SQLite INTEGER


@pytest.fixture
def api_on(tmp_path: Path, db_url: str) -> Iterator[ApiHarness]:
    """The API over a fresh workspace on each database (SQLite and PostgreSQL)."""
    settings = make_settings(tmp_path, db_url=db_url, plugins=[PLUGIN])
    db = prepare(settings)
    with TestClient(create_api(settings, db)) as client:
        yield ApiHarness(client=client, settings=settings, db=db)
    db.dispose()


def _fields(response: httpx.Response) -> list[list[Any]]:
    return [e["loc"] for e in response.json()["detail"]]


# -- 1. ids beyond the database's integer range ------------------------------------------------------
def _id_routes(app: Any) -> list[tuple[str, str, list[str]]]:
    """(method, path template, id params) for every API route with an ``*_id`` path parameter, read
    from the OpenAPI document so routes added later are covered too."""
    routes = []
    for path, operations in app.openapi()["paths"].items():
        ids = [p for p in re.findall(r"{(\w+)}", path) if p.endswith("_id")]
        routes += [(method.upper(), path, ids) for method in sorted(operations) if ids]
    return routes


def _fill(template: str, value: str) -> str:
    """Ids get ``value``; other path parameters (epoch, figure name) something plausible."""
    return re.sub(r"{(\w+)}", lambda m: value if m.group(1).endswith("_id") else "1", template)


def test_out_of_range_ids_are_422_naming_the_param_on_every_id_route(api_on: ApiHarness) -> None:
    routes = _id_routes(api_on.client.app)
    assert len(routes) >= 15  # jobs, datasets, gans, pools, images, selections, benchmarks, vocabularies
    for method, template, ids in routes:
        for big in TOO_BIG_IDS:
            r = api_on.client.request(method, _fill(template, big), json={})
            assert r.status_code == 422, (method, template, big, r.status_code, r.text)
            assert ["path", ids[0]] in _fields(r), (template, r.json())
            assert f"path.{ids[0]}:" in r.json()["message"]


def test_largest_valid_id_is_a_plain_404(api_on: ApiHarness) -> None:
    # 2147483647 still fits an INTEGER column: the database is asked and says "not there".
    for method, template, _ids in _id_routes(api_on.client.app):
        if method == "GET" and "{epoch}" not in template and "{name}" not in template:
            r = api_on.client.get(_fill(template, "2147483647"))
            assert r.status_code == 404, (template, r.text)


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/api/jobs?offset=99999999999999999999999", "offset"),
        ("/api/jobs?offset=2147483648", "offset"),
        ("/api/pools?offset=9223372036854775808", "offset"),
        ("/api/gans?offset=2147483648", "offset"),
        ("/api/vocabularies?offset=2147483648", "offset"),
        ("/api/jobs/1/logs?after_id=2147483648", "after_id"),
    ],
)
def test_out_of_range_offsets_are_422_naming_the_param(api_on: ApiHarness, path: str, param: str) -> None:
    api_on.submit("test_echo", {"n": 1})  # job 1 exists, so only the query can be at fault
    r = api_on.client.get(path)
    assert r.status_code == 422, r.text
    assert ["query", param] in _fields(r) and r.json()["message"].startswith(f"query.{param}:")


SPEC = {"minority": "3", "keep": 5, "seed": 0}
BIG = 2147483648


@pytest.mark.parametrize(
    ("kind", "params", "field"),
    [
        ("generate_gan", {"gan_id": BIG}, ("gan_id",)),
        ("train_gan", {"source": {"dataset_id": BIG, "imbalance": SPEC}}, ("source", "dataset", "dataset_id")),
        ("generate_sd", {"vocabulary": BIG}, ("vocabulary",)),
        ("generate_sd", {"dataset_id": BIG, "imbalance": SPEC}, ("dataset_id",)),
        ("select", {"dataset_id": BIG, "imbalance": SPEC, "pool_ids": [1]}, ("dataset_id",)),
        ("select", {"dataset_id": 1, "imbalance": SPEC, "pool_ids": [1, BIG]}, ("pool_ids", 1)),
        ("benchmark", {"dataset_id": BIG, "imbalance": SPEC}, ("dataset_id",)),
        (
            "benchmark",
            {"dataset_id": 1, "imbalance": SPEC, "variants": [{"name": "sd", "pool_id": BIG, "count": 5}]},
            ("variants", 0, "synthetic", "pool_id"),
        ),
        (
            "benchmark",
            {"dataset_id": 1, "imbalance": SPEC, "variants": [{"name": "al", "selection_id": BIG}]},
            ("variants", 0, "synthetic", "selection_id"),
        ),
    ],
)
def test_out_of_range_ids_in_job_params_are_422_naming_the_field(
    api: ApiHarness, kind: str, params: dict, field: tuple
) -> None:
    r = api.client.post("/api/jobs", json={"kind": kind, "params": params})
    assert r.status_code == 422, r.text
    too_big = [e["loc"] for e in r.json()["detail"] if e["type"] == "less_than_equal"]
    assert any(loc[: 2 + len(field)] == ["body", "params", *field] for loc in too_big), r.json()["detail"]
    assert api.client.get("/api/jobs").json()["total"] == 0


# -- 2. NUL characters -------------------------------------------------------------------------------
VOCAB = {"template": "{breed} cat", "slots": {"breed": ["tabby"]}}


def test_nul_in_a_vocabulary_name_is_422_naming_it(api_on: ApiHarness) -> None:
    r = api_on.client.post("/api/vocabularies", json={"name": "cats\x00", **VOCAB})
    assert r.status_code == 422, r.text
    assert _fields(r) == [["body", "name"]] and r.json()["message"].startswith("name: must not contain NUL")
    nested = api_on.client.post("/api/vocabularies", json={"name": "cats", **VOCAB, "slots": {"breed": ["a\x00"]}})
    assert nested.status_code == 422 and _fields(nested) == [["body", "slots", "breed", 0]]
    assert api_on.client.get("/api/vocabularies").json() == []


def test_nul_in_an_idempotency_key_or_job_params_is_422_naming_it(api_on: ApiHarness) -> None:
    r = api_on.client.post("/api/jobs", json={"kind": "test_echo", "params": {"n": 1}, "idempotency_key": "k\x00"})
    assert r.status_code == 422 and _fields(r) == [["body", "idempotency_key"]], r.text
    r = api_on.client.post("/api/jobs", json={"kind": "test_fail", "params": {"message": "x\x00y"}})
    assert r.status_code == 422 and r.json()["message"].startswith("params.message: must not contain NUL")
    assert api_on.client.get("/api/jobs").json()["total"] == 0


def test_nul_in_a_query_is_422_and_an_escaped_backslash_is_not_nul(api_on: ApiHarness) -> None:
    r = api_on.client.get("/api/jobs", params={"kind": "test\x00echo"})
    assert r.status_code == 422 and _fields(r) == [["query", "kind"]], r.text
    r = api_on.client.get("/api/vocabularies/defaults/cat%00")
    assert r.status_code == 422 and r.json()["message"] == "path: must not contain NUL characters (\\x00)"
    # The JSON text \\u0000 is a backslash followed by "u0000": legal text, stored as given.
    job = api_on.submit("test_fail", {"message": "\\u0000"})
    assert job["params"]["message"] == "\\u0000"


# -- 8. idempotency keys -----------------------------------------------------------------------------
def test_reused_idempotency_key_with_other_params_is_409_naming_the_conflict(api_on: ApiHarness) -> None:
    body = {"kind": "test_echo", "params": {"n": 1}, "idempotency_key": "click-1"}
    first = api_on.client.post("/api/jobs", json=body)
    again = api_on.client.post("/api/jobs", json=body)
    assert first.status_code == 201 and again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other = api_on.client.post("/api/jobs", json=body | {"params": {"n": 2}})
    assert other.status_code == 409, other.text
    detail = other.json()["detail"]
    assert "click-1" in detail and f"job {first.json()['id']}" in detail and "params.n" in detail
    other_kind = api_on.client.post("/api/jobs", json=body | {"kind": "test_fail", "params": {}})
    assert other_kind.status_code == 409 and "kind" in other_kind.json()["detail"]
    # Defaults count as given: {} and {"n": 0} are the same validated params.
    defaults = {"kind": "test_echo", "params": {}, "idempotency_key": "click-2"}
    assert api_on.client.post("/api/jobs", json=defaults).status_code == 201
    assert api_on.client.post("/api/jobs", json=defaults | {"params": {"n": 0}}).status_code == 200
    assert api_on.client.get("/api/jobs").json()["total"] == 2


# -- 9a. auth scheme names are case-insensitive ------------------------------------------------------
def test_basic_auth_scheme_is_case_insensitive(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, auth="alice:s3cret")
    db = prepare(settings)
    token = base64.b64encode(b"alice:s3cret").decode()
    wrong = base64.b64encode(b"alice:nope").decode()
    with TestClient(create_api(settings, db)) as client:
        for scheme in ("Basic", "basic", "BASIC", "bAsIc"):
            assert client.get("/api/jobs", headers={"Authorization": f"{scheme} {token}"}).status_code == 200
        for header in (f"basic {wrong}", f"Bearer {token}", "basic !!notbase64", f"basic{token}", ""):
            assert client.get("/api/jobs", headers={"Authorization": header}).status_code == 401, header
    db.dispose()


# -- 4. chunked bodies against the size caps, on a real server ----------------------------------------
@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free port in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    started = threading.Event()
    while not started.wait(0.05):  # a wait for start-up, not a timing assertion
        if server.started:
            started.set()
        assert thread.is_alive(), "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join()


def _chunks(data: bytes, size: int = 16_384) -> Iterator[bytes]:
    """A generator body: httpx sends it with Transfer-Encoding: chunked and no Content-Length."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = "hostile-boundary-7f3a"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _zip(size: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("pets/cat/0.bin", b"\x07" * size)
    return buf.getvalue()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def system_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private stand-in for the system temp dir (other processes share the real one), watched for
    anything this server writes there."""
    path = tmp_path / "system-tmp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    monkeypatch.setenv("TMPDIR", str(path))
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)  # restored after the test; prepare() sets it
    return path


@pytest.fixture
def studio(tmp_path: Path, system_tmp: Path) -> Iterator[tuple[str, Any]]:
    """API + Gradio studio on a real uvicorn server, uploads capped at 2 MB, JSON bodies at 0.1 MB."""
    from backend.server import create_app

    settings = make_settings(tmp_path, max_upload_mb=2.0, max_body_mb=0.1)
    db = prepare(settings)
    with live_server(create_app(settings, db)) as url:
        yield url, settings
    db.dispose()


def test_chunked_json_over_the_cap_is_413(studio: tuple[str, Any]) -> None:
    url, _settings = studio
    body = b'{"kind": "test_echo", "params": {"n": 1, "pad": "' + b"x" * 300_000 + b'"}}'
    r = httpx.post(f"{url}/api/jobs", content=_chunks(body), headers={"content-type": "application/json"})
    assert r.request.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.request.headers
    assert r.status_code == 413 and "too large" in r.json()["detail"], r.text
    small = b'{"kind": "test_echo", "params": {"n": 1}}'
    r = httpx.post(f"{url}/api/jobs", content=_chunks(small, 7), headers={"content-type": "application/json"})
    assert r.status_code == 201, r.text  # under the cap, a chunked body is read as usual


@pytest.mark.parametrize(("path", "field"), [("/api/datasets/upload", "file"), ("/gradio_api/upload", "files")])
def test_chunked_upload_over_the_cap_is_413_leaving_no_file(
    studio: tuple[str, Any], system_tmp: Path, path: str, field: str
) -> None:
    url, settings = studio
    workspace_before = _files(settings.workspace_dir)
    body, content_type = _multipart(field, "big.zip", _zip(2_500_000))
    r = httpx.post(f"{url}{path}", content=_chunks(body, 65_536), headers={"content-type": content_type}, timeout=60)
    assert r.status_code == 413 and "too large" in r.json()["detail"], r.text
    assert _files(settings.workspace_dir) == workspace_before  # no partial upload in the workspace
    assert _files(system_tmp) == []  # nor in the system temp dir


@pytest.mark.parametrize(("path", "field"), [("/api/datasets/upload", "file"), ("/gradio_api/upload", "files")])
def test_chunked_upload_under_the_cap_arrives_whole_inside_the_workspace(
    studio: tuple[str, Any], system_tmp: Path, path: str, field: str
) -> None:
    url, settings = studio
    data = _zip(1_500_000)  # more than one 1 MB replay chunk
    body, content_type = _multipart(field, "ok.zip", data)
    r = httpx.post(f"{url}{path}", content=_chunks(body, 65_536), headers={"content-type": content_type}, timeout=60)
    assert r.status_code in (200, 201), r.text
    if path.startswith("/gradio_api"):
        # 5. Gradio keeps its uploads under <workspace>/tmp/gradio, not in the system temp dir.
        (where,) = map(Path, r.json())
        assert where.is_relative_to(settings.workspace_dir / "tmp" / "gradio")
        done = threading.Event()
        while not done.wait(0.05):  # Gradio moves the upload into place in a background task
            if where.is_file():
                done.set()
    stored = [p for p in _files(settings.workspace_dir) if p.suffix == ".zip"]
    assert len(stored) == 1 and stored[0].read_bytes() == data
    assert _files(system_tmp) == []


# -- params refused at submit, and failures that leave nothing behind ------------------------------------
def test_ranges_and_paths_are_checked_at_submit(api: ApiHarness, tmp_path: Path) -> None:
    spec = {"dataset_id": 1, "imbalance": SPEC, "pool_ids": [1]}
    r = api.client.post("/api/jobs", json={"kind": "select", "params": spec | {"seed": -5}})
    assert r.status_code == 422 and r.json()["message"].startswith("params.seed"), r.text
    outside = tempfile.mkdtemp(dir=tmp_path.parents[1])  # beside the allowed directory (tmp_path.parent)
    for field in ("model", "vae"):
        r = api.client.post("/api/jobs", json={"kind": "generate_sd", "params": {field: outside}})
        assert r.status_code == 422, r.text
        assert r.json()["message"].startswith(f"params.{field}") and "--allow-dir" in r.json()["message"]
    assert api.client.get("/api/jobs").json()["total"] == 0


def test_a_failed_generation_leaves_no_empty_pool(api: ApiHarness, tmp_path: Path) -> None:
    broken = tmp_path / "not-a-pipeline"
    broken.mkdir()
    job = api.submit("generate_sd", {"model": str(broken), "count": 2})
    (done,) = api.run_jobs()
    assert done["status"] == "failed" and "cannot load" in done["error"]
    assert api.client.get("/api/pools").json() == []
    assert api.job(job["id"])["status"] == "failed"


def test_a_failed_registration_leaves_no_extracted_files(api: ApiHarness) -> None:
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as zf:
        for i in range(30):
            zf.writestr(f"cat/{i}.txt", "not an image")
    upload = api.client.post("/api/datasets/upload", files={"file": ("x.zip", data.getvalue(), "application/zip")})
    upload_id = upload.json()["upload_id"]
    api.submit("prepare_dataset", {"source": "zip", "path": upload_id})
    (done,) = api.run_jobs()
    assert done["status"] == "failed", done
    uploads = Path(api.settings.workspace_dir) / "uploads"
    assert sorted(p.name for p in uploads.iterdir()) == [f"{upload_id}.zip"]  # only the archive itself
