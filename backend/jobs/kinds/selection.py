"""Job kinds ``import_pool`` (images made elsewhere -> a pool) and ``select`` (active-learning selection)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from sqlalchemy import select as sql_select
from sqlalchemy.orm import Session

from backend.config import PathNotAllowed
from backend.data.images import ImageDecodeError, decode_image, is_image_name
from backend.data.imbalance import ImbalanceSpec, apply_imbalance
from backend.data.safezip import extract_zip
from backend.db.models import Pool, PoolImage, Selection, SelectionPick
from backend.jobs.context import JobContext
from backend.jobs.errors import JobError, JobInterrupted
from backend.jobs.kinds.datasets import UPLOAD_ID, load_dataset, upload_path
from backend.jobs.pool_store import PoolWriter, create_pool, existing_indices, pool_for_job
from backend.jobs.registry import job_kind
from backend.selection.review import DEFAULT_NEAR_COPY_THRESHOLD
from backend.selection.scoring import NpyRows

IMPORT_CHUNK = 256  # images per committed chunk of import_pool
MAX_SKIPPED_LISTED = 200


# -- import_pool ------------------------------------------------------------------------------------
class ImportPoolParams(BaseModel):
    """Exactly one of ``path`` (a folder under the allowed directories) or ``upload_id`` (a zip uploaded
    with POST /api/datasets/upload)."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(None, max_length=4096)
    upload_id: str | None = None
    name: str | None = Field(None, min_length=1, max_length=255)
    image_size: int | None = Field(None, ge=8, le=1024)  # square side to resize to; default: keep each size

    @field_validator("upload_id")
    @classmethod
    def _check_upload(cls, value: str | None) -> str | None:
        if value is not None and not UPLOAD_ID.match(value):
            raise ValueError("upload_id must be the id returned by POST /api/datasets/upload")
        return value

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        settings = (info.context or {}).get("settings")
        if value and settings is not None:
            settings.is_allowed(value)  # PathNotAllowed is a ValueError naming --allow-dir
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ImportPoolParams:
        if (self.path is None) == (self.upload_id is None):
            raise ValueError("give exactly one of path or upload_id")
        return self


def _image_files(root: Path) -> list[Path]:
    """Every image file under ``root`` (recursively), sorted by relative path: a stable index order."""
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and is_image_name(p.name)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _import_root(ctx: JobContext, params: ImportPoolParams) -> tuple[Path, list[tuple[str, str]]]:
    if params.path is not None:
        try:
            root = ctx.settings.is_allowed(params.path)
        except PathNotAllowed as exc:
            raise JobError(str(exc)) from exc
        if not root.is_dir():
            raise JobError(f"path {params.path!r} is not a directory")
        return root, []
    archive = upload_path(ctx.store, params.upload_id or "")
    if not archive.exists():
        raise JobError(f"upload {params.upload_id} not found; upload the zip with POST /api/datasets/upload first")
    dest = ctx.store.path(f"pools/imports/job_{ctx.job_id}")
    shutil.rmtree(dest, ignore_errors=True)  # a resumed attempt extracts again: same files, same order
    ctx.progress(0.0, "extracting the archive")
    try:
        result = extract_zip(archive, dest)
    except ValueError as exc:
        raise JobError(f"upload {params.upload_id}: {exc}") from exc
    return dest, [tuple(s) for s in result.skipped]


@job_kind("import_pool", ImportPoolParams)
def import_pool(ctx: JobContext, params: ImportPoolParams) -> dict[str, Any]:
    """Turn a folder or uploaded zip of images made elsewhere into a pool (source_path kept per image)."""
    root, skipped = _import_root(ctx, params)
    try:
        files = _image_files(root)
        if not files:
            raise JobError("no image files found (png, jpg, jpeg, webp, bmp, ...)")
        with ctx.session() as session:
            pool = pool_for_job(session, ctx.job_id) or create_pool(
                session,
                name=params.name or (Path(params.path).name if params.path else f"upload {params.upload_id}"),
                kind="imported",
                job_id=ctx.job_id,
                params=params.model_dump(mode="json"),
            )
            pool_id = pool.id
            done = existing_indices(session, pool_id)
        size = (params.image_size, params.image_size) if params.image_size else None
        todo = [i for i in range(len(files)) if i not in done]
        with PoolWriter(ctx, pool_id) as writer:
            for c in range(0, len(todo), IMPORT_CHUNK):
                for i in todo[c : c + IMPORT_CHUNK]:
                    rel = files[i].relative_to(root).as_posix()
                    try:
                        image = decode_image(files[i], size=size)
                    except ImageDecodeError as exc:
                        skipped.append((rel, str(exc)))
                        continue
                    writer.add(i, image, None, {"source_path": rel, "import_job_id": ctx.job_id, "index": i})
                writer.flush()
                ctx.save_checkpoint({"pool_id": pool_id})
                ctx.progress(min(1.0, (c + IMPORT_CHUNK) / max(len(todo), 1)), f"imported {len(done) + c} files")
                ctx.raise_if_stopped()
        with ctx.session() as session:
            pool = session.get(Pool, pool_id)
            count = pool.count
            pool.info = {**(pool.info or {}), "skipped_count": len(skipped), "skipped": skipped[:MAX_SKIPPED_LISTED]}
    finally:
        if params.upload_id is not None:
            shutil.rmtree(root, ignore_errors=True)
    if skipped:
        ctx.log(f"skipped {len(skipped)} files: " + ", ".join(s[0] for s in skipped[:20]), "warning")
    return {
        "pool_id": pool_id,
        "count": count,
        "skipped_count": len(skipped),
        "skipped": [list(s) for s in skipped[:MAX_SKIPPED_LISTED]],
    }


# -- select -----------------------------------------------------------------------------------------
class SelectParams(BaseModel):
    """Params of ``select``; the loop's knobs are documented on ``backend.selection.loop.SelectionConfig``."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: int
    imbalance: ImbalanceSpec
    pool_ids: list[int] = Field(min_length=1, max_length=100)
    target_class: str | None = None  # the class picks are labelled as; default: the spec's one minority class
    budget: int = Field(4950, ge=1, le=1_000_000)
    per_round: int = Field(50, ge=1, le=100_000)
    acquisition: Literal[
        "max_entropy", "bald", "variation_ratios", "margin", "target_prob", "random", "validity_then_bald"
    ] = "validity_then_bald"
    mc_samples: int = Field(20, ge=1, le=1000)
    model: Literal["small", "resnet18_cifar"] = "small"
    epochs: int = Field(5, ge=1, le=1000)
    batch_size: int = Field(256, ge=1, le=8192)
    lr: float = Field(0.1, gt=0, le=10)
    dropout: float = Field(0.5, gt=0, lt=1)
    loss: Literal["ce", "class_weighted", "logit_adjusted"] = "class_weighted"
    seed: int = 0
    threshold: float = Field(0.5, ge=0, le=1)
    near_copy_threshold: float = Field(DEFAULT_NEAR_COPY_THRESHOLD, ge=0, le=2)

    @model_validator(mode="after")
    def _check(self) -> SelectParams:
        if self.per_round > self.budget:
            raise ValueError("per_round must not exceed budget")
        if len(set(self.pool_ids)) != len(self.pool_ids):
            raise ValueError("pool_ids lists a pool twice")
        if self.target_class is None and len(self.imbalance.minority_names) != 1:
            raise ValueError("target_class is required unless the imbalance names exactly one minority class")
        return self


def _pool_rows(session: Session, pool_ids: list[int]) -> list[PoolImage]:
    for pid in pool_ids:
        if session.get(Pool, pid) is None:
            raise JobError(f"pool {pid} not found")
    rows = session.scalars(
        sql_select(PoolImage).where(PoolImage.pool_id.in_(pool_ids)).order_by(PoolImage.pool_id, PoolImage.idx)
    ).all()
    order = {pid: i for i, pid in enumerate(pool_ids)}
    return sorted(rows, key=lambda r: (order[r.pool_id], r.idx))


def _decode_pool(ctx: JobContext, files: list[str], size: tuple[int, int], rel: str) -> NpyRows:
    """Decode the candidates once per job into ``rel`` (a uint8 .npy), then stream it with NpyRows."""
    path = ctx.store.path(rel)
    if path.exists():
        rows = NpyRows(path)
        if rows.shape == (len(files), *size, 3):
            return rows
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    header = {"descr": "|u1", "fortran_order": False, "shape": (len(files), *size, 3)}
    # Written row by row through a plain file (not a memmap): memory stays at one image whatever the pool.
    with open(tmp, "wb") as fh:
        np.lib.format.write_array_header_2_0(fh, header)
        for i, f in enumerate(files):
            try:
                fh.write(np.ascontiguousarray(decode_image(ctx.store.path(f), size=size)).tobytes())
            except (ImageDecodeError, OSError) as exc:
                raise JobError(f"pool image file {f} cannot be read: {exc}") from exc
            if i % 500 == 0:
                ctx.progress(0.0, f"decoding candidates {i}/{len(files)}")
                ctx.raise_if_stopped()
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)  # a half-written decode is never mistaken for a finished one
    return NpyRows(path)


def _store_picks(session: Session, selection_id: int, picks: list[dict[str, Any]]) -> None:
    """Insert picks not yet stored (idempotent by image id) and refresh the final fields of stored ones.

    Rows of a round that crashed before its checkpoint and then picked differently on the re-run (CUDA
    is not bitwise repeatable) are deleted, so the table always equals the checkpointed state.
    """
    wanted = {p["image_id"] for p in picks}
    stored = {}
    for row in session.scalars(sql_select(SelectionPick).where(SelectionPick.selection_id == selection_id)):
        if row.image_id in wanted:
            stored[row.image_id] = row
        else:
            session.delete(row)
    session.flush()
    for p in picks:
        row = stored.get(p["image_id"])
        if row is None:
            row = SelectionPick(
                selection_id=selection_id,
                image_id=p["image_id"],
                rank=p["rank"],
                round=p["round"],
                score=p["score"],
                minority_prob=p["minority_prob"],
                review="pending",
                meta={"pool_index": p["index"]},
            )
            session.add(row)
        if "near_copy" in p:
            row.near_copy = bool(p["near_copy"])
            row.nn_distance = p["nn_distance"]


@job_kind("select", SelectParams)
def select_job(ctx: JobContext, params: SelectParams) -> dict[str, Any]:
    """Active learning: pick ``budget`` pool images for the minority class, round by round."""
    from backend.selection.loop import SelectionConfig, config_dict, run_selection

    ds = load_dataset(ctx, params.dataset_id)
    target = params.target_class or params.imbalance.minority_names[0]
    if target not in ds.classes:
        raise JobError(f"target_class {target!r} is not a class of dataset {params.dataset_id}: {ds.classes}")
    try:
        imb = apply_imbalance(ds.train_y, ds.classes, params.imbalance)
    except ValueError as exc:
        raise JobError(f"imbalance: {exc}") from exc
    kept = imb.kept_idx
    with ctx.session() as session:
        rows = _pool_rows(session, params.pool_ids)
        pool_ids = [r.id for r in rows]
        files = [r.file for r in rows]
        sel = session.scalar(sql_select(Selection).where(Selection.job_id == ctx.job_id))
        if sel is None:
            sel = Selection(dataset_id=params.dataset_id, job_id=ctx.job_id, params=params.model_dump(mode="json"))
            session.add(sel)
            session.flush()
        selection_id = sel.id
    if params.budget > len(pool_ids):
        raise JobError(f"budget {params.budget} exceeds the {len(pool_ids)} images in pools {params.pool_ids}")
    pool_x = _decode_pool(ctx, files, ds.image_size, f"selections/{selection_id}/pool.npy")
    cfg = SelectionConfig(
        budget=params.budget,
        per_round=params.per_round,
        acquisition=params.acquisition,
        threshold=params.threshold,
        mc_samples=params.mc_samples,
        model=params.model,
        dropout=params.dropout,
        epochs=params.epochs,
        batch_size=params.batch_size,
        lr=params.lr,
        loss=params.loss,
        seed=params.seed,
        device=ctx.settings.device,
        near_copy_threshold=params.near_copy_threshold,
    )

    def on_round_end(r: int, state: dict[str, Any]) -> None:
        # Rows first, then the checkpoint: a crash in between re-runs the round and re-inserts nothing.
        with ctx.session() as session:
            _store_picks(session, selection_id, state["picks"])
            sel = session.get(Selection, selection_id)
            sel.rounds = state["rounds"]
            if state.get("done"):
                sel.feature_map = state["feature_map"]
                sel.info = {**(sel.info or {}), "reserve": state["reserve"]}
        ctx.save_checkpoint(
            {"selection_id": selection_id, "state": {k: v for k, v in state.items() if k != "feature_map"}}
        )
        ctx.log(f"round {r + 1}: {len(state['picks'])} picks")

    real_x = np.asarray(ds.train_x[kept])
    real_y = np.asarray(ds.train_y[kept], dtype=np.int64)
    try:
        result = run_selection(
            real_x,
            real_y,
            ds.classes.index(target),
            pool_x,
            pool_ids,
            cfg,
            progress=ctx.progress,
            should_stop=ctx.should_stop,
            state=ctx.checkpoint.get("state"),
            on_round_end=on_round_end,
            class_names=ds.classes,
        )
    except ValueError as exc:
        raise JobError(str(exc)) from exc
    if result.stopped:
        ctx.raise_if_stopped()
        raise JobInterrupted()
    with ctx.session() as session:
        sel = session.get(Selection, selection_id)
        sel.info = {
            **(sel.info or {}),
            "target_class": target,
            "config": config_dict(cfg),
            "real_counts": {c: int((real_y == i).sum()) for i, c in enumerate(ds.classes)},
            "pool_size": len(pool_ids),
        }
    shutil.rmtree(ctx.store.path(f"selections/{selection_id}"), ignore_errors=True)  # the decoded pool copy
    return {"selection_id": selection_id, "picks": len(result.picks)}


def selected_image_ids(session: Session, selection_id: int) -> list[int]:
    """Image ids a dataset variant uses from a selection, by rank: picks a reviewer accepted, or left
    pending without a near-copy flag (flagged pending picks need an explicit accept)."""
    picks = session.execute(
        sql_select(SelectionPick.image_id, SelectionPick.review, SelectionPick.near_copy)
        .where(SelectionPick.selection_id == selection_id)
        .order_by(SelectionPick.rank)
    ).all()
    return [p.image_id for p in picks if p.review == "accepted" or (p.review == "pending" and not p.near_copy)]
