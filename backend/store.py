"""The one way files are written under the workspace: atomically, and never outside it."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


class FileStore:
    """Atomic file store rooted at the workspace (temp file, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def path(self, rel: str | Path) -> Path:
        """Absolute path of ``rel`` inside the store; refuses anything that escapes it."""
        p = (self.root / rel).resolve()
        if not p.is_relative_to(self.root):
            raise ValueError(f"path {str(rel)!r} escapes the workspace")
        return p

    def write_bytes(self, rel: str | Path, data: bytes) -> Path:
        dest = self.path(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
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
