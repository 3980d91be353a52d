"""Shared fixtures: a temporary API + database (`api`), database URLs for SQLite and PostgreSQL, and
the real CIFAR-10 JPEGs from ../shared (`cifar10_root`).

The suite runs in parallel (pytest-xdist, see pyproject.toml). What is expensive to build and only read
afterwards (the extracted CIFAR-10, its decoded cache) is built once per run for all workers by
:func:`built_once`; a module whose tests share a module-scoped fixture runs on one worker
(:func:`pytest_collection_modifyitems`), so that fixture is built once too."""

from __future__ import annotations

import gc
import os
import shutil
import tarfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("REBALANCE_SHARED", REPO.parent / "shared"))
PG_ADMIN_URL = os.environ.get("REBALANCE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # "gw0", "gw1", … under xdist; None in a serial run
if WORKER:
    # Each worker gets an equal share of the cores: torch's default (every core per process) oversubscribes the
    # machine, and OpenMP threads spinning on each other made tests several times slower. Set before any
    # test imports torch, and inherited by the servers and workers that tests start.
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    os.environ.setdefault("OMP_NUM_THREADS", _threads)
    os.environ.setdefault("MKL_NUM_THREADS", _threads)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per core (at least 2, at most 8), or ``REBALANCE_TEST_WORKERS``.

    More workers than cores looked free (much of the suite waits on a server, a worker process or a browser)
    but was not: an idle studio page alone keeps headless Chromium busy at about half a core (Gradio's
    timers re-render the page every 2 s), and with three browser modules at once on 2 cores the load
    average reached 10 and the browser steps crawled. More than 8 buys little; each worker holds torch."""
    if wanted := os.environ.get("REBALANCE_TEST_WORKERS"):
        return int(wanted)
    return min(8, max(2, os.cpu_count() or 1))


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """``<run tmp>/<name>``, built by ``build(path)`` by the first worker that asks; the others wait and reuse it.

    Under xdist every worker has its own base temp dir inside one per-run dir; the folder lives there, so it is
    shared by this run's workers and removed with the run's temp dirs. ``build`` writes into a temp dir that is
    renamed into place once complete, so a worker never sees half a build.
    """
    base = tmp_path_factory.getbasetemp()
    root = base.parent if WORKER else base
    dest = root / name
    with FileLock(str(root / f"{name}.lock")):
        if not dest.exists():
            tmp = root / f"{name}.building"
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            build(tmp)
            tmp.rename(dest)
    return dest


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real CIFAR-10 JPEG folders (train/<class>/*.jpg, test/<class>/*.jpg), extracted once per run."""
    archive = SHARED / "data" / "cifar10-jpg.tar.gz"
    if not archive.exists():
        pytest.fail(f"real CIFAR-10 archive not found at {archive} (set REBALANCE_SHARED to the shared/ folder)")

    def extract(dest: Path) -> None:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")

    return built_once(tmp_path_factory, "cifar10", extract) / "cifar10"


def _module_scoped(item: pytest.Item) -> bool:
    defs = getattr(item, "_fixtureinfo", None)
    return defs is not None and any(
        d.scope == "module" for fixture_defs in defs.name2fixturedefs.values() for d in fixture_defs
    )


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into the test ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup``, keep each module that has a module-scoped fixture on one worker, and hand
    the longest work out first.

    Those fixtures are expensive (a server and a browser, a trained model, a decoded dataset) and some modules'
    tests are steps in order on one page; spread over workers, each worker would build the fixture again.
    The scheduler hands groups out in collection order: the browser modules (minutes each) go first, then the
    other grouped modules, then the single tests, so no long group starts while the others sit idle at the end.
    The order inside a module is kept (a stable sort).
    """
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        if item.get_closest_marker("browser"):
            # One browser module at a time: an idle studio page alone keeps Chromium at about half a core, and
            # with two or three studios (servers, job workers, browsers) at once on 2 cores the steps' waits ran
            # out. They run in order on one worker, each module with its own server, while the others do the rest.
            item.add_marker(pytest.mark.xdist_group("browser"))
        elif _module_scoped(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
    if WORKER is None:
        return  # a serial run keeps pytest's order
    rank: dict[str, int] = {}  # per module, so a module's tests stay together (its fixtures are built once)
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        if module in LONGEST_FIRST:
            mine = LONGEST_FIRST.index(module)
        else:
            grouped_or_slow = item.get_closest_marker("xdist_group") or item.get_closest_marker("slow")
            mine = len(LONGEST_FIRST) + (0 if grouped_or_slow else 1)
        rank[module] = min(rank.get(module, mine), mine)
    items.sort(key=lambda i: rank[i.nodeid.split("::", 1)[0]])


def pytest_collection_finish(session: pytest.Session) -> None:
    """Move everything alive after collection (torch, fastapi, the test modules: millions of objects) out of
    the garbage collector's sight. Each full collection, and pytest runs five at its end, walked them all:
    2.7 s of a 9 s ``--collect-only`` (AMD Zen 5), paid again in each worker and at every gen-2 collection
    between tests. What tests create later is still collected."""
    gc.freeze()


# The browser modules (one group, handed out first so the other workers' work fits beside it). pyproject.toml
# passes --no-loadscope-reorder, so xdist hands groups out in this order instead of by their number of tests.
LONGEST_FIRST = [
    "tests/ui/test_studio.py",
    "tests/ui/test_first_user.py",
    "tests/ui/test_diffusion_tab.py",
    "tests/ui/test_gallery.py",
]


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
