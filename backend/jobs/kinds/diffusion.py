"""Job kinds `train_diffusion` (a class-conditional diffusion model trained here) and `generate_diffusion`.

Params extend the core's own settings (``backend.generation.ddpm_config``): each setting's default,
limits and description live there once. Torch and diffusers are imported inside the handlers, so
registering these kinds (the API process does) stays cheap. Files: see ``backend.services.diffusions``.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ConfigDict, Field

from backend.config import PathNotAllowed
from backend.core.hooks import Hooks
from backend.core.types import DbId
from backend.data.sources import find_dataset_root
from backend.db.models import Diffusion
from backend.generation.ddpm_config import DiffusionConfig, SampleConfig
from backend.generation.imagefiles import encode_png
from backend.generation.prompts import image_seed
from backend.jobs.context import JobContext
from backend.jobs.errors import JobError
from backend.jobs.kinds.gan import SOURCE_FORMS, DatasetSource, PathSource, Source
from backend.jobs.pool_shards import PoolItem, fill_pool
from backend.jobs.ray_executor import SHARDS_DEFAULT, SHARDS_HELP
from backend.jobs.registry import job_kind
from backend.services.datasets import extract_upload, imbalance_of, open_dataset
from backend.services.diffusions import (
    get_diffusion,
    model_path,
    prune_before,
    samples_path,
    sampling_model,
    state_path,
)
from backend.services.errors import Invalid
from backend.services.pools import dropped_if_left_empty, pool_for_job
from backend.services.rows import row_for_job

MAX_CLASSES = 1000  # class folders a folder source may have (one embedding each)
MAX_SKIPPED_LISTED = 200  # file names kept in the model's info; the count is always exact


# ------------------------------------------------------------------------------------------------ params


class TrainDiffusionParams(DiffusionConfig):
    """The model's own settings (``DiffusionConfig``: defaults, limits, descriptions) plus its training images."""

    source: Source = Field(
        description=f"{SOURCE_FORMS}; a dataset trains on all classes of its imbalanced training set, a folder "
        "or upload on its <class>/ subfolders (their names are the model's classes)"
    )
    name: str | None = Field(None, max_length=255)

    def config(self) -> DiffusionConfig:
        return DiffusionConfig(**self.model_dump(include=set(DiffusionConfig.model_fields)))


class GenerateDiffusionParams(SampleConfig):
    """The sampler's own settings (``SampleConfig``) plus which model, class and pool."""

    # `class` is a Python keyword: the field is class_name, read and written as "class".
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    diffusion_id: DbId
    class_name: str = Field(alias="class", min_length=1, max_length=255, description="a class name of the model")
    count: int = Field(100, ge=1, le=1_000_000, description="images in the pool")
    output_size: int | None = Field(None, ge=8, le=1024, description="default: the dataset's size, else the model's")
    review_size: int = Field(256, ge=32, le=1024)
    chunk_size: int = Field(64, ge=1, le=10_000, description="images committed per checkpoint")
    name: str | None = Field(None, max_length=255, description="pool name")
    shards: int | None = Field(SHARDS_DEFAULT, ge=1, le=1024, description=SHARDS_HELP)

    def sample_config(self) -> SampleConfig:
        return SampleConfig(**self.model_dump(include=set(SampleConfig.model_fields)))


# ---------------------------------------------------------------------------------------- training data


def _class_folders(ctx: JobContext, folder: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Images, labels and class names from ``<class>/`` subfolders (decoded square at ``size``), and skips."""
    root = find_dataset_root(folder)
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    if not dirs:
        raise Invalid("source", f"{root.name}/ has no <class>/ subfolders; put each class's images in its own folder")
    if len(dirs) > MAX_CLASSES:
        raise Invalid("source", f"{len(dirs)} class folders; at most {MAX_CLASSES} are supported")
    from backend.generation.gan_images import load_image_folder

    images, labels, skipped = [], [], []
    for c, d in enumerate(dirs):
        loaded = load_image_folder(d, size, hooks=ctx.hooks.scaled(c / len(dirs), (c + 1) / len(dirs)))
        images.append(loaded.images)
        labels.append(np.full(len(loaded.images), c, np.int64))
        skipped += [f"{d.name}/{s['path']}: {s['reason']}" for s in loaded.skipped]
    empty = [d.name for d, x in zip(dirs, images, strict=True) if len(x) == 0]
    if empty:
        raise Invalid("source", f"class folders without a readable image: {empty}")
    return np.concatenate(images), np.concatenate(labels), [d.name for d in dirs], skipped


def _training_data(
    ctx: JobContext, params: TrainDiffusionParams
) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, Any]]:
    """(uint8 NHWC images, labels, class names, JSON summary of the source)."""
    source = params.source
    if isinstance(source, DatasetSource):
        with ctx.session() as s:
            ds = open_dataset(s, ctx.store, source.dataset_id)
        imb = imbalance_of(ds, source.imbalance, "source.imbalance")
        idx = np.sort(imb.kept_idx)
        labels = np.asarray(ds.train_y[idx], dtype=np.int64)
        info = {
            "kind": "dataset",
            "dataset_id": source.dataset_id,
            "imbalance": source.imbalance.model_dump(mode="json"),
            "dataset_image_size": ds.image_size[0],
            "counts": dict(zip(ds.classes, np.bincount(labels, minlength=len(ds.classes)).tolist(), strict=True)),
        }
        return np.asarray(ds.train_x[idx]), labels, list(ds.classes), info
    skipped: list[str] = []
    if isinstance(source, PathSource):
        try:
            folder = ctx.settings.is_allowed(source.path)
        except PathNotAllowed as exc:
            raise JobError(f"source.path: {exc}") from exc
        if not Path(folder).is_dir():
            raise Invalid("source.path", f"{source.path!r} is not a directory")
        info: dict[str, Any] = {"kind": "path", "path": str(folder)}
    else:
        folder, extract_skips = extract_upload(ctx.store, source.upload_id, ctx.hooks)
        skipped = [f"{name}: {why}" for name, why in extract_skips]
        info = {"kind": "upload", "upload_id": source.upload_id}
    ctx.progress(0.0, "decoding source images")
    images, labels, classes, decode_skips = _class_folders(ctx, Path(folder), params.image_size)
    skipped += decode_skips
    counts = np.bincount(labels, minlength=len(classes)).tolist()
    info |= {"counts": dict(zip(classes, counts, strict=True)), "skipped_count": len(skipped)}
    return images, labels, classes, info | {"skipped": skipped[:MAX_SKIPPED_LISTED]}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON (and PostgreSQL) has no NaN


def _save_model_folder(ctx: JobContext, model: Any, rel: str) -> None:
    """Write the diffusers folder next to its final place, then rename: a crash never leaves half a model."""
    final = ctx.store.path(rel)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp)
    shutil.rmtree(final, ignore_errors=True)  # an epoch redone after a crash replaces its own folder
    os.replace(tmp, final)


# -------------------------------------------------------------------------------------- train_diffusion


@job_kind("train_diffusion", TrainDiffusionParams)
def train_diffusion(ctx: JobContext, params: TrainDiffusionParams) -> dict[str, Any]:
    """Train a class-conditional diffusion model, saving a model and a per-class grid every epoch; resumable."""
    from backend.generation.ddpm import DiffusionTrainer
    from backend.generation.ddpm_sample import class_grid

    # The training data first: the model's row is listed from its creation on, and the studio reads the class
    # list of a model when it is chosen, so a row must never be seen without its classes (an empty list there
    # left the Class field empty for good).
    images, labels, classes, source_info = _training_data(ctx, params)
    source_info["images"] = len(images)
    with ctx.session() as s:
        diffusion_id = row_for_job(
            s,
            Diffusion,
            ctx.job_id,
            lambda: Diffusion(
                name=params.name or f"diffusion {params.image_size}px",
                job_id=ctx.job_id,
                params=params.model_dump(mode="json"),
                classes=classes,
                epochs_done=0,
                history=[],
                info={"source": source_info, "device": ctx.settings.device},
            ),
        ).id
    try:
        trainer = DiffusionTrainer(params.config(), images, labels, classes, ctx.settings.device)
    except ValueError as exc:
        raise JobError(str(exc)) from exc
    del images  # the trainer holds its own (resized, on-device) copy

    start = int(ctx.checkpoint.get("epoch", 0))
    if start:
        rel = state_path(diffusion_id, start)
        if not ctx.store.exists(rel):
            raise JobError(f"checkpoint {rel} of diffusion {diffusion_id} is missing; cannot resume")
        trainer.restore(ctx.store.path(rel).read_bytes())
        ctx.log(f"diffusion {diffusion_id}: resuming after epoch {start}")
    with ctx.session() as s:
        row = s.get(Diffusion, diffusion_id)
        row.classes = classes
        row.info = {**(row.info or {}), "source": source_info, "device": ctx.settings.device}
        row.info["block_channels"] = list(trainer.config.block_channels)

    epochs = params.epochs
    for epoch in range(trainer.epoch + 1, epochs + 1):
        # A stop drops the epoch in flight; the last finished one is kept and resumed from.
        t0 = time.monotonic()
        stats = trainer.train_epoch(ctx.hooks.scaled((epoch - 1) / epochs, epoch / epochs, f"epoch {epoch}/{epochs}: "))
        rate = trainer.steps_per_epoch * trainer.batch_size / max(time.monotonic() - t0, 1e-9)
        # Files first, then the row, then the checkpoint: a crash in between redoes this epoch.
        ctx.store.write_bytes(state_path(diffusion_id, epoch), trainer.state_bytes())
        _save_model_folder(ctx, trainer.model(), model_path(diffusion_id, epoch))
        # One row per class (the first 16), grid_per_class EMA samples each, from fixed noise.
        grid = class_grid(trainer.model()) if trainer.config.grid_per_class else None
        if grid is not None:
            ctx.store.write_bytes(samples_path(diffusion_id, epoch), encode_png(grid))
        with ctx.session() as s:
            row = s.get(Diffusion, diffusion_id)
            row.epochs_done = epoch
            row.history = [{"epoch": h.epoch, "loss": _finite(h.loss), "steps": h.steps} for h in trainer.history]
        ctx.save_checkpoint({"epoch": epoch, "diffusion_id": diffusion_id})
        prune_before(ctx.store, diffusion_id, epoch)  # only the newest epoch must be resumable and sampled
        ctx.log(f"epoch {epoch}/{epochs}: loss {stats.loss:.4f}, {rate:.1f} images/s")
    return {
        "diffusion_id": diffusion_id,
        "epochs_done": trainer.epoch,
        "model_path": model_path(diffusion_id, trainer.epoch),
    }


# ----------------------------------------------------------------------------------- generate_diffusion


def _start_images(ctx: JobContext, row: Diffusion, class_name: str, size: int) -> tuple[np.ndarray, list[int] | None]:
    """The real training images of ``class_name`` for SDEdit, and their dataset indices (dataset sources)."""
    source = (row.info or {}).get("source", {})
    if source.get("kind") == "dataset":
        with ctx.session() as s:
            ds = open_dataset(s, ctx.store, source["dataset_id"])
        imb = imbalance_of(ds, source["imbalance"], "source.imbalance")
        c = ds.classes.index(class_name)
        idx = np.sort(imb.kept_idx[np.asarray(ds.train_y[imb.kept_idx]) == c])
        images = np.asarray(ds.train_x[idx])
        index: list[int] | None = idx.tolist()
    elif source.get("kind") == "path":
        from backend.generation.gan_images import load_image_folder

        folder = find_dataset_root(Path(source["path"])) / class_name
        images, index = load_image_folder(folder, size, hooks=ctx.hooks.scaled(0.0, 0.0)).images, None
    else:
        raise Invalid("strength", "starting from real images needs a model trained on a dataset or folder source")
    if len(images) == 0:
        raise Invalid("strength", f"diffusion {row.id} has no real image of class {class_name!r} to start from")
    return images, index


@dataclass(frozen=True)
class DiffusionWork:
    """What a shard needs to sample image i of the job (picklable: it travels to Ray actors)."""

    model_dir: str  # the saved model folder in the workspace
    model_files: dict[str, bytes] | None  # the folder's files, for Ray hosts that do not share the workspace
    label: int
    config: SampleConfig
    size: int  # the model's side
    output_size: int
    starts: np.ndarray | None  # real images for SDEdit (strength < 1)
    start_index: list[int] | None  # their dataset indices (provenance)
    base: dict[str, Any]


def diffusion_worker(work: DiffusionWork, hooks: Hooks, device: str) -> Callable[[list[int]], Iterator[list[PoolItem]]]:
    """Load the model once (per process or Ray actor); the worker samples a piece of indices. Noise depends
    only on (seed, index), so pieces, shards and OOM halving leave every image unchanged."""
    from backend.generation.ddpm import fit_square, load_model
    from backend.generation.ddpm_sample import generate

    folder = Path(work.model_dir)
    if work.model_files is not None and not folder.is_dir():
        folder = Path(tempfile.mkdtemp(prefix="rebalance-diffusion-"))
        for rel, data in work.model_files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
    model = load_model(folder, device)
    batch = {"size": work.config.batch_size}  # shrinks for good after a CUDA OOM

    def smaller(size: int, message: str) -> None:
        batch["size"] = size
        hooks.log(message)

    quiet = Hooks(should_stop=hooks.should_stop, log=hooks.log)  # progress: fill_pool's, summed over shards

    def run(piece: list[int]) -> Iterator[list[PoolItem]]:
        try:
            review = generate(
                model,
                [work.label] * len(piece),
                piece,
                work.config.model_copy(update={"batch_size": batch["size"]}),
                start_images=work.starts,
                hooks=quiet,
                on_batch_size=smaller,
            )
        except ValueError as exc:
            raise JobError(str(exc)) from exc
        if work.output_size == work.size:
            small = review
        else:
            small = fit_square(review, work.output_size).permute(0, 2, 3, 1).numpy()
        items = []
        for j, idx in enumerate(piece):
            meta = work.base | {"index": idx, "seed": image_seed(work.config.seed, idx)}
            if work.start_index is not None:
                meta["init_image_index"] = work.start_index[idx % len(work.start_index)]
            items.append(PoolItem(idx, meta, small[j], review[j]))
        yield items

    return run


@job_kind("generate_diffusion", GenerateDiffusionParams)
def generate_diffusion(ctx: JobContext, params: GenerateDiffusionParams) -> dict[str, Any]:
    """Sample one class of a trained diffusion model into a candidate pool (chunked, resumable, per-index
    seeds; sharded over Ray actors with ``--ray``)."""
    from backend.generation.ddpm import load_model

    with ctx.session() as s:
        row = get_diffusion(s, params.diffusion_id)
        s.expunge(row)
    rel = sampling_model(ctx.store, row, params.class_name)
    model = load_model(ctx.store.path(rel), "cpu")  # its metadata; the workers load their own copy
    config = params.sample_config()
    source = (row.info or {}).get("source", {})
    size = model.config.image_size
    output_size = params.output_size or source.get("dataset_image_size") or size
    starts = start_index = None
    if config.strength < 1.0:
        starts, start_index = _start_images(ctx, row, params.class_name, size)
    label = model.class_index(params.class_name)

    with ctx.session() as s:
        pool_id, done = pool_for_job(
            s,
            ctx.job_id,
            name=params.name or f"{row.name} epoch {model.epoch}: {params.class_name}",
            kind="diffusion",
            params=params.model_dump(mode="json") | {"epoch": model.epoch, "output_size": output_size},
        )
    with dropped_if_left_empty(ctx.session, pool_id):  # a run that fails before its first image leaves no pool
        todo = [i for i in range(params.count) if i not in done]
        if done:
            ctx.log(f"resuming pool {pool_id}: {len(done)} images exist, {len(todo)} to go")
        base = {
            "generator": "ddpm",
            "diffusion_id": row.id,
            "epoch": model.epoch,
            "class": params.class_name,
            "sampler": config.sampler,
            "steps": config.steps,
            "guidance": config.guidance,
            "job_seed": config.seed,
            "job_id": ctx.job_id,
            "output_size": output_size,
        }
        if starts is not None:
            base["strength"] = config.strength
        folder = ctx.store.path(rel)
        files = None
        if ctx.settings.ray_address:  # cluster hosts may not see the workspace: ship the model's files
            files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        work = DiffusionWork(str(folder), files, label, config, size, output_size, starts, start_index, base)
        fill_pool(ctx, pool_id, diffusion_worker, work, params, done=len(done), todo=todo)
    return {"pool_id": pool_id, "count": params.count, "diffusion_id": row.id, "epoch": model.epoch}
