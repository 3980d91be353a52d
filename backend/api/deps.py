"""FastAPI dependencies: settings, database sessions and the file store from app.state."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.db.session import Database
from backend.store import FileStore


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Database:
    return request.app.state.db


def get_store(request: Request) -> FileStore:
    return request.app.state.store


def get_session(request: Request) -> Iterator[Session]:
    """A write session (BEGIN IMMEDIATE on SQLite). Write routes call ``session.commit()`` themselves."""
    with request.app.state.db.session() as s:
        yield s


def get_read_session(request: Request) -> Iterator[Session]:
    """A read-only session that never waits on writers (WAL readers on SQLite)."""
    with request.app.state.db.read_session() as s:
        yield s


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_db)]
StoreDep = Annotated[FileStore, Depends(get_store)]
SessionDep = Annotated[Session, Depends(get_session)]
ReadSessionDep = Annotated[Session, Depends(get_read_session)]


def not_found(what: str, ident: object) -> HTTPException:
    """The 404 every route answers for an unknown id: ``{"detail": "pool 12 not found"}``."""
    return HTTPException(status_code=404, detail=f"{what} {ident} not found")
