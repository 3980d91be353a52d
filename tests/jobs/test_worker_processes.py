"""Real worker processes against SQLite and PostgreSQL: racing claims, SIGKILL, SIGTERM, cancel, max attempts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from backend.core import allocator
from backend.db.models import Job, JobLog, Worker
from backend.jobs import queue
from backend.runtime import prepare
from tests.conftest import REPO, make_settings

PLUGIN = "tests.jobs.kinds_for_tests"


pytestmark = pytest.mark.slow  # seconds to minutes a test: outside the fast tier (README)


class Workers:
    def __init__(self, tmp_path: Path, db_url: str, **env: str) -> None:
        self.settings = make_settings(tmp_path, db_url=db_url, plugins=[PLUGIN])
        self.db = prepare(self.settings)
        self.tmp = tmp_path
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "REBALANCE_LEASE_S": "3", "REBALANCE_POLL_S": "0.05", **env}

    def start(self, n: int = 1) -> list[subprocess.Popen]:
        new = []
        for _ in range(n):
            log = open(self.tmp / f"worker-{len(self.procs)}.log", "w")  # noqa: SIM115 - closed with the process
            cmd = [
                sys.executable,
                "app.py",
                "worker",
                "--workspace",
                str(self.settings.workspace_dir),
                "--db-url",
                self.settings.database_url,
                "--plugins",
                PLUGIN,
                "--device",
                "cpu",
            ]
            p = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
            self.procs.append(p)
            new.append(p)
        return new

    def submit(self, kind: str, params: dict, **kw: object) -> int:
        job, _ = queue.submit(self.db, kind, params, **kw)
        return job.id

    def job(self, job_id: int) -> Job:
        with self.db.read_session() as s:
            return s.get(Job, job_id)

    def wait(self, cond, timeout: float = 60.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; logs:\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp.glob("worker-*.log")))

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        self.db.dispose()


@pytest.fixture
def workers(tmp_path: Path, db_url: str):
    w = Workers(tmp_path, db_url)
    yield w
    w.stop_all()


def test_four_workers_race_over_200_jobs_each_runs_once(workers: Workers) -> None:
    ids = [workers.submit("test_echo", {"n": i}) for i in range(200)]
    workers.start(4)

    def all_done() -> bool:
        with workers.db.read_session() as s:
            return s.scalar(select(Job).where(Job.status.in_(["queued", "running"]))) is None

    workers.wait(all_done, timeout=120, what="200 jobs to finish")
    with workers.db.read_session() as s:
        jobs = s.scalars(select(Job).where(Job.id.in_(ids))).all()
        runs = Counter(s.scalars(select(JobLog.job_id).where(JobLog.message.like("ran n=%"))))
        assert all(j.status == "succeeded" for j in jobs), Counter(j.status for j in jobs)
        assert all(j.attempts == 1 for j in jobs)
        assert all(runs[i] == 1 for i in ids), [i for i in ids if runs[i] != 1]
        assert len({j.worker_id for j in jobs}) >= 2  # the work really was shared
    assert "database is locked" not in workers.logs()


def test_sigkill_mid_job_resumes_from_checkpoint(workers: Workers) -> None:
    job_id = workers.submit("test_count", {"chunks": 30, "chunk_s": 0.1})
    (p,) = workers.start(1)
    workers.wait(lambda: workers.job(job_id).checkpoint.get("next", 0) >= 5, what="5 chunks")
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert workers.job(job_id).status == "running"  # as a dead worker leaves it
    workers.start(1)  # recovers the dead worker's job at start
    workers.wait(lambda: workers.job(job_id).status == "succeeded", what="resumed job")
    job = workers.job(job_id)
    assert job.attempts == 2
    assert job.result["resumed_from"] >= 5
    out = workers.settings.workspace_dir / "test_out" / str(job_id)
    assert sorted(int(f.stem) for f in out.glob("*.txt")) == list(range(30))


def test_expired_lease_is_requeued_by_another_worker(workers: Workers) -> None:
    job_id = workers.submit("test_count", {"chunks": 40, "chunk_s": 0.1})
    (p,) = workers.start(1)
    workers.wait(lambda: workers.job(job_id).checkpoint.get("next", 0) >= 3, what="3 chunks")
    os.kill(p.pid, signal.SIGSTOP)  # a hung worker: alive, but its heartbeat stops
    try:
        workers.start(1)
        workers.wait(lambda: workers.job(job_id).status == "succeeded", what="takeover after lease expiry")
        assert workers.job(job_id).attempts == 2
    finally:
        os.kill(p.pid, signal.SIGCONT)


def test_sigterm_checkpoints_releases_and_exits(workers: Workers) -> None:
    # 40 chunks of 0.1 s: after the 3rd, 3.7 s of work left for the signal to land in (100 spent 10 s resuming)
    job_id = workers.submit("test_count", {"chunks": 40, "chunk_s": 0.1})
    (p,) = workers.start(1)
    workers.wait(lambda: workers.job(job_id).checkpoint.get("next", 0) >= 3, what="3 chunks")
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=10) == 0
    job = workers.job(job_id)
    assert job.status == "queued" and job.worker_id is None
    assert job.attempts == 0  # a graceful release does not count as a failed attempt
    done = job.checkpoint["next"]
    workers.start(1)
    workers.wait(lambda: workers.job(job_id).status == "succeeded", what="job resumed by a new worker")
    assert workers.job(job_id).result["resumed_from"] == done


def test_cancel_stops_running_job_within_5s(workers: Workers) -> None:
    job_id = workers.submit("test_count", {"chunks": 1000, "chunk_s": 0.2})
    workers.start(1)
    workers.wait(lambda: workers.job(job_id).status == "running", what="job to start")
    t0 = time.monotonic()
    queue.request_cancel(workers.db, job_id)
    workers.wait(lambda: workers.job(job_id).status == "cancelled", timeout=5, what="cancel within 5 s")
    assert time.monotonic() - t0 < 5
    # the worker keeps serving
    nxt = workers.submit("test_echo", {"n": 1})
    workers.wait(lambda: workers.job(nxt).status == "succeeded", what="next job after cancel")


def test_failing_handler_is_recorded_and_worker_keeps_serving(workers: Workers) -> None:
    bad = workers.submit("test_fail", {"message": "kaboom"})
    oom = workers.submit("test_oom", {"message": "Tried to allocate 2.00 GiB"})
    good = workers.submit("test_echo", {"n": 7})
    workers.start(1)
    workers.wait(lambda: workers.job(good).status == "succeeded", what="third job")
    job = workers.job(bad)
    assert job.status == "failed"
    assert "kaboom" in job.error and "ValueError" in job.traceback
    # Out of GPU memory: the error says so and what to change, not just the exception's name.
    job = workers.job(oom)
    assert job.status == "failed" and job.error.startswith("out of GPU memory: CUDA out of memory. Tried")
    assert "lower batch_size" in job.error and "OutOfMemoryError" in job.traceback


def test_job_that_keeps_killing_its_worker_fails_after_max_attempts(tmp_path: Path, db_url: str) -> None:
    w = Workers(tmp_path, db_url, REBALANCE_MAX_ATTEMPTS="2")
    try:
        job_id = w.submit("test_crash", {}, max_attempts=2)
        for _ in range(2):
            (p,) = w.start(1)
            p.wait(timeout=60)
            assert p.returncode == -signal.SIGKILL
        w.start(1)
        w.wait(lambda: w.job(job_id).status == "failed", what="job to give up")
        job = w.job(job_id)
        assert job.attempts == 2 and "gave up after 2 attempts" in job.error
    finally:
        w.stop_all()


def test_recover_requeues_running_jobs_of_dead_local_workers(tmp_path: Path) -> None:
    db = prepare(make_settings(tmp_path))
    job, _ = queue.submit(db, "test_echo", {"n": 1})
    with db.session() as s:
        s.add(Worker(id="ghost", hostname=socket.gethostname(), pid=2**22 + 12345))
    assert queue.claim(db, "ghost", 300).id == job.id
    assert queue.recover_dead_local_workers(db) == 1
    assert queue.claim(db, "w2", 30).id == job.id
    db.dispose()


@pytest.mark.skipif(not allocator.supported(), reason="glibc malloc only (Linux): elsewhere nothing is set")
def test_worker_processes_run_jobs_with_the_malloc_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python app.py worker` and the server's embedded (spawned) workers both apply them."""
    from backend.server import start_workers, stop_workers

    monkeypatch.delenv(allocator.ENV_SWITCH, raising=False)  # the embedded worker inherits this environment
    w = Workers(tmp_path, f"sqlite:///{tmp_path / 'rebalance.db'}")
    try:
        first = w.submit("test_malloc", {})
        w.start(1)
        w.wait(lambda: w.job(first).status == "succeeded", what="the app.py worker's job")
        w.stop_all()
        second = w.submit("test_malloc", {})
        embedded = start_workers(w.settings, 1)
        try:
            w.wait(lambda: w.job(second).status == "succeeded", what="the embedded worker's job")
        finally:
            stop_workers(embedded)
        assert w.job(first).result == {"applied": True}
        assert w.job(second).result == {"applied": True}
    finally:
        w.stop_all()
