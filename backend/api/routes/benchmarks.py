"""/api/benchmarks: finished runs of benchmark jobs, as JSON rows, results.csv, report.html and plotly JSON."""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from pydantic import BaseModel
from sqlalchemy import func, select

from backend.api.deps import ReadSessionDep, SettingsDep, StoreDep
from backend.core.types import DbId
from backend.db.models import Benchmark, BenchmarkRun, Dataset
from backend.reports.figures import FIGURES, build_figure
from backend.reports.html import render_report
from backend.reports.tables import (
    ASSESS_NOTE,
    LONGTAIL_NOTE,
    VERDICT_NOTE,
    assessments_html,
    longtail_html,
    quality_html,
    results_csv,
    summarize,
    summary_html,
    verdicts_html,
)
from backend.services.benchmarks import (
    focus_classes,
    groups_of,
    is_longtail,
    load,
    run_rows,
    variant_assessments,
    variant_quality,
    variant_samples,
    verdicts_of,
    with_longtail,
)
from backend.services.errors import Invalid, NotFound
from backend.services.rows import job_statuses
from backend.training.models import ModelName
from backend.training.trainer import default_classifier, estimate_seconds, run_schedule

router = APIRouter(prefix="/benchmarks", tags=["benchmarks"])


class BenchmarkSummary(BaseModel):
    id: int
    dataset_id: int
    job_id: int | None
    params: dict[str, Any]
    classes: list[str]
    minority: list[str]
    # the imbalanced training counts per class, and the long-tail shot groups they put each class in
    # (many > 100, medium 20-100, few < 20 images); empty for benchmarks recorded before they were stored
    train_counts: dict[str, int] = {}
    groups: dict[str, list[str]] = {}
    model: str | None
    runs_done: int
    runs_total: int
    status: str  # the benchmark job's status; a failed one may hold only some runs
    created_at: datetime


class RunOut(BaseModel):
    variant: str
    seed: int
    overall_acc: float
    per_class: dict[str, float | None]  # percent
    val_acc: float | None
    epochs: int
    best_epoch: int | None  # the epoch whose weights were tested
    select_epoch: str | None  # how it was chosen: last | best_balanced
    validation: dict[str, Any] | None  # the seed's validation split: size, counts per class, fingerprint
    n_synthetic: int
    # images per class the variant trained on (oversampled copies and synthetic images included)
    variant_counts: dict[str, int] | None = None
    steps: int | None = None  # optimiser steps of the run (the same for every variant of a benchmark)
    batch_size: int | None = None
    # mean per-class accuracy (%) of the tested weights on their own real training images, unaugmented
    train_balanced: float | None = None
    under_trained: bool | None = None  # train_balanced below the bar: the verdict cannot use the run
    balanced_acc: float | None = None  # mean per-class test accuracy (%)
    groups: dict[str, float] = {}  # long-tail shot groups' accuracy (%): many / medium / few, those with a class
    curves: list[dict[str, Any]]  # per period: epoch, steps, train_loss, train_acc, val_acc, val_balanced, lr, seconds
    confusion: list[list[int]]  # rows = true class, columns = predicted, in `classes` order
    created_at: datetime


class BenchmarkOut(BenchmarkSummary):
    rows: list[RunOut]
    # variant -> {selection_id, target, picks: panel, pool: panel}: the quality panel (precision, recall,
    # density, coverage, frechet, n_real, n_fake, k) of each variant made from a selection
    quality: dict[str, dict[str, Any]] = {}
    # per synthetic variant: {variant, baseline, minority_delta, minority_ci, overall_delta, overall_ci, verdict,
    # seeds, seeds_needed, margin, reason} -- deltas in percentage points, intervals as [lo, hi]
    verdicts: list[dict[str, Any]] = []


def _summary(row: Benchmark, runs_done: int, status: str) -> BenchmarkSummary:
    info = row.info or {}
    return BenchmarkSummary(
        id=row.id,
        dataset_id=row.dataset_id,
        job_id=row.job_id,
        params=row.params or {},
        classes=info.get("classes", []),
        minority=info.get("minority", []),
        train_counts=info.get("train_counts") or {},
        groups=groups_of(info),
        model=info.get("model"),
        runs_done=runs_done,
        runs_total=len(info.get("variants", [])) * len(info.get("seeds", [])),
        status=status,
        created_at=row.created_at,
    )


@router.get("", response_model=list[BenchmarkSummary])
def list_benchmarks(session: ReadSessionDep) -> list[BenchmarkSummary]:
    counts = dict(
        session.execute(select(BenchmarkRun.benchmark_id, func.count()).group_by(BenchmarkRun.benchmark_id)).all()
    )
    rows = session.scalars(select(Benchmark).order_by(Benchmark.id.desc())).all()
    statuses = job_statuses(session, [r.job_id for r in rows])
    return [_summary(r, counts.get(r.id, 0), statuses.get(r.job_id, "unknown")) for r in rows]


class ScheduleOut(BaseModel):
    steps: int  # optimiser steps of every run
    batch_size: int
    runs: int  # variants x seeds
    model: str
    basis: str  # how the steps were chosen
    seconds: float | None  # estimated wall time of all runs on this server (None: no measured rate)


@router.get("/schedule", response_model=ScheduleOut)
def schedule_of(
    session: ReadSessionDep,
    settings: SettingsDep,
    dataset_id: DbId,
    variants: int = Query(1, ge=1, le=1000, description="number of variants"),
    seeds: int = Query(1, ge=1, le=100, description="number of seeds"),
    steps: int | None = Query(None, ge=1, le=1_000_000),
    epochs: int | None = Query(None, ge=1, le=1000),
    batch_size: int | None = Query(None, ge=2, le=8192),
    model: ModelName | None = Query(None),
) -> ScheduleOut:
    """What a benchmark with these settings will do before it is submitted: the steps every run takes, and
    the estimated time of all runs on this server (the studio shows it under the Run button)."""
    row = session.get(Dataset, dataset_id)
    if row is None:
        raise NotFound("dataset", dataset_id)
    if steps is not None and epochs is not None:  # the benchmark job's own rule
        raise Invalid("steps", "give steps or epochs, not both (epochs are turned into steps)")
    n_train = sum((row.train_counts or {}).values())
    n, batch = run_schedule(steps, epochs, batch_size, n_train, settings.device)
    name = default_classifier(model, settings.device)
    basis = "given" if steps else (f"{epochs} epochs of {n_train} images" if epochs else
                                   f"default: 100 passes over the dataset's {n_train} training images")  # fmt: skip
    runs = variants * seeds
    return ScheduleOut(steps=n, batch_size=batch, runs=runs, model=name, basis=basis,
                       seconds=estimate_seconds(n, runs, settings.device, name))  # fmt: skip


@router.get("/{benchmark_id}", response_model=BenchmarkOut)
def get_benchmark(benchmark_id: DbId, session: ReadSessionDep) -> BenchmarkOut:
    row, runs = load(session, benchmark_id)
    rows = with_longtail(row.info or {}, run_rows(runs))
    out = [
        RunOut(
            **{k: v for k, v in r.items() if k not in ("history", "test_correct")},
            curves=r["history"],
            created_at=run.created_at,
        )
        for r, run in zip(rows, runs, strict=True)
    ]
    status = job_statuses(session, [row.job_id]).get(row.job_id, "unknown")
    return BenchmarkOut(
        **_summary(row, len(runs), status).model_dump(),
        rows=out,
        quality=variant_quality(session, row),
        verdicts=verdicts_of(row, rows),
    )


@router.get("/{benchmark_id}/results.csv", response_class=PlainTextResponse)
def results(benchmark_id: DbId, session: ReadSessionDep) -> Response:
    """``variant,seed,overall_acc,acc_<class>...`` (percent), one line per finished run."""
    row, runs = load(session, benchmark_id)
    text = results_csv(run_rows(runs), (row.info or {}).get("classes", []))
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="benchmark-{benchmark_id}-results.csv"'},
    )


@router.get("/{benchmark_id}/report.html", response_class=HTMLResponse)
def report(benchmark_id: DbId, session: ReadSessionDep, store: StoreDep) -> HTMLResponse:
    """A self-contained HTML report (plotly.js inlined): Table 1, the quality panel of selection variants beside
    their minority accuracy, the images each synthetic variant trained on, per-class bars, curves, confusion
    matrices."""
    row, runs = load(session, benchmark_id)
    if not runs:
        raise HTTPException(status_code=409, detail=f"benchmark {benchmark_id} has no finished runs yet")
    info = row.info or {}
    meta = {"benchmark_id": row.id, "dataset_id": row.dataset_id, "model": info.get("model"), "params": row.params}
    rows = with_longtail(info, run_rows(runs))
    text = render_report(
        rows,
        info.get("classes", []),
        focus_classes(info),
        title=f"Benchmark {row.id}",
        meta=meta,
        quality=variant_quality(session, row),
        verdicts=verdicts_of(row, rows),
        assessments=variant_assessments(session, row),
        groups=groups_of(info) if is_longtail(info) else None,
        samples=variant_samples(session, store, row),
    )
    return HTMLResponse(text)


@router.get("/{benchmark_id}/table.html", response_class=HTMLResponse)
def table(benchmark_id: DbId, session: ReadSessionDep) -> HTMLResponse:
    """Table 1 (mean ± std over seeds per variant, minority columns first) as an HTML ``<table>``; when variants
    come from selections, followed by a second ``<table>``: their quality panel beside their minority accuracy
    (what the studio's Benchmark tab shows under the per-class plot)."""
    row, runs = load(session, benchmark_id)
    if not runs:
        raise HTTPException(status_code=409, detail=f"benchmark {benchmark_id} has no finished runs yet")
    info = row.info or {}
    classes, minority = info.get("classes", []), focus_classes(info)
    rows = with_longtail(info, run_rows(runs))
    text = summary_html(summarize(rows, classes), classes, minority)
    if is_longtail(info) and groups_of(info):  # a long tail: the shot groups and balanced accuracy
        text += f'\n<p class="longtail-note">{html.escape(LONGTAIL_NOTE)}</p>\n' + longtail_html(rows, groups_of(info))
    verdicts = verdicts_of(row, rows)
    if verdicts:
        text += f'\n<p class="verdict-note">{html.escape(VERDICT_NOTE)}</p>\n' + verdicts_html(verdicts)
    assessments = variant_assessments(session, row)
    if assessments:
        text += f'\n<p class="assess-note">{html.escape(ASSESS_NOTE)}</p>\n' + assessments_html(assessments)
    quality = variant_quality(session, row)
    if quality:
        text += "\n" + quality_html(quality, rows, minority)
    return HTMLResponse(text)


@router.get("/{benchmark_id}/figures/{name}.json")
def figure(
    benchmark_id: DbId,
    name: str,
    session: ReadSessionDep,
    variant: str | None = Query(None, description="confusion only: which variant (default: the first)"),
) -> Response:
    """Plotly figure JSON (``data`` + ``layout``) for the UI: per_class, minority_vs_synthetic, curves, confusion."""
    if name not in FIGURES:
        raise HTTPException(status_code=404, detail=f"figure {name!r} not found; choose one of {sorted(FIGURES)}")
    row, runs = load(session, benchmark_id)
    if not runs:
        raise HTTPException(status_code=409, detail=f"benchmark {benchmark_id} has no finished runs yet")
    info = row.info or {}
    kwargs: dict[str, Any] = {}
    if name == "confusion":
        if variant is not None and variant not in {r.variant for r in runs}:
            raise HTTPException(status_code=404, detail=f"variant {variant!r} not found in benchmark {benchmark_id}")
        kwargs["variant"] = variant
    elif variant is not None:
        raise HTTPException(status_code=422, detail="variant: only the confusion figure takes a variant")
    fig = build_figure(name, run_rows(runs), info.get("classes", []), info.get("minority", []), **kwargs)
    return Response(fig.to_json(), media_type="application/json")
