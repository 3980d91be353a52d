"""`python app.py` start-up: clear one-line errors for a read-only workspace or an unreachable database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # seconds to minutes a test: outside the fast tier (README)


def run_app(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "app.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_read_only_workspace_is_one_clear_line() -> None:
    # Tests run as root, which ignores permission bits: /proc is read-only for everyone.
    r = run_app("worker", "--workspace", "/proc/rebalance-ws")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("rebalance: error: workspace /proc/rebalance-ws is not writable")
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_unreachable_database_is_one_clear_line(tmp_path: Path) -> None:
    r = run_app("worker", "--workspace", str(tmp_path), "--db-url", "postgresql+psycopg://nobody@127.0.0.1:9/none")
    assert r.returncode == 2
    assert "cannot reach the database at postgresql+psycopg://nobody@127.0.0.1:9/none" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bad_setting_is_one_clear_line(tmp_path: Path) -> None:
    r = run_app("--workspace", str(tmp_path), "--port", "70000")
    assert r.returncode == 2 and r.stderr.startswith("rebalance: error: port:")


def test_ray_address_from_the_flag_or_the_environment(monkeypatch) -> None:
    from app import build_parser, settings_from_args

    assert settings_from_args(build_parser().parse_args(["--ray", "auto"])).ray_address == "auto"
    worker = build_parser().parse_args(["worker", "--ray", "10.0.0.1:6379"])
    assert settings_from_args(worker).ray_address == "10.0.0.1:6379"
    monkeypatch.setenv("REBALANCE_RAY_ADDRESS", "local")
    assert settings_from_args(build_parser().parse_args([])).ray_address == "local"
    monkeypatch.setenv("REBALANCE_RAY_ADDRESS", " ")
    assert settings_from_args(build_parser().parse_args([])).ray_address is None  # blank: no Ray


def test_bad_ray_address_is_one_clear_line(tmp_path: Path) -> None:
    r = run_app("worker", "--workspace", str(tmp_path), "--ray", "local host")
    assert r.returncode == 2 and r.stderr.startswith("rebalance: error: ray_address:")
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
