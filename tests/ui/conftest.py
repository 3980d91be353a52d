"""On a failed studio step, the server's side of the story: its log's last lines and where each of its threads
was (a page that stops answering is a server waiting on something; CI prints only the test report)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    studio = getattr(item, "funcargs", {}).get("studio")
    if report.when == "call" and report.failed and studio is not None and hasattr(studio, "diagnose"):
        report.sections.append(("studio server at the failure", studio.diagnose()))
