"""Alembic migrations: an older workspace upgrades and keeps its data; models and migrations agree."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from backend.db.migrate import current_revision, head_revision, upgrade
from backend.db.models import Base
from backend.db.session import Database


def test_old_revision_upgrades_to_head_keeping_data(db_url: str) -> None:
    db = Database(db_url)
    upgrade(db, "0001_jobs")
    assert current_revision(db) == "0001_jobs"
    assert "datasets" not in inspect(db.engine).get_table_names()
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (kind, params, status, progress, attempts, max_attempts, cancel_requested, "
                "checkpoint, created_at, updated_at) VALUES ('old_kind', '{\"a\": 1}', 'succeeded', 1.0, 1, 3, "
                "false, '{}', '2025-01-01 00:00:00', '2025-01-01 00:00:00')"
            )
        )
    upgrade(db)
    assert current_revision(db) == head_revision(db)
    assert "pool_images" in inspect(db.engine).get_table_names()
    with db.engine.connect() as conn:
        row = conn.execute(text("SELECT kind, params FROM jobs")).one()
    assert row.kind == "old_kind"
    upgrade(db)  # idempotent
    db.dispose()


def test_models_match_migrations(db_url: str) -> None:
    db = Database(db_url)
    upgrade(db)
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    # UTCDateTime is a TypeDecorator over DateTime; alembic may report it as a type change on some backends.
    real = [d for d in diff if not (isinstance(d, list) and d and d[0][0] == "modify_type")]
    assert real == []
    db.dispose()


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    db.dispose()
