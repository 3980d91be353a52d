"""Start-up (``prepare``): temp files live in the workspace, and what killed processes or old
sessions left there is removed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from backend.runtime import GRADIO_UPLOAD_MAX_AGE_S, prepare
from backend.store import HOST_TAG
from tests.conftest import make_settings
from tests.test_store import kill_during_write


def test_start_up_removes_temp_files_of_killed_writes(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    workspace = settings.workspace_dir
    stale = [kill_during_write(workspace, "pools/1/7.png"), kill_during_write(workspace, "datasets/2/cache.npy")]
    # (not under pools/1: with no pool row there, start-up removes that directory as an orphan)
    live = workspace / "datasets" / "2" / f".8.png.{HOST_TAG}-{os.getpid()}-live00.tmp"
    live.write_bytes(b"a write in progress in a running process")
    prepare(settings).dispose()
    assert not any(p.exists() for p in stale)
    assert live.exists()


def test_gradio_uploads_go_under_the_workspace_and_old_ones_are_removed_on_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)  # restored afterwards; prepare() sets it
    settings = make_settings(tmp_path)
    gradio_dir = settings.workspace_dir / "tmp" / "gradio"
    old = gradio_dir / "0f" / "old.zip"
    recent = gradio_dir / "1e" / "recent.zip"
    for path in (old, recent):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"PK")
    then = time.time() - GRADIO_UPLOAD_MAX_AGE_S - 60
    os.utime(old, (then, then))
    prepare(settings).dispose()
    assert os.environ["GRADIO_TEMP_DIR"] == str(gradio_dir)
    assert not old.exists() and not old.parent.exists()
    assert recent.exists()

    import gradio.utils

    assert Path(gradio.utils.get_upload_folder()) == gradio_dir
