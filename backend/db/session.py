"""Engine and session setup. SQLite gets WAL, busy_timeout, foreign keys and BEGIN IMMEDIATE writes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000


def is_sqlite(engine_or_url: Engine | str) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.get_backend_name() == "sqlite"


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite connections are tuned so concurrent workers never see 'database is locked'."""
    if is_sqlite(url):
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            pool_size=8,
            max_overflow=16,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take transaction control away from pysqlite so that we can emit BEGIN ourselves.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; commits stay durable across app crashes
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            # SQLAlchemy drops FOR UPDATE on SQLite. BEGIN IMMEDIATE takes the write lock up front, so a
            # read-then-update (claiming a job) is serialised by construction and never fails halfway with
            # SQLITE_BUSY on lock upgrade. Read-only sessions opt out with sqlite_begin="DEFERRED".
            mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=8,
        max_overflow=16,
        connect_args={"connect_timeout": 5} if url.startswith("postgresql") else {},
    )


class Database:
    """Owns the engine and hands out write sessions (default) and read-only sessions."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sqlite = is_sqlite(self.engine)
        self._write = sessionmaker(self.engine, expire_on_commit=False)
        read_bind = self.engine.execution_options(sqlite_begin="DEFERRED") if self.sqlite else self.engine
        self._read = sessionmaker(read_bind, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A write session: commits on success, rolls back on error."""
        with self._write() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A read-only session (on SQLite it does not take the write lock)."""
        # Closing (not rolling back) ends the transaction without expiring loaded objects.
        with self._read() as s:
            yield s

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            conn.rollback()

    def dispose(self) -> None:
        self.engine.dispose()

    @property
    def safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)
