"""A worker SIGKILLed inside an atomic write leaves a temp file; the job's resumed attempt removes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from backend.jobs import queue
from backend.jobs.worker import JobWorker
from backend.runtime import prepare
from tests.conftest import REPO, make_settings

pytestmark = pytest.mark.slow  # seconds to minutes a test: outside the fast tier (README)

# A real worker process that dies by SIGKILL while writing chunk 1's file of `test_count`: the data is in
# the temp file, the rename has not happened (os.fsync is the step between the two).
WORKER_KILLED_MID_WRITE = """
import os, signal, sys
from backend.config import Settings
from backend.jobs.worker import JobWorker

worker = JobWorker(Settings.model_validate_json(sys.argv[1]))
worker.register()
real_fsync, calls = os.fsync, [0]

def fsync_or_die(fd):
    calls[0] += 1
    if calls[0] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    real_fsync(fd)

os.fsync = fsync_or_die
worker.run_once()
"""


def test_resumed_job_leaves_no_temp_files(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, db_url=db_url, plugins=["tests.jobs.kinds_for_tests"])
    db = prepare(settings)
    try:
        job, _ = queue.submit(db, "test_count", {"chunks": 3, "chunk_s": 0.0})
        proc = subprocess.run(
            [sys.executable, "-c", WORKER_KILLED_MID_WRITE, settings.model_dump_json()],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert proc.returncode == -signal.SIGKILL
        out = settings.workspace_dir / "test_out" / str(job.id)
        assert (out / "0.txt").exists() and len(list(out.glob(".1.txt.*.tmp"))) == 1  # the kill's leftover

        worker = JobWorker(settings, db=db, worker_id="resumer")
        worker.register()  # finds the dead worker's job and queues it again
        assert worker.run_once() == job.id
        with db.read_session() as s:
            done = s.get(type(job), job.id)
            assert done.status == "succeeded" and done.result["resumed_from"] == 1, done.error
        assert sorted(p.name for p in out.iterdir()) == ["0.txt", "1.txt", "2.txt"]
        assert list(settings.workspace_dir.rglob("*.tmp")) == []
    finally:
        db.dispose()
