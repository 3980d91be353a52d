"""Apply Alembic migrations programmatically (on every start; idempotent and safe to race)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from backend.db.session import Database

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(db: Database) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", db.url.replace("%", "%%"))
    return cfg


def upgrade(db: Database, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` inside one transaction.

    On SQLite the transaction starts with BEGIN IMMEDIATE and on PostgreSQL it takes an advisory lock,
    so processes starting together (app + workers) migrate one after another, never twice.
    """
    cfg = alembic_config(db)
    with db.engine.begin() as conn:
        if not db.sqlite:
            conn.execute(text("SELECT pg_advisory_xact_lock(74616201)"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision(db: Database) -> str | None:
    return ScriptDirectory.from_config(alembic_config(db)).get_current_head()
