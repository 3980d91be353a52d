"""The one way files are written under the workspace: atomically, and never outside it.

An atomic write goes to ``.<name>.<host>-<pid>-<random>.tmp`` beside its destination, then is renamed
over it. A writer killed between the two leaves that temp file behind; the host and pid in its name
tell a later process on the same host that its writer is gone, so ``sweep_stale_tmp`` can remove it
without racing a live writer (another worker may be mid-write in the same workspace). Temp files
from other hosts, or from writers that do not name themselves, are judged by age alone.

The store sweeps each directory the first time it writes there, so a resumed job cleans up after the
attempt that was killed; start-up sweeps the whole workspace.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from backend.core.tmpdirs import HOST_TAG, is_tmp_name, pid_alive, writer_gone

__all__ = ["HOST_TAG", "STALE_TMP_AGE_S", "FileStore", "pid_alive", "sweep_stale_tmp"]

# Temp files older than this are stale whoever wrote them: an atomic write takes seconds, and names
# without a pid (other writers' ``.<name>.<random>.tmp``) can only be judged by age.
STALE_TMP_AGE_S = 3600.0


def _is_stale(entry: os.DirEntry[str], now: float, max_age_s: float) -> bool:
    """A temp file or directory (``backend.core.tmpdirs``) whose writer on this host is gone, or that is
    older than ``max_age_s``. Symlinks never are."""
    if not is_tmp_name(entry.name) or entry.is_symlink():
        return False
    if writer_gone(entry.name):
        return True
    try:
        return now - entry.stat(follow_symlinks=False).st_mtime > max_age_s
    except FileNotFoundError:  # renamed into place meanwhile
        return False


def sweep_stale_tmp(directory: Path, *, recursive: bool = True, max_age_s: float = STALE_TMP_AGE_S) -> int:
    """Remove temp files and directories under ``directory`` whose writer died or that are older than
    ``max_age_s``; returns how many were removed. Symlinks are neither followed nor removed."""
    removed = 0
    now = time.time()
    pending = [Path(directory)]
    while pending:
        current = pending.pop()
        try:
            entries = list(os.scandir(current))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if _is_stale(entry, now, max_age_s):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    Path(entry.path).unlink(missing_ok=True)
                removed += 1
            elif recursive and entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
    return removed


class FileStore:
    """Atomic file store rooted at the workspace (temp file, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self._swept: set[Path] = set()
        self._lock = threading.Lock()

    def path(self, rel: str | Path) -> Path:
        """Absolute path of ``rel`` inside the store; refuses anything that escapes it."""
        p = (self.root / rel).resolve()
        if not p.is_relative_to(self.root):
            raise ValueError(f"path {str(rel)!r} escapes the workspace")
        return p

    def _sweep_once(self, directory: Path) -> None:
        """Sweep a directory the first time this store writes into it (one listing per process)."""
        with self._lock:
            if directory in self._swept:
                return
            self._swept.add(directory)
        sweep_stale_tmp(directory, recursive=False)

    def write_bytes(self, rel: str | Path, data: bytes) -> Path:
        dest = self.path(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._sweep_once(dest.parent)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.{HOST_TAG}-{os.getpid()}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dest

    def write_text(self, rel: str | Path, text: str) -> Path:
        return self.write_bytes(rel, text.encode("utf-8"))

    def write_json(self, rel: str | Path, obj: Any) -> Path:
        return self.write_text(rel, json.dumps(obj, indent=1, sort_keys=True))

    def read_json(self, rel: str | Path) -> Any:
        return json.loads(self.path(rel).read_text("utf-8"))

    def save_array(self, rel: str | Path, array: np.ndarray) -> Path:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
        return self.write_bytes(rel, buf.getvalue())

    def exists(self, rel: str | Path) -> bool:
        return self.path(rel).exists()

    def sweep_tmp(self) -> int:
        """Remove stale temp files anywhere in the workspace (start-up); returns how many."""
        return sweep_stale_tmp(self.root)
