"""/api/experiments: launch a whole study (the CLI's config) as one thing, watch, cancel, resume it.

Thin: validation, submission and advancing are ``backend.experiment_runs``, shared with
``python app.py experiment``; reads advance the graph, so a stage starts once its inputs are done.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from fastapi import APIRouter, Body, Query, status
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel

from backend import experiment_runs as runs
from backend.api.deps import DatabaseDep, ReadSessionDep, SettingsDep
from backend.core import safeyaml
from backend.core.types import DbId, DbOffset
from backend.experiment import EMPTY_MESSAGE, ExperimentError, refuse_empty
from backend.services import experiments as svc
from backend.services.errors import Invalid

router = APIRouter(prefix="/experiments", tags=["experiments"])
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


class StageOut(BaseModel):
    name: str
    kind: str
    needs: list[str]
    job_id: int | None
    status: str  # waiting (not submitted yet) | queued | running | succeeded | failed | cancelled
    progress: float
    message: str | None
    eta_s: float | None = None  # the running job's estimate (as GET /api/jobs/{id}); None otherwise


class ExperimentOut(BaseModel):
    id: int
    name: str
    status: str  # running | succeeded | failed | cancelled
    error: str | None
    config: dict[str, Any]
    created_at: datetime
    finished_at: datetime | None
    progress: float
    stages: list[StageOut]
    rows: list[dict[str, Any]]  # variant, seed, overall_acc, per_class (percent) once succeeded
    minority: list[str]
    headline: dict[str, float]  # variant -> mean minority-class accuracy (percent)
    # the answer: per synthetic variant, its verdict against the strongest classical one (as GET /api/benchmarks/{id})
    verdicts: list[dict[str, Any]] = []
    benchmark_id: int | None
    links: dict[str, str]  # results.csv, report.html once succeeded


class ExperimentPage(BaseModel):
    items: list[ExperimentOut]
    total: int


class TemplateOut(BaseModel):
    name: str
    yaml: str


def _config_of(body: dict[str, Any]) -> Any:
    """The config itself, or the one in ``{"yaml": text}`` read with the guarded loader (no aliases, bounded
    size and depth, no NUL); an empty config is refused either way."""
    if set(body) == {"yaml"} and isinstance(body["yaml"], str):
        try:
            data = safeyaml.load(body["yaml"], what="the YAML")
        except safeyaml.YamlRefused as exc:
            raise Invalid("yaml", str(exc)) from None
        source = "yaml"
    else:
        data, source = body, "config"
    try:
        refuse_empty(data, source)
    except ExperimentError:
        raise Invalid(source, EMPTY_MESSAGE) from None
    return data


@router.get("/templates", response_model=list[TemplateOut])
def templates() -> list[TemplateOut]:
    """The recipes in examples/*.yaml, with their relative paths made absolute (they point next to the
    examples; a launch still checks them against the allowed directories)."""
    out = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        data = safeyaml.load(text.encode(), what=path.name) or {}
        for section, key in runs.PATH_KEYS:
            value = (data.get(section) or {}).get(key)
            if isinstance(value, str) and not Path(value).is_absolute():
                absolute = str((path.parent / value).resolve())
                data[section][key] = absolute
                text = _with_value(text, key, value, absolute)
        # The recipe as written, comments included ("Sized for 2 CPU cores..." is what a user reads first),
        # with only its relative paths rewritten; re-dumped (comments lost) if that edit did not give the same data.
        if yaml.safe_load(text) != data:
            text = yaml.safe_dump(data, sort_keys=False)
        out.append(TemplateOut(name=path.stem, yaml=text))
    return out


def _with_value(text: str, key: str, old: str, new: str) -> str:
    """``text`` with the first ``key: old`` (plain or quoted value) set to ``new``, double-quoted for YAML."""
    pattern = re.compile(rf"""^(\s*{re.escape(key)}\s*:\s*)(["']?){re.escape(old)}\2(?=\s*(#.*)?$)""", re.M)
    return pattern.sub(lambda m: m[1] + json.dumps(new), text, count=1)


@router.post("", response_model=ExperimentOut, status_code=status.HTTP_201_CREATED)
def launch(db: DatabaseDep, settings: SettingsDep, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """Validate the config (the CLI's messages; 422 naming the field), record the experiment and submit
    the stages that can start. Relative paths are relative to the server's start directory."""
    prepared = runs.prepare(_config_of(body), settings, base_dir=settings.start_dir, trusted=False)
    experiment_id = runs.launch(db, settings, prepared)
    return runs.describe(db, settings, experiment_id)


@router.get("", response_model=ExperimentPage)
def list_experiments(
    db: DatabaseDep,
    settings: SettingsDep,
    session: ReadSessionDep,
    limit: int = Query(20, ge=1, le=200),
    offset: DbOffset = 0,
) -> dict[str, Any]:
    """Experiments, newest first; running ones are advanced first."""
    rows, total = svc.recent(session, limit, offset)
    items = []
    for row in rows:
        if row.status == "running":
            runs.advance(db, settings, row.id)
        items.append(runs.describe(db, settings, row.id))
    return {"items": items, "total": total}


@router.get("/{experiment_id}", response_model=ExperimentOut)
def get_experiment(experiment_id: DbId, db: DatabaseDep, settings: SettingsDep) -> dict[str, Any]:
    runs.advance(db, settings, experiment_id)
    return runs.describe(db, settings, experiment_id)


@router.post("/{experiment_id}/cancel", response_model=ExperimentOut)
def cancel(experiment_id: DbId, db: DatabaseDep, settings: SettingsDep) -> dict[str, Any]:
    """Cancel every stage's job (running ones stop at their next chunk boundary); 409 once succeeded."""
    runs.cancel(db, experiment_id)
    return runs.describe(db, settings, experiment_id)


@router.post("/{experiment_id}/resume", response_model=ExperimentOut)
def resume(experiment_id: DbId, db: DatabaseDep, settings: SettingsDep) -> dict[str, Any]:
    """Retry a failed or cancelled experiment: stopped jobs resume from their checkpoints."""
    runs.resume(db, settings, experiment_id)
    return runs.describe(db, settings, experiment_id)


@router.get("/{experiment_id}/results.csv", response_class=FileResponse)
def results_csv(experiment_id: DbId, session: ReadSessionDep) -> FileResponse:
    path = svc.output_path(session, experiment_id, "results.csv")
    return FileResponse(path, media_type="text/csv", filename=f"experiment-{experiment_id}-results.csv")


@router.get("/{experiment_id}/report.html", response_class=HTMLResponse)
def report_html(experiment_id: DbId, session: ReadSessionDep) -> HTMLResponse:
    return HTMLResponse(svc.output_path(session, experiment_id, "report.html").read_text("utf-8"))
