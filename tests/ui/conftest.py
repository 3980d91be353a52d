"""On a failed studio step, both sides of the story (``Studio.diagnose``): the page's address, tabs, console
errors and a screenshot, and the server's last log lines and where each of its threads was. CI prints only the
test report, and a page that stops answering may be waiting on the server or stuck on its own."""

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
