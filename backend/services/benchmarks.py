"""Benchmarks: a benchmark's finished runs as the plain rows ``backend.reports`` consumes."""

from __future__ import annotations

import base64
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.data.longtail import balanced_accuracy, group_accuracy, shot_groups
from backend.db.models import Benchmark, BenchmarkRun, Pool, Selection
from backend.reports.verdict import verdicts
from backend.services import pools as pool_svc
from backend.services import selections as selection_svc
from backend.services.errors import NotFound, NotReady
from backend.store import FileStore


def load(session: Session, benchmark_id: int) -> tuple[Benchmark, list[BenchmarkRun]]:
    """A benchmark and its finished runs in table order: variants as the benchmark listed them, then seeds."""
    row = session.get(Benchmark, benchmark_id)
    if row is None:
        raise NotFound("benchmark", benchmark_id)
    runs = session.scalars(
        select(BenchmarkRun).where(BenchmarkRun.benchmark_id == benchmark_id).order_by(BenchmarkRun.id)
    ).all()
    order = {v: i for i, v in enumerate((row.info or {}).get("variants", []))}
    return row, sorted(runs, key=lambda r: (order.get(r.variant, len(order)), r.seed))


def run_rows(runs: list[BenchmarkRun]) -> list[dict[str, Any]]:
    """Runs as the plain row dicts ``backend.reports`` consumes."""
    return [
        {
            "variant": r.variant,
            "seed": r.seed,
            "overall_acc": r.overall_acc,
            "per_class": r.per_class or {},
            "val_acc": r.val_acc,
            "epochs": r.epochs,
            "best_epoch": (r.info or {}).get("best_epoch"),
            "select_epoch": (r.info or {}).get("select_epoch"),
            "validation": (r.info or {}).get("validation"),
            "n_synthetic": r.n_synthetic,
            "variant_counts": (r.info or {}).get("variant_counts"),
            "history": r.history or [],
            "confusion": r.confusion or [],
            "steps": (r.info or {}).get("steps"),
            "batch_size": (r.info or {}).get("batch_size"),
            "train_balanced": (r.info or {}).get("train_balanced"),
            "under_trained": (r.info or {}).get("under_trained"),
            "test_correct": (r.info or {}).get("test_correct"),
        }
        for r in runs
    ]


def groups_of(info: dict[str, Any]) -> dict[str, list[str]]:
    """The long-tail shot groups of a benchmark's classes, from its imbalanced training counts (benchmarks
    recorded before the counts were stored have none)."""
    counts = info.get("train_counts")
    return shot_groups(counts) if counts else {}


def is_longtail(info: dict[str, Any]) -> bool:
    """A benchmark whose imbalance is a long-tail profile (no single minority: shot groups instead)."""
    return info.get("profile") == "longtail"


def focus_classes(info: dict[str, Any]) -> list[str]:
    """The classes a benchmark's headline and verdicts are about: its named minority, or -- a long tail with
    no single minority -- its few-shot classes (the medium-shot ones when no class is few-shot)."""
    if not is_longtail(info):
        return list(info.get("minority", []))
    groups = groups_of(info)
    return list(groups.get("few") or groups.get("medium") or [])


def with_longtail(info: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with ``balanced_acc`` (mean per-class accuracy) and ``groups`` ({many, medium, few} accuracy,
    percent; a group with no class is absent)."""
    groups = groups_of(info)
    for r in rows:
        r["balanced_acc"] = balanced_accuracy(r["per_class"])
        r["groups"] = group_accuracy(r["per_class"], groups)
    return rows


def verdicts_of(benchmark: Benchmark, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The verdict of each synthetic variant against the strongest classical one (``reports/verdict.py``), on
    the named minority or, for a long tail, on the few-shot classes."""
    info = benchmark.info or {}
    on = focus_classes(info)
    found = verdicts(rows, info.get("classes", []), on, info.get("test_labels"))
    for v in found:
        v["on"] = "few-shot" if groups_of(info).get("few") else "medium-shot" if is_longtail(info) else "minority"
        v["classes"] = on
    return found


def rows_of(session: Session, benchmark_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the benchmark's info, its run rows in table order, each with its long-tail figures)."""
    row, runs = load(session, benchmark_id)
    info = dict(row.info or {})
    return info, with_longtail(info, run_rows(runs))


def variant_quality(session: Session, benchmark: Benchmark) -> dict[str, dict[str, Any]]:
    """The quality panel of each variant made from a selection, by variant name (others are left out):
    ``{"selection_id", "target", "picks": panel | None, "pool": panel | None}`` -- the picks and the whole
    pool, each against the kept real images of the target class (``selection/quality.py``; stored with
    the selection when its job finished, so this is a lookup, not a computation)."""
    out: dict[str, dict[str, Any]] = {}
    for spec in (benchmark.params or {}).get("variants", []):
        if not isinstance(spec, dict) or spec.get("selection_id") is None:
            continue
        sel = session.get(Selection, spec["selection_id"])
        quality = (sel.info or {}).get("quality") if sel is not None else None
        if not quality:
            continue
        target = quality.get("target")
        out[spec["name"]] = {
            "selection_id": sel.id,
            "target": target,
            "picks": quality.get("picks"),
            "pool": (quality.get("pool") or {}).get(target),
        }
    return out


def variant_assessments(session: Session, benchmark: Benchmark) -> dict[str, dict[str, Any]]:
    """The two-sample test of each synthetic variant's pool (``Pool.info["assessment"]``), by variant name;
    a variant from a selection shows the test of its selection's first pool. Untested pools are left out."""
    out: dict[str, dict[str, Any]] = {}
    for spec in (benchmark.params or {}).get("variants", []):
        if not isinstance(spec, dict):
            continue
        pool_id = spec.get("pool_id")
        if pool_id is None and spec.get("selection_id") is not None:
            sel = session.get(Selection, spec["selection_id"])
            pool_id = ((sel.params or {}).get("pool_ids") or [None])[0] if sel is not None else None
        pool = session.get(Pool, pool_id) if pool_id is not None else None
        found = (pool.info or {}).get("assessment") if pool is not None else None
        if found:
            out[spec["name"]] = found
    return out


SAMPLES_PER_VARIANT = 8  # thumbnails of each synthetic variant in report.html
IMAGE_TYPES = {".webp": "image/webp", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def variant_samples(
    session: Session, store: FileStore, benchmark: Benchmark, per: int = SAMPLES_PER_VARIANT
) -> dict[str, list[str]]:
    """The first ``per`` images each synthetic variant trained on (a selection's kept picks in rank order, or
    the pool's first images), as ``data:`` URIs of their review files, by variant name: a
    report that says "sd_al helps" shows what sd_al was. Classical variants (real images only) and images
    whose file is gone are left out."""
    out: dict[str, list[str]] = {}
    for spec in (benchmark.params or {}).get("variants", []):
        if not isinstance(spec, dict):
            continue
        try:
            if spec.get("selection_id") is not None:
                rows = selection_svc.selected_images(session, spec["selection_id"])[
                    : min(per, spec.get("count") or per)
                ]
            elif spec.get("pool_id") is not None:
                rows = pool_svc.first_images(session, spec["pool_id"], min(per, int(spec.get("count") or per)))
            else:
                continue
        except (NotFound, NotReady):  # deleted since the benchmark ran
            continue
        uris = []
        for row in rows:
            rel = row.review_file or row.file  # the small review WebP; an imported image may have only its file
            path = store.path(rel) if rel else None
            if path is not None and path.is_file():
                mime = IMAGE_TYPES.get(path.suffix.lower(), "image/png")
                uris.append(f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii"))
        if uris:
            out[str(spec["name"])] = uris
    return out
