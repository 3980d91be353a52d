"""Job kinds `train_gan` (DCGAN from a folder, an uploaded zip or a dataset's minority) and `generate_gan`.

Where the files go is ``backend.services.gans``; the pool is written through ``backend.services.pools``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from backend.config import PathNotAllowed
from backend.core.hooks import Hooks
from backend.core.types import DbId, PathText, Seed
from backend.data.imbalance import ImbalanceSpec
from backend.db.models import Gan
from backend.generation.gan import (
    GanConfig,
    GanTrainer,
    generator_only,
    load_generator,
    sample_images,
)
from backend.generation.gan_images import load_image_folder
from backend.generation.imagefiles import encode_png
from backend.jobs.context import JobContext
from backend.jobs.errors import JobError
from backend.jobs.pool_shards import PoolItem, fill_pool
from backend.jobs.ray_executor import SHARDS_DEFAULT, SHARDS_HELP
from backend.jobs.registry import job_kind
from backend.services.datasets import UPLOAD_ID, check_upload, extract_upload, minority_images, open_dataset
from backend.services.gans import checkpoint_path, get_gan, samples_path, sampling_epoch
from backend.services.pools import dropped_if_left_empty, pool_for_job
from backend.services.rows import row_for_job

MAX_SKIPPED_LISTED = 200  # names kept in the GAN's info; the count is always exact


# ------------------------------------------------------------------------------------------------ params


class PathSource(BaseModel):
    """A directory of images (searched recursively) under the operator's allowed directories."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, max_length=4096)

    @field_validator("path")
    @classmethod
    def _allowed(cls, value: str, info: ValidationInfo) -> str:
        settings = (info.context or {}).get("settings")
        if settings is not None:
            real = settings.is_allowed(value)  # PathNotAllowed is a ValueError naming --allow-dir
            if not Path(real).is_dir():
                what = "is a file" if Path(real).exists() else "does not exist"
                raise ValueError(f"{value} {what}; give a folder of images")
        return value


class UploadSource(BaseModel):
    """A zip uploaded with POST /api/datasets/upload."""

    model_config = ConfigDict(extra="forbid")
    upload_id: PathText

    @field_validator("upload_id")
    @classmethod
    def _shape(cls, value: str, info: ValidationInfo) -> str:
        if not UPLOAD_ID.match(value):
            raise ValueError("upload_id is the id returned by POST /api/datasets/upload")
        settings = (info.context or {}).get("settings")
        if settings is not None:
            check_upload(settings.workspace_dir, value)
        return value


class DatasetSource(BaseModel):
    """The minority-class images that `imbalance` keeps in a prepared dataset."""

    model_config = ConfigDict(extra="forbid")
    dataset_id: DbId
    imbalance: ImbalanceSpec


def _source_tag(value: Any) -> str | None:
    """Which source form `value` is, from its keys, so a 422 names only that form's problems."""
    if isinstance(value, dict):
        for key, tag in (
            ("path", "path"),
            ("upload_id", "upload"),
            ("dataset_id", "dataset"),
            ("imbalance", "dataset"),
        ):
            if key in value:
                return tag
        return None
    return {PathSource: "path", UploadSource: "upload", DatasetSource: "dataset"}.get(type(value))


def refuse_empty_minority(source: Any, why: str) -> None:
    """A dataset source whose imbalance keeps no minority image gives a job nothing to learn from."""
    if isinstance(source, DatasetSource) and source.imbalance.keep == 0:
        raise ValueError(f"source.imbalance.keep is 0, so there is no image to learn from ({why}); keep at least 1")


SOURCE_FORMS = '{"path": dir}, {"upload_id": id} or {"dataset_id": id, "imbalance": spec}'
Source = Annotated[
    Annotated[PathSource, Tag("path")]
    | Annotated[UploadSource, Tag("upload")]
    | Annotated[DatasetSource, Tag("dataset")],
    Discriminator(_source_tag, custom_error_type="source", custom_error_message=f"source must be {SOURCE_FORMS}"),
]


class TrainGanParams(GanConfig):
    """The GAN's own settings (``GanConfig``: defaults, limits, descriptions) plus where the images come from."""

    source: Source = Field(description=SOURCE_FORMS)
    name: str | None = Field(None, max_length=255)

    @model_validator(mode="after")
    def _has_images(self) -> TrainGanParams:
        refuse_empty_minority(self.source, "a GAN trains on the kept minority images")
        return self

    def config(self) -> GanConfig:
        return GanConfig(**self.model_dump(include=set(GanConfig.model_fields)))


class GenerateGanParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gan_id: DbId
    epoch: int | None = Field(None, ge=1, le=2**31 - 1, description="default: the last epoch trained")
    count: int = Field(100, ge=1, le=1_000_000)
    seed: Seed = Field(0, description="image i's noise is drawn from (seed, i)")
    output_size: int | None = Field(None, ge=8, le=1024, description="default: the dataset's size, else 32")
    review_size: int = Field(256, ge=32, le=1024)
    chunk_size: int = Field(256, ge=1, le=10_000, description="images committed per checkpoint")
    shards: int | None = Field(SHARDS_DEFAULT, ge=1, le=1024, description=SHARDS_HELP)
    name: str | None = Field(None, max_length=255)


# --------------------------------------------------------------------------------------------- train_gan


def _source_images(ctx: JobContext, params: TrainGanParams) -> tuple[np.ndarray, dict[str, Any]]:
    """uint8 NHWC source images and a JSON summary of where they came from (and what was skipped)."""
    source = params.source
    if isinstance(source, DatasetSource):
        with ctx.session() as s:
            ds = open_dataset(s, ctx.store, source.dataset_id)
        real = minority_images(ds, source.imbalance, "source.imbalance")
        info = {
            "kind": "dataset",
            "dataset_id": source.dataset_id,
            "classes": [ds.classes[c] for c in real.classes],
            "dataset_image_size": ds.image_size[0],
        }
        return real.images, info
    skipped: list[tuple[str, str]] = []
    if isinstance(source, PathSource):
        try:
            folder = ctx.settings.is_allowed(source.path)
        except PathNotAllowed as exc:
            raise JobError(f"source.path: {exc}") from exc
        info = {"kind": "path", "path": str(folder)}
    else:
        folder, skipped = extract_upload(ctx.store, source.upload_id, ctx.hooks)
        info = {"kind": "upload", "upload_id": source.upload_id}
    ctx.progress(0.0, "decoding source images")
    try:
        loaded = load_image_folder(folder, params.image_size, hooks=ctx.hooks.scaled(0.0, 0.0))
    except ValueError as exc:
        raise JobError(f"source.path: {exc}") from exc
    reasons = [f"{name}: {why}" for name, why in skipped]
    reasons += [f"{s['path']}: {s['reason']}" for s in loaded.skipped]
    info |= {"skipped_count": len(reasons), "skipped": reasons[:MAX_SKIPPED_LISTED]}
    return loaded.images, info


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON (and PostgreSQL) has no NaN


def _history(trainer: GanTrainer) -> list[dict[str, Any]]:
    return [
        {"epoch": i + 1, "d_loss": _finite(h.d_loss), "g_loss": _finite(h.g_loss)}
        for i, h in enumerate(trainer.history)
    ]


def _gan_row(ctx: JobContext, params: TrainGanParams) -> int:
    """The GAN this job trains: created on the first attempt, found again on a resume."""
    with ctx.session() as s:
        return row_for_job(
            s,
            Gan,
            ctx.job_id,
            lambda: Gan(
                name=params.name or f"DCGAN {params.image_size}px",
                job_id=ctx.job_id,
                params=params.model_dump(mode="json"),
                epochs_done=0,
                history=[],
                info={},
            ),
        ).id


@job_kind("train_gan", TrainGanParams)
def train_gan(ctx: JobContext, params: TrainGanParams) -> dict[str, Any]:
    """Train a DCGAN, checkpointing and sampling every epoch; resumes from the last finished epoch."""
    gan_id = _gan_row(ctx, params)
    images, source_info = _source_images(ctx, params)
    source_info["images"] = len(images)
    try:
        trainer = GanTrainer(params.config(), images, ctx.settings.device)
    except ValueError as exc:
        raise JobError(str(exc)) from exc
    del images  # the trainer holds its own (resized, on-device) copy

    start = int(ctx.checkpoint.get("epoch", 0))
    if start:
        rel = checkpoint_path(gan_id, start)
        if not ctx.store.exists(rel):
            raise JobError(f"checkpoint {rel} of gan {gan_id} is missing; cannot resume")
        trainer.load_state(ctx.store.path(rel).read_bytes())
        ctx.log(f"gan {gan_id}: resuming after epoch {start}")
    with ctx.session() as s:
        row = s.get(Gan, gan_id)
        row.info = {**(row.info or {}), "source": source_info, "device": ctx.settings.device}

    epochs = params.epochs
    for epoch in range(trainer.epoch + 1, epochs + 1):
        # A stop drops the epoch in flight; the last finished one is kept and resumed from.
        hooks = ctx.hooks.scaled((epoch - 1) / epochs, epoch / epochs, f"epoch {epoch}/{epochs}")
        losses = trainer.train_epoch(hooks)
        # Files first, then the row, then the checkpoint: a crash in between redoes this epoch.
        ctx.store.write_bytes(checkpoint_path(gan_id, epoch), trainer.state_bytes())
        ctx.store.write_bytes(samples_path(gan_id, epoch), encode_png(trainer.sample_grid()))
        with ctx.session() as s:
            row = s.get(Gan, gan_id)
            row.epochs_done = epoch
            row.history = _history(trainer)
        ctx.save_checkpoint({"epoch": epoch, "gan_id": gan_id})
        ctx.log(f"epoch {epoch}/{epochs}: D loss {losses.d_loss:.4f}, G loss {losses.g_loss:.4f}")
        if epoch > 1 and ctx.store.exists(checkpoint_path(gan_id, epoch - 1)):
            # Only the newest epoch must be resumable; older ones keep just what sampling needs.
            older = ctx.store.path(checkpoint_path(gan_id, epoch - 1)).read_bytes()
            ctx.store.write_bytes(checkpoint_path(gan_id, epoch - 1), generator_only(older))
    return {"gan_id": gan_id, "epochs_done": trainer.epoch}


# ------------------------------------------------------------------------------------------ generate_gan


def _resolve_epoch(ctx: JobContext, params: GenerateGanParams) -> tuple[Gan, int]:
    with ctx.session() as s:
        row = get_gan(s, params.gan_id)
        s.expunge(row)
    return row, sampling_epoch(row, params.epoch)


@dataclass(frozen=True)
class GanWork:
    """What a shard needs to sample image i of the job (picklable: it travels to Ray actors)."""

    weights: bytes  # the generator checkpoint, so hosts without the workspace can sample too
    seed: int
    output_size: int
    base: dict[str, Any]


def gan_worker(work: GanWork, hooks: Hooks, device: str) -> Callable[[list[int]], Iterator[list[PoolItem]]]:
    """Load the generator once (per process or Ray actor); the worker samples a piece of indices, one
    contiguous run per yielded part. Noise depends only on (seed, index) and images only on their own
    noise (eval-mode BatchNorm), so batching, halving on OOM and sharding leave every image unchanged."""
    loaded = load_generator(work.weights, device)
    batch = {"size": 256}  # images per generator call; shrinks for good after a CUDA OOM

    def on_oom(size: int, message: str) -> None:
        batch["size"] = size
        hooks.log(message)

    def run(piece: list[int]) -> Iterator[list[PoolItem]]:
        for indices in _runs(piece):  # contiguous runs share one generator call
            try:
                small, review = sample_images(
                    loaded.generator,
                    len(indices),
                    work.seed,
                    device,
                    work.output_size,
                    start=indices[0],
                    batch_size=batch["size"],
                    on_batch_size=on_oom,
                    with_full=True,
                )
            except ValueError as exc:
                raise JobError(str(exc)) from exc
            yield [PoolItem(idx, work.base | {"index": idx}, small[j], review[j]) for j, idx in enumerate(indices)]

    return run


@job_kind("generate_gan", GenerateGanParams)
def generate_gan(ctx: JobContext, params: GenerateGanParams) -> dict[str, Any]:
    """Sample a trained DCGAN into a candidate pool (chunked, resumable, reproducible per index)."""
    row, epoch = _resolve_epoch(ctx, params)
    rel = checkpoint_path(row.id, epoch)
    if not ctx.store.exists(rel):
        raise JobError(f"checkpoint {rel} of gan {row.id} is missing")
    weights = ctx.store.path(rel).read_bytes()
    source = (row.info or {}).get("source", {})
    output_size = params.output_size or source.get("dataset_image_size") or 32
    with ctx.session() as s:
        pool_id, done = pool_for_job(
            s,
            ctx.job_id,
            name=params.name or f"{row.name} epoch {epoch}",
            kind="gan",
            params=params.model_dump(mode="json") | {"epoch": epoch, "output_size": output_size},
        )
    with dropped_if_left_empty(ctx.session, pool_id):
        todo = [i for i in range(params.count) if i not in done]
        base = {"generator": "dcgan", "gan_id": row.id, "epoch": epoch, "seed": params.seed, "job_id": ctx.job_id}
        base |= {"output_size": output_size}
        work = GanWork(weights, params.seed, output_size, base)
        fill_pool(ctx, pool_id, gan_worker, work, params, done=len(done), todo=todo)
        return {"pool_id": pool_id, "count": params.count, "gan_id": row.id, "epoch": epoch}


def _runs(indices: list[int], max_len: int = 256) -> list[list[int]]:
    """Split sorted indices into runs of consecutive values (at most `max_len` long)."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][-1] == i - 1 and len(runs[-1]) < max_len:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs
