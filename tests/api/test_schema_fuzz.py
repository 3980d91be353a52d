"""Property-based fuzzing of every API operation from ``/api/openapi.json`` (Schemathesis), on SQLite and
PostgreSQL (issue 29): whatever the generated path, query and body, positive (the schema's own types) and
negative (values the schema forbids), the API answers without a 5xx, without echoing SQL or a traceback,
and leaves no temp or stray file in the workspace.

Bounded: :data:`EXAMPLES` examples per operation and mode, so about 56 operations x 2 modes x 6 examples
= ~650 requests per database; the test prints the exact count. No worker runs, so a job or experiment
that passes validation only sits in the queue.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from backend.core.tmpdirs import is_tmp_name
from tests.conftest import ApiHarness

EXAMPLES = 6
# What a database or Python error looks like when it is passed through instead of answered.
LEAKS = re.compile(
    r"\[SQL:|Traceback \(most recent|sqlalchemy\.exc|psycopg\.errors|sqlite3\.|OperationalError|IntegrityError|"
    r"DataError|out of range for type"
)


pytestmark = pytest.mark.slow  # seconds to minutes a test: outside the fast tier (README)


def _workspace_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_no_generated_request_gets_a_5xx_or_leaks_sql_or_leaves_files(api_each_db: ApiHarness) -> None:
    app = api_each_db.client.app
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 50  # every route is in the schema, so a new one is fuzzed too
    ws = api_each_db.settings.workspace_dir
    before = set(_workspace_files(ws))
    sent: list[int] = []
    problems: list[str] = []

    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,  # the same requests every run: a failure reproduces, a pass is not luck
                suppress_health_check=list(HealthCheck),
            )
            def check(case: schemathesis.Case) -> None:
                response = case.call()
                sent.append(response.status_code)
                where = f"{case.method} {case.formatted_path}: {response.status_code}"
                if response.status_code >= 500:
                    problems.append(f"{where}: {response.text[:300]}")
                elif LEAKS.search(response.text):
                    problems.append(f"{where} leaks internals: {response.text[:300]}")

            try:
                check()
            except Unsatisfiable:  # nothing the schema forbids can be sent (no params, no body): only positive
                assert mode is schemathesis.GenerationMode.NEGATIVE

    print(f"schema fuzz: {len(sent)} requests over {len(operations)} operations")
    assert problems == []
    assert len(sent) >= len(operations) * 2
    assert any(code == 422 for code in sent) and any(code < 300 for code in sent)
    new = [f for f in set(_workspace_files(ws)) - before if not f.startswith(("tmp/gradio/",))]
    stray = [f for f in new if any(is_tmp_name(part) for part in Path(f).parts)]
    assert stray == [], stray
    # The only files a refused or accepted fuzz request may leave: the database and what a valid request
    # stores on purpose (an upload that really is a zip, a saved vocabulary lives in the database).
    unexpected = [f for f in new if not re.fullmatch(r"rebalance\.db(-wal|-shm)?|uploads/[0-9a-f]{32}\.zip", f)]
    assert unexpected == [], unexpected
