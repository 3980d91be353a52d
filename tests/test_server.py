"""Composition at the top: the studio reaches its own API."""

from __future__ import annotations

from pathlib import Path

from backend.server import api_base_url
from tests.conftest import make_settings


def test_the_studio_reaches_a_wildcard_bind_over_loopback(tmp_path: Path) -> None:
    assert api_base_url(make_settings(tmp_path, host="0.0.0.0", port=8123)) == "http://127.0.0.1:8123/api"
    assert api_base_url(make_settings(tmp_path, host="::1", port=80)) == "http://[::1]:80/api"
    assert api_base_url(make_settings(tmp_path, host="10.0.0.5", port=7860)) == "http://10.0.0.5:7860/api"
