"""Start-up checks shared by the server, workers and the experiment CLI: one clear line on failure."""

from __future__ import annotations

import os
import tempfile

from backend.config import Settings
from backend.db.migrate import upgrade
from backend.db.session import Database


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


def prepare(settings: Settings) -> Database:
    check_workspace(settings)
    return open_database(settings)
