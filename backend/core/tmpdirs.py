"""Temp directories that say who made them, so a sweep can tell a dead writer's leftovers from live work.

A job that builds a directory (an extracted upload, a decoded dataset, a model) builds it under a temp
name beside its destination and renames it into place. A writer killed in between (SIGKILL, OOM, power)
leaves the temp directory behind -- 153 MB of half-decoded CIFAR-10, 2,954 extracted files. Naming it
``.<stem>.<host>-<pid>-<random>.tmp`` lets start-up (and any later writer into the same folder) remove
it as soon as its process is gone, without racing a live writer on this or another host: directories
of other hosts, and those of older releases that did not name their writer, are judged by age alone.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
from pathlib import Path

# This host in temp names: letters and digits only, so the name still parses (containers sharing a
# workspace have different hostnames, and their pids mean nothing here).
HOST_TAG = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24]
# .<stem>.<host>-<pid>-<random>.tmp (files and directories alike)
WRITER = re.compile(r"^\..+\.([A-Za-z0-9]*)-(\d+)-[^.-]+\.tmp$")
# Temp directories of releases before the writer was named: judged by age only.
LEGACY_DIR = re.compile(r"^\.(tmp-[0-9a-f]{32}|[0-9a-f]+\.[0-9a-f]{8})$")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def make_tmp_dir(parent: Path, stem: str) -> Path:
    """A new empty directory ``parent/.<stem>.<host>-<pid>-<random>.tmp`` (``parent`` is created)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_]", "_", stem)[:64] or "dir"
    return Path(tempfile.mkdtemp(prefix=f".{safe}.{HOST_TAG}-{os.getpid()}-", suffix=".tmp", dir=parent))


def writer_gone(name: str) -> bool:
    """Whether ``name`` is a temp name written by a process of this host that no longer runs."""
    match = WRITER.match(name)
    return match is not None and match.group(1) == HOST_TAG and not pid_alive(int(match.group(2)))


def is_tmp_name(name: str) -> bool:
    """Whether ``name`` is a temp file or directory name of this product (any release)."""
    return (name.startswith(".") and name.endswith(".tmp")) or LEGACY_DIR.match(name) is not None
