"""Hostile input checked where it enters (issue 29): one set of constrained types for every stored value,
experiments validated at submit as the jobs they will submit, YAML that cannot explode, leftovers swept
at start-up, a CLI that will not overwrite, a Ray join that gives up, and a health check that tells an
anonymous caller only that the service is up. Each test names the point of the issue it covers."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backend.api.app import create_api
from backend.core import safeyaml
from backend.core.tmpdirs import make_tmp_dir
from backend.core.types import INT32_MAX
from backend.db.models import Pool
from backend.experiment import ExperimentConfig
from backend.jobs.registry import all_kinds, load_kinds
from backend.runtime import prepare
from tests.conftest import ApiHarness, make_settings

REPO = Path(__file__).resolve().parents[2]
DIGITS = {"dataset": {"source": "digits"}, "imbalance": {"minority": "3", "keep": 5}, "sd": {"enabled": False}}
DIGITS["gan"] = {"enabled": False}


def _locs(r: Any) -> list[str]:
    return (
        [".".join(str(p) for p in e["loc"]) for e in r.json()["detail"]] if isinstance(r.json()["detail"], list) else []
    )


def _launch(api: ApiHarness, config: dict[str, Any] | None = None, yaml_text: str | None = None) -> Any:
    body = {"yaml": yaml_text} if yaml_text is not None else config
    return api.client.post("/api/experiments", json=body)


def _experiments(api: ApiHarness) -> int:
    r = api.client.get("/api/experiments")
    assert r.status_code == 200, r.text
    return r.json()["total"]


# -- the rule behind points 1, 2 and 5: every stored value is bounded by its type ----------------------
def _unbounded(schema: dict[str, Any], defs: dict[str, Any], path: str, seen: tuple = ()) -> list[str]:
    """Integers without both bounds within a 32-bit column, strings without a length cap."""
    out: list[str] = []
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name not in seen:
            out += _unbounded(defs[name], defs, path, (*seen, name))
    kind = schema.get("type")
    if kind == "integer" and "enum" not in schema and "const" not in schema:
        hi = schema.get("maximum", schema.get("exclusiveMaximum"))
        lo = schema.get("minimum", schema.get("exclusiveMinimum"))
        if hi is None or lo is None or hi > INT32_MAX or lo < -INT32_MAX:
            out.append(f"{path} (integer {lo}..{hi})")
    if kind == "string" and not {"maxLength", "enum", "const"} & set(schema):
        out.append(f"{path} (string without maxLength)")
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            out += _unbounded(sub, defs, path, seen)
    for key, sub in schema.get("properties", {}).items():
        out += _unbounded(sub, defs, f"{path}.{key}", seen)
    if isinstance(schema.get("items"), dict):
        out += _unbounded(schema["items"], defs, f"{path}[]", seen)
    for i, sub in enumerate(schema.get("prefixItems", [])):
        out += _unbounded(sub, defs, f"{path}[{i}]", seen)
    if isinstance(schema.get("additionalProperties"), dict):
        out += _unbounded(schema["additionalProperties"], defs, f"{path}{{}}", seen)
    return out


def test_every_param_of_every_job_kind_and_the_experiment_config_is_bounded() -> None:
    """A new field typed plain ``int`` or ``str`` fails here: no value can skip the door's types."""
    load_kinds()
    built_in = {n: k for n, k in all_kinds().items() if not k.handler.__module__.startswith("tests.")}
    assert len(built_in) >= 11
    models = {name: kind.params_model for name, kind in built_in.items()} | {"experiment": ExperimentConfig}
    problems = []
    for name, model in models.items():
        schema = model.model_json_schema()
        problems += _unbounded(schema, schema.get("$defs", {}), name)
    assert problems == []


# -- 1. numbers past the column's range, 2. negative seeds ---------------------------------------------
@pytest.mark.parametrize(
    ("kind", "params", "loc"),
    [
        ("benchmark", {"dataset_id": 1, "variants": ["full"], "seeds": [3_000_000_000]}, "body.params.seeds.0"),
        ("benchmark", {"dataset_id": 1, "variants": ["full"], "seeds": [-5]}, "body.params.seeds.0"),
        ("generate_gan", {"gan_id": 1, "seed": 3_000_000_000}, "body.params.seed"),
        ("generate_gan", {"gan_id": 1, "seed": 2**64}, "body.params.seed"),
        ("prepare_dataset", {"source": "digits", "seed": -5}, "body.params.seed"),
        ("generate_diffusion", {"diffusion_id": 1, "class": "3", "seed": 2**40}, "body.params.seed"),
        (
            "select",
            {"dataset_id": 1, "pool_ids": [1], "budget": 2, "imbalance": {"minority": "3", "keep": 5, "seed": -1}},
            "body.params.imbalance.seed",
        ),
    ],
)
def test_out_of_range_and_negative_seeds_are_422_naming_the_field(
    api_each_db: ApiHarness, kind: str, params: dict[str, Any], loc: str
) -> None:
    r = api_each_db.client.post("/api/jobs", json={"kind": kind, "params": params})
    assert r.status_code == 422, r.text
    assert loc in _locs(r), r.json()
    assert api_each_db.client.get("/api/jobs").json()["total"] == 0


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"benchmark": {"seeds": [3_000_000_000]}}, "benchmark.seeds.0"),
        ({"benchmark": {"seeds": [-5]}}, "benchmark.seeds.0"),
        ({"dataset": {"source": "digits", "seed": -5}}, "dataset.seed"),
        ({"imbalance": {"minority": "3", "keep": 5, "seed": -5}}, "imbalance.seed"),
        ({"gan": {"seed": 2**63}}, "gan.seed"),
    ],
)
def test_experiment_seeds_out_of_range_are_422_naming_the_key(
    api_each_db: ApiHarness, config: dict[str, Any], field: str
) -> None:
    r = _launch(api_each_db, {**DIGITS, **config, "dataset": {**DIGITS["dataset"], **config.get("dataset", {})}})
    assert r.status_code == 422, r.text
    assert field in r.json()["message"], r.json()
    assert _experiments(api_each_db) == 0


def test_imbalance_preview_names_the_seed_not_the_minority(api: ApiHarness) -> None:
    job = api.submit("prepare_dataset", {"source": "digits"})
    api.run_jobs()
    dataset_id = api.job(job["id"])["result"]["dataset_id"]
    r = api.client.post(f"/api/datasets/{dataset_id}/imbalance/preview", json={"minority": "3", "keep": 5, "seed": -5})
    assert r.status_code == 422
    assert _locs(r) == ["body.seed"], r.json()


# -- 3. NUL through YAML escapes, 4. aliases, depth, size, empty -----------------------------------------
@pytest.mark.parametrize("escape", ["\\0", "\\x00", "\\u0000"])
def test_nul_through_a_yaml_escape_is_422_and_nothing_is_stored(api_each_db: ApiHarness, escape: str) -> None:
    text = f'name: "a{escape}b"\ndataset: {{source: digits}}\nimbalance: {{minority: "3", keep: 5}}\n'
    r = _launch(api_each_db, yaml_text=text)
    assert r.status_code == 422, r.text
    assert "NUL" in r.json()["message"] and "name" in r.json()["message"]
    assert _experiments(api_each_db) == 0


def _alias_bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + f"\nname: *a{levels - 1}\n"


def test_an_alias_bomb_is_refused_before_it_expands(api_each_db: ApiHarness) -> None:
    text = _alias_bomb()
    assert len(text) < 1000  # 9**9 strings once expanded
    started = time.monotonic()
    r = _launch(api_each_db, yaml_text=text)
    assert r.status_code == 422, r.text
    assert "aliases" in r.json()["message"] and "line 2" in r.json()["message"]
    assert time.monotonic() - started < 5
    assert _experiments(api_each_db) == 0


@pytest.mark.parametrize(
    "text",
    ["a: " + "[" * 5000 + "]" * 5000, "a: " + "{a: " * 5000 + "1" + "}" * 5000],
    ids=["5000-nested-lists", "5000-nested-mappings"],
)
def test_deep_nesting_is_422_not_a_recursion_error(api_each_db: ApiHarness, text: str) -> None:
    r = _launch(api_each_db, yaml_text=text)
    assert r.status_code == 422, r.text
    assert "nested more than" in r.json()["message"]


@pytest.mark.parametrize("body", [{"yaml": ""}, {"yaml": "# only a comment\n"}, {"yaml": "null"}, {}])
def test_an_empty_config_is_422_not_the_full_default_study(api_each_db: ApiHarness, body: dict[str, Any]) -> None:
    r = api_each_db.client.post("/api/experiments", json=body)
    assert r.status_code == 422, r.text
    assert "empty" in r.json()["message"]
    assert _experiments(api_each_db) == 0
    assert api_each_db.client.get("/api/jobs").json()["total"] == 0  # no CIFAR-10 download was queued


def test_the_loader_keeps_ordinary_yaml_and_caps_size() -> None:
    assert safeyaml.load("a: [1, {b: c}]\nd: 'x'\n") == {"a": [1, {"b": "c"}], "d": "x"}
    with pytest.raises(safeyaml.YamlRefused, match="bytes"):
        safeyaml.load("a: " + "x" * (safeyaml.MAX_BYTES + 1))
    with pytest.raises(safeyaml.YamlRefused, match="not valid YAML"):
        safeyaml.load("a: [1, 2")
    for recipe in sorted((REPO / "examples").glob("*.yaml")):  # every shipped recipe still loads
        assert isinstance(safeyaml.load(recipe.read_bytes()), dict), recipe


# -- 5. a long experiment name -------------------------------------------------------------------------
def test_a_long_experiment_name_launches_and_lists_on_both_databases(api_each_db: ApiHarness) -> None:
    r = _launch(api_each_db, {**DIGITS, "name": "n" * 120})
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "running"
    assert r.json()["stages"][0]["job_id"] is not None  # its first job was queued (the key fits the column)
    listed = api_each_db.client.get("/api/experiments")
    assert listed.status_code == 200 and listed.json()["items"][0]["name"] == "n" * 120
    again = _launch(api_each_db, {**DIGITS, "name": "n" * 120})  # the same long key: the same job, reused
    assert again.json()["stages"][0]["job_id"] == r.json()["stages"][0]["job_id"]
    too_long = _launch(api_each_db, {**DIGITS, "name": "n" * 256})
    assert too_long.status_code == 422 and "name" in too_long.json()["message"]


# -- 6. experiment job params checked at submit as POST /api/jobs checks them ----------------------------
@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"gan": {"enabled": True, "epochs": 1, "train_params": {"source": {"path": "/etc"}}}}, "gan"),
        (
            {"diffusion": {"enabled": True, "class_name": "3", "train_params": {"source": {"path": "/etc"}}}},
            "diffusion",
        ),
        ({"sd": {"enabled": True, "model": "/etc"}}, "sd"),
        ({"sd": {"enabled": True, "model": "tiny", "job_params": {"vae": "/etc"}}}, "sd"),
        (
            {"gan": {"enabled": True, "train_params": {"source": {"upload_id": "0" * 32}}}},
            "gan",
        ),
        (
            {
                "sd": {"enabled": True, "model": "tiny"},
                "personalize": {"enabled": True},
                "imbalance": {"minority": "3", "keep": 0},
            },
            "personalize",
        ),
    ],
)
def test_experiment_params_refused_by_the_jobs_api_are_refused_at_launch(
    api_each_db: ApiHarness, extra: dict[str, Any], field: str
) -> None:
    r = _launch(api_each_db, {**DIGITS, **extra})
    assert r.status_code == 422, r.text
    assert r.json()["message"].startswith(f"body.{field}") or f"{field} (" in r.json()["message"], r.json()
    assert _experiments(api_each_db) == 0
    assert api_each_db.client.get("/api/jobs").json()["total"] == 0


def test_a_file_as_a_diffusion_source_is_refused_at_launch(api: ApiHarness, tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-folder.png"
    a_file.write_bytes(b"x")
    r = _launch(api, {**DIGITS, "diffusion": {"enabled": True, "class_name": "3", "source_path": str(a_file)}})
    assert r.status_code == 422, r.text
    assert "is a file" in r.json()["message"]
    job = api.client.post(
        "/api/jobs", json={"kind": "train_diffusion", "params": {"source": {"path": str(a_file)}, "epochs": 1}}
    )
    assert job.status_code == 422 and "is a file" in job.json()["message"]


# -- 7. leftovers of killed jobs and orphaned pool directories -------------------------------------------
@pytest.mark.slow
def test_start_up_sweeps_dead_writers_temp_dirs_and_orphan_pools(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, db_url=db_url)
    db = prepare(settings)
    ws = settings.workspace_dir
    # A writer that is killed while its temp directory is half full (the extraction or decode of a job).
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from backend.core.tmpdirs import make_tmp_dir\n"
            "d = make_tmp_dir(Path(sys.argv[1]), 'a' * 32); (d / 'part.bin').write_bytes(b'x' * 4096)\n"
            "print(d, flush=True); time.sleep(60)",
            str(ws / "uploads"),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    dead = Path(child.stdout.readline().strip())
    child.send_signal(signal.SIGKILL)
    child.wait()
    live = make_tmp_dir(ws / "cache", "decode")  # this process is alive: its directory must survive
    legacy = ws / "cache" / f".tmp-{'b' * 32}"
    legacy.mkdir(parents=True)
    old = time.time() - 7200
    os.utime(legacy, (old, old))
    with db.session() as s:
        kept = Pool(name="kept", kind="gan", count=0, params={}, info={})
        s.add(kept)
        s.flush()
        kept_id = kept.id
    (ws / "pools" / str(kept_id)).mkdir(parents=True)
    orphan = ws / "pools" / str(kept_id + 100)
    orphan.mkdir()
    (orphan / "0.png").write_bytes(b"png")
    spool = ws / "tmp" / "tmpabc123"
    spool.write_bytes(b"spooled upload")
    os.utime(spool, (old, old))
    db.dispose()
    assert dead.is_dir() and orphan.is_dir()

    db = prepare(settings)  # a restart
    try:
        assert not dead.exists(), "a killed writer's temp directory survived the restart"
        assert not legacy.exists() and not orphan.exists() and not spool.exists()
        assert live.is_dir() and (ws / "pools" / str(kept_id)).is_dir()
    finally:
        db.dispose()


def test_multipart_uploads_spool_under_the_workspace(api: ApiHarness) -> None:
    import starlette.formparsers

    spool = starlette.formparsers.SpooledTemporaryFile(max_size=16)  # what Starlette makes per file part
    spool.write(b"x" * 64)  # past max_size: now a real file
    try:
        # An unnamed temporary file (O_TMPFILE on Linux): /proc names the directory it lives in.
        where = os.readlink(f"/proc/self/fd/{spool.fileno()}")
        assert where.startswith(str(api.settings.tmp_dir.resolve())), where
    finally:
        spool.close()


# -- 8. experiment --out ----------------------------------------------------------------------------------
def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "app.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_experiment_out_refuses_a_non_empty_directory_and_names_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("dataset: {source: digits}\nimbalance: {minority: '3', keep: 5}\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.csv").write_text("earlier study\n")
    common = ("--workspace", str(tmp_path / "ws"), "experiment", str(config))
    r = _cli(*common, "--out", str(out), cwd=tmp_path)
    assert r.returncode == 1
    assert "is not empty" in r.stderr and "--overwrite" in r.stderr and "Traceback" not in r.stderr
    assert (out / "results.csv").read_text() == "earlier study\n"
    # The rest in-process (a CLI start costs seconds): the same entry point app.py calls.
    from backend.experiment_cli import run_experiment_cli

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    settings = make_settings(tmp_path, workspace=tmp_path / "ws")
    assert run_experiment_cli(config, a_file, settings) == 1
    assert "is a file, not a directory" in capsys.readouterr().err


def test_overwrite_lets_out_name_a_directory_that_holds_files(tmp_path: Path) -> None:
    from backend.experiment_cli import check_out_dir

    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("x")
    assert check_out_dir(out, overwrite=True) == out
    assert check_out_dir(tmp_path / "new") == tmp_path / "new"
    assert check_out_dir(tmp_path / "empty") == tmp_path / "empty"


# -- 9. --ray with an address that does not answer ---------------------------------------------------------
def _connect_in_child(address: str, timeout_s: float) -> tuple[str, float]:
    code = (
        "import sys, time; from backend.jobs import ray_executor\n"
        "t = time.monotonic()\n"
        "try:\n    ray_executor.connect(sys.argv[1], timeout_s=float(sys.argv[2]))\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
        "print(round(time.monotonic() - t, 1))\nimport os; os._exit(0)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, address, str(timeout_s)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    lines = r.stdout.strip().splitlines()
    return lines[0], float(lines[-1])


@pytest.mark.slow
def test_ray_join_gives_up_with_the_address_and_the_reason() -> None:
    message, took = _connect_in_child("127.0.0.1:1", 30)
    assert message.startswith("ConnectionError") and "127.0.0.1:1" in message and took < 10
    message, took = _connect_in_child("no-such-host.invalid:6379", 30)
    assert "cannot resolve host" in message and took < 15
    # A port that accepts TCP but is no Ray GCS (a Redis or database port): Ray itself retries for minutes.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    threading.Thread(target=lambda: [server.accept() for _ in range(64)], daemon=True).start()
    address = f"127.0.0.1:{server.getsockname()[1]}"
    try:
        message, took = _connect_in_child(address, 4)
    finally:
        server.close()
    assert message.startswith("TimeoutError") and address in message and "within 4 s" in message, message
    assert took < 15


@pytest.mark.slow
def test_app_with_an_unreachable_ray_address_exits_with_one_line(tmp_path: Path) -> None:
    started = time.monotonic()
    r = _cli("--workspace", str(tmp_path / "ws"), "--workers", "0", "--ray", "127.0.0.1:1", cwd=tmp_path)
    assert r.returncode != 0 and time.monotonic() - started < 60
    assert "cannot join the Ray cluster at 127.0.0.1:1" in r.stderr and "Traceback" not in r.stderr


# -- 10. health under --auth -----------------------------------------------------------------------------
def test_health_tells_anonymous_callers_only_that_it_is_up(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, db_url=db_url, auth="alice:s3cret")
    db = prepare(settings)
    try:
        with TestClient(create_api(settings, db)) as client:
            anonymous = client.get("/api/health")
            assert anonymous.status_code == 200
            body = anonymous.json()
            assert body["status"] == "ok" and body["executor"] == {"executor": "local"}
            text = anonymous.text
            assert "url" not in body["database"] and "workers" not in body and '"pid"' not in text
            assert db.engine.url.database not in text and "sqlite" not in text and "postgresql" not in text
            wrong = client.get(
                "/api/health", headers={"Authorization": "Basic " + base64.b64encode(b"alice:x").decode()}
            )
            assert "url" not in wrong.json()["database"]
            token = base64.b64encode(b"alice:s3cret").decode()
            full = client.get("/api/health", headers={"Authorization": f"Basic {token}"}).json()
            assert full["database"]["url"] == db.safe_url and "workers" in full
    finally:
        db.dispose()
