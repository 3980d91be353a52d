"""Datasets: uploads, decoded caches of registered datasets, imbalances, variants and their exports."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from backend.core.hooks import NO_HOOKS, Hooks
from backend.core.tmpdirs import make_tmp_dir
from backend.data.cache import DecodedDataset, load_cache
from backend.data.export import iter_zip
from backend.data.imbalance import ImbalanceResult, apply_imbalance
from backend.data.safezip import extract_zip
from backend.data.variants import VARIANTS, Variant
from backend.data.variants import build_variant as build_data_variant
from backend.db.models import Dataset
from backend.services.errors import Invalid, NotFound, NotReady
from backend.store import FileStore

UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


def check_upload(workspace_dir: Path, upload_id: str) -> None:
    """Refuse (``ValueError`` naming it) an upload id this workspace holds no archive or extraction for, so a
    job that would read it is refused at submit instead of failing after it was queued."""
    uploads = Path(workspace_dir) / "uploads"
    if not ((uploads / f"{upload_id}.zip").is_file() or (uploads / upload_id).is_dir()):
        raise ValueError(f"no upload {upload_id} in this workspace; upload the zip with POST /api/datasets/upload")


def upload_path(store: FileStore, upload_id: str) -> Path:
    """Where ``POST /api/datasets/upload`` stores an archive."""
    return store.path(f"uploads/{upload_id}.zip")


def open_row(store: FileStore, row: Dataset) -> DecodedDataset:
    """The decoded (memory-mapped) cache of a dataset row."""
    path = store.path(f"cache/{row.cache_key}")
    if not (path / "meta.json").exists():
        raise NotReady(f"the decoded cache of dataset {row.id} is missing; prepare the dataset again")
    return load_cache(path)


def get_row(session: Session, dataset_id: int) -> Dataset:
    row = session.get(Dataset, dataset_id)
    if row is None:
        raise NotFound("dataset", dataset_id)
    return row


def open_dataset(session: Session, store: FileStore, dataset_id: int) -> DecodedDataset:
    """The decoded dataset ``dataset_id``."""
    return open_row(store, get_row(session, dataset_id))


def imbalance_of(ds: DecodedDataset, spec: Any, field: str = "imbalance") -> ImbalanceResult:
    """``spec`` (an ImbalanceSpec or its dict) applied to ``ds``'s training labels."""
    try:
        return apply_imbalance(ds.train_y, ds.classes, spec)
    except ValueError as exc:
        raise Invalid(field, str(exc)) from exc


def build_variant(ds: DecodedDataset, variant: str, imbalance: Any, field: str = "imbalance") -> Variant:
    """A classical variant of ``ds`` (see ``backend.data.variants``)."""
    if variant not in VARIANTS:
        raise Invalid("variant", f"unknown variant {variant!r}; choose one of {list(VARIANTS)}")
    imb = None if imbalance is None else imbalance_of(ds, imbalance, field)
    try:
        return build_data_variant(variant, ds, imb)
    except ValueError as exc:
        raise Invalid(field, str(exc)) from exc


@dataclass(frozen=True)
class MinorityImages:
    """The real images an imbalance keeps of its minority class(es)."""

    images: np.ndarray  # uint8 (N, H, W, 3)
    index: np.ndarray  # their indices in the training set
    classes: list[int]  # the minority class indices (in ``ds.classes``)


def minority_images(
    ds: DecodedDataset, spec: Any, field: str = "imbalance", first_only: bool = False
) -> MinorityImages:
    """The kept images of the minority classes of ``spec`` (only the first class with ``first_only``)."""
    imb = imbalance_of(ds, spec, field)
    classes = list(imb.minority_classes[:1] if first_only else imb.minority_classes)
    if not classes:
        raise Invalid(field, "the imbalance names no minority class")
    idx = imb.kept_idx[np.isin(ds.train_y[imb.kept_idx], classes)]
    if len(idx) == 0:
        names = ", ".join(repr(ds.classes[c]) for c in classes)
        raise Invalid(field, f"the imbalance keeps no image of {names}")
    return MinorityImages(np.asarray(ds.train_x[idx]), idx, classes)


def imbalance_preview(ds: DecodedDataset, spec: Any) -> dict[str, Any]:
    """Per-class training counts before and after ``spec``."""
    result = imbalance_of(ds, spec)
    after = result.counts(ds.train_y, len(ds.classes))
    return {
        "before": ds.train_counts(),
        "after": {c: int(n) for c, n in zip(ds.classes, after, strict=True)},
        "removed": len(result.removed_idx),
        "minority": [ds.classes[i] for i in result.minority_classes],
    }


def extract_upload(store: FileStore, upload_id: str, hooks: Hooks = NO_HOOKS) -> tuple[Path, list[tuple[str, str]]]:
    """Extract an uploaded zip once into ``uploads/<id>/`` (atomically); returns the dir and skipped entries.

    The refused entries are kept beside it in ``uploads/<id>.extract.json`` so a second job on the same
    upload reports them too.
    """
    archive = upload_path(store, upload_id)
    dest = store.path(f"uploads/{upload_id}")
    report = f"uploads/{upload_id}.extract.json"
    if dest.is_dir() and store.exists(report):
        return dest, [tuple(s) for s in store.read_json(report)["skipped"]]
    if not archive.exists():
        raise NotFound("upload", upload_id)
    shutil.rmtree(dest, ignore_errors=True)  # a crash between rename and report: extract again
    tmp = make_tmp_dir(store.path("uploads"), upload_id)  # named for its writer: a kill leaves nothing for long
    try:
        hooks.progress(0.0, "extracting the archive")
        result = extract_zip(archive, tmp)
        tmp.rename(dest)
    except ValueError as exc:
        raise Invalid("upload_id", f"upload {upload_id}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    store.write_json(report, {"skipped": [list(s) for s in result.skipped], "files": len(result.extracted)})
    return dest, result.skipped


def export_variant(
    session: Session, store: FileStore, dataset_id: int, variant: str, imbalance: dict | None, include_test: bool
) -> tuple[str, Iterator[bytes]]:
    """(file name, zip byte stream) of a variant; everything that can fail is checked before the stream."""
    row = get_row(session, dataset_id)
    if imbalance is None and variant != "full":
        raise Invalid("imbalance", f"variant {variant!r} needs an imbalance spec")
    ds = open_row(store, row)
    v = build_variant(ds, variant, imbalance)
    test = (ds.test_x, ds.test_y) if include_test else None
    return f"{row.name}-{variant}.zip", iter_zip(v, ds.classes, test=test)


def discard_extraction(store: FileStore, upload_id: str) -> None:
    """Remove the extracted files of an upload (the archive stays): a job that failed on them leaves
    nothing behind, and the next job on the upload extracts it again."""
    store.path(f"uploads/{upload_id}.extract.json").unlink(missing_ok=True)
    shutil.rmtree(store.path(f"uploads/{upload_id}"), ignore_errors=True)
