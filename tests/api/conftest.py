"""Fixtures of the API tests: the API over a fresh workspace on each database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.api.app import create_api
from backend.runtime import prepare
from tests.conftest import ApiHarness, make_settings


@pytest.fixture
def api_each_db(tmp_path: Path, db_url: str) -> Iterator[ApiHarness]:
    """The API over a fresh workspace, once on SQLite and once on PostgreSQL; no worker runs."""
    settings = make_settings(tmp_path, db_url=db_url)
    db = prepare(settings)
    with TestClient(create_api(settings, db)) as client:
        yield ApiHarness(client=client, settings=settings, db=db)
    db.dispose()
