"""Shared fixtures: a temporary API + database (`api`), database URLs for SQLite and PostgreSQL, and
the real CIFAR-10 JPEGs from ../shared (`cifar10_root`)."""

from __future__ import annotations

import os
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("REBALANCE_SHARED", REPO.parent / "shared"))
PG_ADMIN_URL = os.environ.get("REBALANCE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real CIFAR-10 JPEG folders (train/<class>/*.jpg, test/<class>/*.jpg), extracted once per session."""
    archive = SHARED / "data" / "cifar10-jpg.tar.gz"
    if not archive.exists():
        pytest.fail(f"real CIFAR-10 archive not found at {archive} (set REBALANCE_SHARED to the shared/ folder)")
    dest = tmp_path_factory.mktemp("cifar10")
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest / "cifar10"


# -- databases -------------------------------------------------------------------------------------
def _pg_admin() -> Any:
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL test server not reachable at {PG_ADMIN_URL}: {exc}")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (dropped afterwards)."""
    name = f"rb_test_{uuid.uuid4().hex[:12]}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs twice: on SQLite (WAL file) and on the local PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'rebalance.db'}"
    return request.getfixturevalue("pg_url")


# -- the API ---------------------------------------------------------------------------------------
@dataclass
class ApiHarness:
    client: Any
    settings: Any
    db: Any

    def submit(self, kind: str, params: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        r = self.client.post("/api/jobs", json={"kind": kind, "params": params or {}, **extra})
        assert r.status_code in (200, 201), r.text
        return r.json()

    def job(self, job_id: int) -> dict[str, Any]:
        r = self.client.get(f"/api/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def run_jobs(self, max_jobs: int = 1000) -> list[dict[str, Any]]:
        """Run queued jobs in-process until the queue is empty; returns the finished jobs."""
        from backend.jobs.worker import JobWorker

        worker = JobWorker(self.settings, db=self.db, worker_id="test-worker")
        ids = []
        for _ in range(max_jobs):
            job_id = worker.run_once()
            if job_id is None:
                break
            ids.append(job_id)
        return [self.job(i) for i in ids]


def make_settings(tmp_path: Path, **overrides: Any) -> Any:
    from backend.config import Settings

    base = dict(
        workspace=tmp_path / "workspace",
        workers=0,
        device="cpu",
        start_dir=tmp_path,
        allow_dirs=[tmp_path.parent],
    )
    base.update(overrides)
    return Settings(**base)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiHarness]:
    """A TestClient over a fresh workspace + SQLite database; no background worker (use run_jobs)."""
    from fastapi.testclient import TestClient

    from backend.api.app import create_api
    from backend.runtime import prepare

    settings = make_settings(tmp_path)
    db = prepare(settings)
    with TestClient(create_api(settings, db)) as client:
        yield ApiHarness(client=client, settings=settings, db=db)
    db.dispose()
