"""Experiments as one thing: validate a study's config, submit its graph of ordinary jobs, advance it,
cancel it, resume it, describe it. The REST API (``/api/experiments``) and the CLI
(``python app.py experiment``) both go through these functions, so they share one implementation and
the same idempotency keys: each reuses the other's finished jobs.

The graph advances whenever someone looks at it (``advance`` is cheap and idempotent): the API calls
it on every read, the studio polls, the CLI loops. A stage's job is submitted once the jobs it needs
have succeeded; the jobs themselves run on ordinary workers and survive restarts like any job.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from backend.config import PathNotAllowed, Settings
from backend.core.tmpdirs import make_tmp_dir
from backend.db.models import Benchmark, Job
from backend.db.session import Database
from backend.experiment import (
    ExperimentConfig,
    ExperimentError,
    Step,
    _dataset_folder,
    _resolve,
    check_plan,
    config_hash,
    parse_config,
    plan,
    write_outputs,
)
from backend.jobs import queue
from backend.services import experiments as svc
from backend.services.benchmarks import focus_classes, groups_of, rows_of, verdicts_of
from backend.services.errors import DomainError, Invalid, NotReady

IDEMPOTENCY_KEY_MAX = 128  # the jobs.idempotency_key column (String(128); PostgreSQL enforces it)
OUTPUT_FILES = ("results.csv", "results.json", "report.html", "config.yaml")
# Config keys that name files the workers will read; checked against the allowed directories.
PATH_KEYS = (("dataset", "path"), ("gan", "source_path"), ("diffusion", "source_path"), ("sd", "vocabulary"))


@dataclass
class Prepared:
    """A validated study: its config, where its relative paths point, and its planned jobs."""

    config: ExperimentConfig
    base_dir: Path
    steps: list[Step]

    def key(self, step: Step) -> str:
        # The CLI's key since the first release: a rerun of the same config reuses every finished job. A key
        # longer than the column (a long experiment or class name) is replaced by its hash, still one per stage.
        key = f"experiment:{self.config.name}:{config_hash(self.config)}:{step.name}"
        if len(key) > IDEMPOTENCY_KEY_MAX:
            key = f"experiment:sha256:{hashlib.sha256(key.encode()).hexdigest()}"
        return key


def _invalid(exc: ExperimentError) -> Invalid:
    """The CLI's one-line message as a domain error naming its field ("dataset.path: ...")."""
    field, _, message = str(exc).partition(": ")
    return Invalid(field, message) if message else Invalid("config", field)


def prepare(data: Any, settings: Settings, *, base_dir: Path, trusted: bool = False) -> Prepared:
    """Validate ``data`` (a config dict) with the CLI's messages; raise ``Invalid`` naming the field.

    Untrusted configs (from the API) may only name files under the operator's allowed directories.
    """
    try:
        config = parse_config(data)
        if not trusted:
            for section, key in PATH_KEYS:
                value = getattr(getattr(config, section), key)
                if value:
                    try:
                        settings.is_allowed(_resolve(base_dir, value))
                    except PathNotAllowed as exc:
                        raise Invalid(f"{section}.{key}", str(exc)) from None
        steps = plan(config, base_dir, _dataset_folder(config, base_dir, settings))
        check_plan(steps, None if trusted else settings)
    except ExperimentError as exc:
        raise _invalid(exc) from None
    return Prepared(config, base_dir, steps)


def launch(db: Database, settings: Settings, prepared: Prepared) -> int:
    """Record a new experiment for ``prepared`` and submit the stages that can start; its id."""
    with db.session() as s:
        row = svc.create(s, prepared.config.name, prepared.config.model_dump(mode="json"), prepared.base_dir)
        experiment_id = row.id
    try:
        advance(db, settings, experiment_id)
    except Exception as exc:
        # Never leave a "running" experiment that no stage will move (the lists would show it forever).
        _finish(db, experiment_id, "failed", error=f"could not submit its first stages: {type(exc).__name__}: {exc}")
        raise
    return experiment_id


def _stored(db: Database, settings: Settings, experiment_id: int) -> tuple[Any, Prepared]:
    with db.read_session() as s:
        row = svc.get(s, experiment_id)
        s.expunge(row)
    base_dir = Path(row.base_dir)
    try:
        # Validated at launch; reads only rebuild the plan (no path or params checks on every poll).
        config = parse_config(row.config)
        steps = plan(config, base_dir, _dataset_folder(config, base_dir, settings))
    except ExperimentError as exc:
        raise _invalid(exc) from None
    return row, Prepared(config, base_dir, steps)


def _jobs(db: Database, ids: list[int]) -> dict[int, Job]:
    with db.read_session() as s:
        jobs = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(ids)))}
        for j in jobs.values():
            s.expunge(j)
    return jobs


def advance(db: Database, settings: Settings, experiment_id: int) -> None:
    """Submit every stage whose dependencies succeeded; finish the experiment when a stage failed or
    was cancelled, or when the benchmark is done (then its outputs are written under the workspace)."""
    row, prep = _stored(db, settings, experiment_id)
    if row.status != "running":
        return
    stage_jobs = dict(row.jobs)
    jobs = _jobs(db, list(stage_jobs.values()))
    results: dict[str, dict[str, Any]] = {}
    for step in prep.steps:
        job = jobs.get(stage_jobs.get(step.name, 0))
        if job is None:
            if not all(n in results for n in step.needs):
                continue
            built = results
            if step.prepare is not None:
                try:
                    built = {**results, **step.prepare(db, results)}
                except DomainError as exc:  # e.g. the previous round's pool is not an SD pool
                    _finish(db, experiment_id, "failed", error=f"{step.name}: {exc}")
                    return
            try:
                job, created = queue.submit(
                    db,
                    step.kind,
                    step.build(built),
                    idempotency_key=prep.key(step),
                    max_attempts=settings.max_attempts,
                )
            except queue.IdempotencyConflict as exc:
                _finish(db, experiment_id, "failed", error=f"{step.name}: {exc}")
                return
            if not created and job.status in ("failed", "cancelled"):
                job = queue.retry(db, job.id) or job  # launching again means: run it (from its checkpoint)
            with db.session() as s:
                svc.record_job(s, experiment_id, step.name, job.id)
        if job.status == "succeeded":
            results[step.name] = job.result or {}
        elif job.status in ("failed", "cancelled"):
            detail = job.error or job.message or "no message"
            _finish(
                db, experiment_id, job.status, error=f"{step.name} ({step.kind} job {job.id}) {job.status}: {detail}"
            )
            return
    if len(results) == len(prep.steps):
        _complete(db, settings, experiment_id, prep, results, {s.name: stage_jobs.get(s.name) for s in prep.steps})


def advance_running(db: Database, settings: Settings) -> list[int]:
    """Advance every running experiment (the server's background driver calls this every few seconds, so
    a study launched from the browser moves on while nobody watches); returns their ids."""
    with db.read_session() as s:
        ids = svc.running_ids(s)
    for experiment_id in ids:
        advance(db, settings, experiment_id)
    return ids


def output_dir(settings: Settings, experiment_id: int) -> Path:
    """Where a finished experiment's results.csv, results.json, report.html and config.yaml are."""
    return settings.workspace_dir / "experiments" / str(experiment_id)


def _finish(db: Database, experiment_id: int, status: str, **fields: Any) -> None:
    with db.session() as s:
        svc.finish(s, experiment_id, status, **fields)


def _complete(
    db: Database, settings: Settings, experiment_id: int, prep: Prepared, results: dict, jobs: dict[str, Any]
) -> None:
    """Write results.csv, results.json, report.html and config.yaml under the workspace; record the rows."""
    benchmark_id = results["benchmark"]["benchmark_id"]
    out = output_dir(settings, experiment_id)
    if not out.is_dir():
        # Written aside and renamed, so a reader never sees half the files (two advancing readers race here).
        tmp = make_tmp_dir(out.parent, str(experiment_id))
        write_outputs(db, benchmark_id, prep.config, tmp, jobs)
        try:
            tmp.rename(out)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    with db.read_session() as s:
        info, rows = rows_of(s, benchmark_id)
        verdicts = verdicts_of(s.get(Benchmark, benchmark_id), rows)
    compact = [
        {k: r[k] for k in ("variant", "seed", "overall_acc", "per_class", "balanced_acc", "groups")} for r in rows
    ]
    outputs: dict[str, Any] = {name: str(out / name) for name in OUTPUT_FILES}
    # The headline's classes: the named minority, or a long tail's few-shot classes (its groups stored too).
    outputs.update(
        benchmark_id=benchmark_id,
        classes=info.get("classes", []),
        minority=focus_classes(info),
        groups=groups_of(info),
        verdicts=verdicts,
    )
    _finish(db, experiment_id, "succeeded", rows=compact, outputs=outputs)


def cancel(db: Database, experiment_id: int) -> None:
    """Cancel every stage's job and the experiment itself (``NotReady`` once it succeeded)."""
    with db.session() as s:
        row = svc.get(s, experiment_id)
        if row.status == "succeeded":
            raise NotReady(f"experiment {experiment_id} already succeeded")
        job_ids = list(row.jobs.values())
    for job_id in job_ids:
        queue.request_cancel(db, job_id)
    _finish(db, experiment_id, "cancelled", error="cancelled")


def resume(db: Database, settings: Settings, experiment_id: int) -> None:
    """Run a failed or cancelled experiment again: its stopped jobs resume from their checkpoints."""
    with db.session() as s:
        job_ids = list(svc.reopen(s, experiment_id).jobs.values())
    for job_id in job_ids:
        queue.retry(db, job_id)  # only failed or cancelled jobs change
    advance(db, settings, experiment_id)


def describe(db: Database, settings: Settings, experiment_id: int) -> dict[str, Any]:
    """The experiment with each stage's job, status and progress (stages not yet submitted: 'waiting')."""
    row, prep = _stored(db, settings, experiment_id)
    jobs = _jobs(db, list(row.jobs.values()))
    stages = []
    for step in prep.steps:
        job = jobs.get(row.jobs.get(step.name, 0))
        stages.append(
            {
                "name": step.name,
                "kind": step.kind,
                "needs": step.needs,
                "job_id": job.id if job else None,
                "status": job.status if job else "waiting",
                "progress": 1.0 if job and job.status == "succeeded" else (job.progress if job else 0.0),
                "message": (job.error or job.message) if job else None,
                "eta_s": job.eta_s if job and job.status == "running" else None,
            }
        )
    minority = (row.outputs or {}).get("minority", [])
    return {
        "id": row.id,
        "name": row.name,
        "status": row.status,
        "error": row.error,
        "config": row.config,
        "created_at": row.created_at,
        "finished_at": row.finished_at,
        "progress": sum(s["progress"] for s in stages) / max(len(stages), 1),
        "stages": stages,
        "rows": row.rows or [],
        "minority": minority,
        "benchmark_id": (row.outputs or {}).get("benchmark_id"),
        "headline": svc.headline(row.rows or [], minority),
        "verdicts": (row.outputs or {}).get("verdicts", []),
        "links": {name: f"/api/experiments/{row.id}/{name}" for name in ("results.csv", "report.html")}
        if row.status == "succeeded"
        else {},
    }
