"""The atomic file store: a write killed halfway leaves a temp file that later writes and start-up
remove, while temp files of writers still alive are left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from backend.store import HOST_TAG, STALE_TMP_AGE_S, FileStore, sweep_stale_tmp
from tests.conftest import REPO

# Dies by SIGKILL inside the atomic write: after the data went to the temp file, before the rename.
KILL_DURING_WRITE = """
import os, signal, sys
from backend.store import FileStore

store = FileStore(sys.argv[1])
os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
store.write_bytes(sys.argv[2], b"half")
"""


def kill_during_write(root: Path, rel: str) -> Path:
    """Run a writer that is SIGKILLed mid-write; returns the temp file it left behind."""
    proc = subprocess.run(
        [sys.executable, "-c", KILL_DURING_WRITE, str(root), rel], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert proc.returncode == -signal.SIGKILL
    assert not (root / rel).exists()
    (tmp,) = (root / rel).parent.glob(".*.tmp")
    return tmp


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_next_write_into_the_folder_removes_a_killed_writers_temp_file(tmp_path: Path) -> None:
    tmp = kill_during_write(tmp_path, "pools/1/0.png")
    store = FileStore(tmp_path)
    store.write_bytes("pools/1/1.png", b"next")
    assert not tmp.exists()
    assert sorted(p.name for p in (tmp_path / "pools" / "1").iterdir()) == ["1.png"]


def test_live_writers_temp_files_are_kept_until_stale(tmp_path: Path) -> None:
    folder = tmp_path / "pools" / "2"
    folder.mkdir(parents=True)
    dead_pid = kill_during_write(tmp_path, "scratch/x").name.split("-")[-2]  # a pid that no longer runs
    live = folder / f".0.png.{HOST_TAG}-{os.getpid()}-abc123.tmp"  # this process: alive, maybe mid-write
    elsewhere = folder / f".1.png.otherhost-{dead_pid}-abc123.tmp"  # another host's pid means nothing here
    unknown = folder / ".2.png.1a2b3c4d.tmp"  # another writer's name, without host and pid
    for path in (live, elsewhere, unknown):
        path.write_bytes(b"partial")
    assert sweep_stale_tmp(folder) == 0
    assert live.exists() and elsewhere.exists() and unknown.exists()
    for path in (live, elsewhere, unknown):
        _age(path, STALE_TMP_AGE_S + 60)  # no atomic write takes this long: stale whoever wrote it
    assert sweep_stale_tmp(folder) == 3
    assert list(folder.iterdir()) == []


def test_sweep_reaches_nested_folders_and_leaves_other_files(tmp_path: Path) -> None:
    a = kill_during_write(tmp_path, "gans/3/ckpt/epoch_1.safetensors")
    b = kill_during_write(tmp_path, "uploads/x.json")
    (tmp_path / "uploads" / "keep.tmp").write_text("not hidden: not an atomic-write temp file")
    (tmp_path / "uploads" / ".keep").write_text("hidden, but not a temp file")
    assert FileStore(tmp_path).sweep_tmp() == 2
    assert not a.exists() and not b.exists()
    assert (tmp_path / "uploads" / "keep.tmp").exists() and (tmp_path / "uploads" / ".keep").exists()
