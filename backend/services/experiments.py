"""Experiments: the rows that track a whole study launched as one thing (from the API or the CLI).

A row holds the validated config, the job id of each stage once submitted, and -- when the study is
done -- its results rows and the paths of results.csv / report.html under the workspace. Submitting
and advancing the stages' jobs is ``backend.experiment_runs`` (it needs the job queue); this module
only reads and writes the rows, so routes, the runner and tests share one definition of the states.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.db.models import Experiment, utcnow
from backend.services.errors import NotFound, NotReady

FINISHED = ("succeeded", "failed", "cancelled")


def create(session: Session, name: str, config: dict[str, Any], base_dir: Path) -> Experiment:
    """A new running experiment with no stage submitted yet."""
    row = Experiment(name=name[:255], config=config, base_dir=str(base_dir), status="running", jobs={})
    session.add(row)
    session.flush()
    return row


def get(session: Session, experiment_id: int) -> Experiment:
    row = session.get(Experiment, experiment_id)
    if row is None:
        raise NotFound("experiment", experiment_id)
    return row


def recent(session: Session, limit: int = 50, offset: int = 0) -> tuple[list[Experiment], int]:
    """Experiments, newest first, and how many there are."""
    total = session.scalar(select(func.count(Experiment.id))) or 0
    rows = session.scalars(select(Experiment).order_by(Experiment.id.desc()).limit(limit).offset(offset)).all()
    return list(rows), total


def running_ids(session: Session) -> list[int]:
    """Ids of the experiments whose graph still has stages to run."""
    return list(session.scalars(select(Experiment.id).where(Experiment.status == "running").order_by(Experiment.id)))


def record_job(session: Session, experiment_id: int, stage: str, job_id: int) -> None:
    """Remember which job runs ``stage`` (a new dict, so the JSON column is written back)."""
    row = get(session, experiment_id)
    if row.jobs.get(stage) != job_id:
        row.jobs = {**row.jobs, stage: job_id}


def finish(
    session: Session,
    experiment_id: int,
    status: str,
    *,
    error: str | None = None,
    rows: list[dict[str, Any]] | None = None,
    outputs: dict[str, str] | None = None,
) -> bool:
    """Move a running experiment to a final state; False when it had already left ``running``."""
    row = get(session, experiment_id)
    if row.status != "running":
        return False
    row.status, row.error, row.finished_at = status, error, utcnow()
    if rows is not None:
        row.rows = rows
    if outputs is not None:
        row.outputs = outputs
    return True


def reopen(session: Session, experiment_id: int) -> Experiment:
    """A failed or cancelled experiment runs again (its stages' jobs are retried by the caller)."""
    row = get(session, experiment_id)
    if row.status == "succeeded":
        raise NotReady(f"experiment {experiment_id} already succeeded; launch it again to rerun it")
    row.status, row.error, row.finished_at = "running", None, None
    return row


def output_path(session: Session, experiment_id: int, name: str) -> Path:
    """The path of a finished experiment's ``results.csv`` or ``report.html``."""
    row = get(session, experiment_id)
    path = (row.outputs or {}).get(name)
    if row.status != "succeeded" or not path or not Path(path).is_file():
        raise NotReady(f"experiment {experiment_id} has no {name} yet (it is {row.status})")
    return Path(path)


def headline(rows: list[dict[str, Any]], minority: list[str]) -> dict[str, float]:
    """Per variant: the mean accuracy (percent) on the minority class(es) over seeds -- the study's number."""
    acc: dict[str, list[float]] = {}
    for r in rows:
        values = [r["per_class"][c] for c in minority if r.get("per_class", {}).get(c) is not None]
        if values:
            acc.setdefault(r["variant"], []).append(sum(values) / len(values))
    return {v: round(sum(a) / len(a), 2) for v, a in acc.items()}
