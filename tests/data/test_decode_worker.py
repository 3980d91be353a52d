"""Decode worker processes: a worker that dies fails the cache build, and nothing is left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.data import cache as cache_mod
from backend.data.cache import build_cache
from backend.data.decode_worker import WorkerPool
from backend.data.sources import scan_imagefolder
from tests.data.conftest import write_folder


def test_a_dead_decode_worker_fails_the_build_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class OneDeadWorker(WorkerPool):
        """A real pool whose first worker process is killed before any task reaches it."""

        def __init__(self, n: int) -> None:
            super().__init__(n)
            self._procs[0].kill()
            self._procs[0].wait()

    monkeypatch.setattr(cache_mod, "PROCESS_MIN_FILES", 0)  # the process path for a small folder
    monkeypatch.setattr(cache_mod, "_workers", lambda: 2)
    monkeypatch.setattr(cache_mod, "WorkerPool", OneDeadWorker)
    root = write_folder(tmp_path / "ds", {"a": 3, "b": 3})
    with pytest.raises(RuntimeError, match="decode worker process died"):
        build_cache(scan_imagefolder(root), tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
