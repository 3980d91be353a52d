"""Start-up checks shared by the server, workers and the experiment CLI: one clear line on failure."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from backend.config import Settings
from backend.core.allocator import keep_freed_memory
from backend.db.migrate import upgrade
from backend.db.session import Database
from backend.store import sweep_stale_tmp

# Gradio keeps an upload until the studio posts it to /api/datasets/upload, minutes later; one an hour
# old belongs to a session that is gone (a restart ends them all), so start-up removes it.
GRADIO_UPLOAD_MAX_AGE_S = 3600.0


class StartupError(Exception):
    """Start-up cannot continue; the message is printed as one line, without a traceback."""


def check_workspace(settings: Settings) -> None:
    ws = settings.workspace_dir
    try:
        ws.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=ws, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StartupError(
            f"workspace {ws} is not writable ({exc.strerror or exc}); choose another with --workspace"
        ) from None


def open_database(settings: Settings, migrate: bool = True) -> Database:
    """Connect, check the connection and bring the schema up to date (Alembic)."""
    try:
        db = Database(settings.database_url)
    except Exception as exc:
        raise StartupError(f"invalid database URL {settings.database_url!r}: {exc}") from None
    try:
        db.ping()
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StartupError(f"cannot reach the database at {db.safe_url}: {reason}") from None
    if migrate:
        try:
            upgrade(db)
        except Exception as exc:
            raise StartupError(f"could not migrate the database at {db.safe_url}: {exc}") from None
    return db


def use_workspace_temp(settings: Settings) -> None:
    """Point Gradio's upload and cache folder at ``<workspace>/tmp/gradio`` instead of the system temp
    directory. Gradio reads ``GRADIO_TEMP_DIR`` when the studio is built, so this runs before that."""
    settings.gradio_temp_dir.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(settings.gradio_temp_dir)


def remove_old_files(directory: Path, max_age_s: float) -> int:
    """Delete files under ``directory`` last modified over ``max_age_s`` ago, then the folders they
    leave empty; returns how many files went. Symlinks are removed, never followed."""
    removed = 0
    cutoff = time.time() - max_age_s
    for root, dirs, files in os.walk(directory, topdown=False):
        for name in files:
            path = Path(root, name)
            try:
                if path.lstat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        for name in dirs:
            try:
                Path(root, name).rmdir()  # only succeeds when empty
            except OSError:
                continue
    return removed


def clean_workspace(settings: Settings) -> None:
    """Start-up cleanup: temp files and directories whose process was killed (atomic writes, extractions,
    decodes, model builds; ``backend.core.tmpdirs``), and hour-old spools and Gradio uploads."""
    sweep_stale_tmp(settings.workspace_dir)
    remove_old_files(settings.tmp_dir, GRADIO_UPLOAD_MAX_AGE_S)


def sweep_orphans(settings: Settings, db: Database) -> list[str]:
    """Start-up cleanup that needs the database: pool directories whose pool row does not exist (a job
    whose transaction was rolled back after its images were written, or a pool dropped while a
    killed job wrote into it). A pool's row is committed before its first image is written, so a live
    job's directory always has one. Returns the removed directories."""
    from backend.services.pools import orphan_pool_dirs

    with db.read_session() as s:
        orphans = orphan_pool_dirs(s, settings.workspace_dir / "pools")
    for path in orphans:
        shutil.rmtree(path, ignore_errors=True)
    return [str(p) for p in orphans]


def prepare(settings: Settings) -> Database:
    """What every entry point runs first: a writable workspace that holds all temp files, cleaned of
    what killed processes left, and a reachable, migrated database. Also the malloc settings that keep
    a training step from page-faulting its activations in (``backend.core.allocator``)."""
    keep_freed_memory()
    check_workspace(settings)
    use_workspace_temp(settings)
    clean_workspace(settings)
    db = open_database(settings)
    sweep_orphans(settings, db)
    return db
