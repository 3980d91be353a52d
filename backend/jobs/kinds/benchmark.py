"""Job kind ``benchmark``: train a classifier on every dataset variant x seed and record per-class accuracy.

Each (variant, seed) run is a checkpointed unit. A finished run is a ``BenchmarkRun`` row (unique per
benchmark, variant and seed) and is never trained again. The run in flight saves its trainer state after
every epoch under ``benchmarks/<id>/runs/<variant>__seed<seed>/`` (safetensors + JSON, never pickle), so a
killed or interrupted job resumes that run from its last finished epoch, bit-for-bit on CPU.
"""

from __future__ import annotations

import re
import shutil
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator
from sqlalchemy import select

from backend.data.images import ImageDecodeError, decode_image
from backend.data.imbalance import ImbalanceSpec, apply_imbalance
from backend.data.variants import Variant, with_synthetic
from backend.db.models import Benchmark, BenchmarkRun, Pool, PoolImage, Selection
from backend.jobs.context import JobContext
from backend.jobs.errors import JobError, JobInterrupted
from backend.jobs.kinds.datasets import build_variant, load_dataset
from backend.jobs.kinds.selection import selected_image_ids
from backend.jobs.registry import job_kind
from backend.training.models import MODELS
from backend.training.trainer import (
    TrainConfig,
    TrainingInterrupted,
    state_from_safetensors,
    state_to_safetensors,
    train,
)

CLASSICAL = ("imbalanced", "oversample", "oversample_aug", "class_weighted", "logit_adjusted", "full")
DEFAULT_VARIANTS = ["imbalanced", "oversample", "oversample_aug", "class_weighted", "logit_adjusted", "full"]
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class SyntheticVariant(BaseModel):
    """The imbalanced set plus synthetic minority images, from a selection or from a pool."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="variant name shown in tables, e.g. gan, sd_random, sd_al")
    selection_id: int | None = Field(None, description="use this selection's picks that were not rejected")
    pool_id: int | None = Field(None, description="use the first `count` images of this pool")
    count: int | None = Field(None, ge=1, le=1_000_000, description="images to take (pool: required)")
    label: str | None = Field(None, description="class of the synthetic images (default: the minority class)")

    @model_validator(mode="after")
    def _one_source(self) -> SyntheticVariant:
        if (self.selection_id is None) == (self.pool_id is None):
            raise ValueError(f"variant {self.name!r}: give exactly one of selection_id or pool_id")
        if self.pool_id is not None and self.count is None:
            raise ValueError(f"variant {self.name!r}: count is required with pool_id")
        return self


# A variant is a classical name or a synthetic spec; the discriminator keeps 422 messages to the one that applies.
VariantItem = Annotated[
    Annotated[str, Tag("name")] | Annotated[SyntheticVariant, Tag("synthetic")],
    Discriminator(lambda v: "name" if isinstance(v, str) else "synthetic"),
]


class BenchmarkParams(BaseModel):
    """Params of ``benchmark``."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: int
    imbalance: ImbalanceSpec | None = Field(None, description="required unless every variant is 'full'")
    variants: list[VariantItem] = Field(default_factory=lambda: list(DEFAULT_VARIANTS), min_length=1)
    model: str | None = Field(None, description="resnet18_cifar | small; default resnet18_cifar on CUDA, else small")
    epochs: int = Field(30, ge=1, le=1000)
    batch_size: int = Field(256, ge=2, le=8192)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, max_length=100)
    lr: float = Field(0.1, gt=0.0, le=10.0, description="peak learning rate per batch of 256 examples")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="autocast: auto = bf16 on CUDA and on CPUs with native bf16, else fp32"
    )

    @field_validator("variants")
    @classmethod
    def _check_variants(cls, value: list[str | SyntheticVariant]) -> list[str | SyntheticVariant]:
        names = []
        for v in value:
            name = v if isinstance(v, str) else v.name
            if isinstance(v, str) and v not in CLASSICAL:
                raise ValueError(
                    f"unknown variant {v!r}; choose from {list(CLASSICAL)} or give "
                    '{"name", "selection_id"} / {"name", "pool_id", "count"}'
                )
            if not NAME.match(name):
                raise ValueError(f"variant name {name!r}: use 1-64 letters, digits, '_', '-' or '.'")
            names.append(name)
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variant names must be unique; repeated: {dupes}")
        return value

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str | None) -> str | None:
        if value is not None and value not in MODELS:
            raise ValueError(f"unknown model {value!r}; choose one of {sorted(MODELS)}")
        return value

    @field_validator("seeds")
    @classmethod
    def _check_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("seeds must be distinct")
        return value

    @model_validator(mode="after")
    def _needs_imbalance(self) -> BenchmarkParams:
        if self.imbalance is None and any(v != "full" for v in self.variants):
            raise ValueError("imbalance is required for every variant except 'full'")
        return self

    def variant_names(self) -> list[str]:
        return [v if isinstance(v, str) else v.name for v in self.variants]


def resolve_model(model: str | None, device: str) -> str:
    """The study's ResNet18 on a GPU; the fast ``small`` CNN on CPU, unless a model was named."""
    return model or ("resnet18_cifar" if device.startswith("cuda") else "small")


def _run_dir(benchmark_id: int, variant: str, seed: int) -> str:
    return f"benchmarks/{benchmark_id}/runs/{variant}__seed{seed}"


# -- synthetic images ----------------------------------------------------------------------------------


def _selected_images(ctx: JobContext, selection_id: int) -> list[PoolImage]:
    """Picks in rank order that a reviewer accepted, or left pending and not flagged as near-copies."""
    with ctx.session() as s:
        if s.get(Selection, selection_id) is None:
            raise JobError(f"selection {selection_id} not found")
        keep = selected_image_ids(s, selection_id)
        rows = {r.id: r for r in s.scalars(select(PoolImage).where(PoolImage.id.in_(keep)))}
        s.expunge_all()
    return [rows[i] for i in keep if i in rows]


def _pool_images(ctx: JobContext, pool_id: int, count: int) -> list[PoolImage]:
    with ctx.session() as s:
        if s.get(Pool, pool_id) is None:
            raise JobError(f"pool {pool_id} not found")
        rows = s.scalars(
            select(PoolImage).where(PoolImage.pool_id == pool_id).order_by(PoolImage.idx).limit(count)
        ).all()
        s.expunge_all()
    if len(rows) < count:
        raise JobError(f"pool {pool_id} holds {len(rows)} images; the variant asks for count={count}")
    return list(rows)


def _synthetic_variant(ctx: JobContext, spec: SyntheticVariant, base: Variant, ds, minority: list[int]) -> Variant:
    if spec.label is not None:
        if spec.label not in ds.classes:
            raise JobError(f"variant {spec.name!r}: label {spec.label!r} is not a class of the dataset")
        label = ds.classes.index(spec.label)
    elif len(minority) == 1:
        label = minority[0]
    else:
        raise JobError(f"variant {spec.name!r}: several minority classes; say which with 'label'")
    if spec.selection_id is not None:
        rows = _selected_images(ctx, spec.selection_id)
        rows = rows[: spec.count] if spec.count is not None else rows
    else:
        rows = _pool_images(ctx, spec.pool_id, spec.count)
    images, provenance = [], []
    for row in rows:
        try:
            images.append(decode_image(ctx.store.path(row.file), size=ds.image_size))
        except (ImageDecodeError, OSError) as exc:
            raise JobError(f"variant {spec.name!r}: pool image {row.id} cannot be read ({exc})") from exc
        provenance.append({"image_id": row.id, "pool_id": row.pool_id, "prompt": row.prompt, "seed": row.seed})
    if not images:
        raise JobError(f"variant {spec.name!r}: no synthetic images to add")
    return with_synthetic(base, np.stack(images), provenance, label, name=spec.name)


# -- the job --------------------------------------------------------------------------------------------


def _benchmark_row(ctx: JobContext, params: BenchmarkParams, info: dict[str, Any]) -> int:
    """The benchmark of this job: created on the first attempt, found again on a resume."""
    with ctx.session() as s:
        row = s.scalar(select(Benchmark).where(Benchmark.job_id == ctx.job_id))
        if row is None:
            row = Benchmark(
                dataset_id=params.dataset_id, job_id=ctx.job_id, params=params.model_dump(mode="json"), info=info
            )
            s.add(row)
            s.flush()
        return row.id


def _done_runs(ctx: JobContext, benchmark_id: int) -> set[tuple[str, int]]:
    with ctx.session() as s:
        rows = s.execute(
            select(BenchmarkRun.variant, BenchmarkRun.seed).where(BenchmarkRun.benchmark_id == benchmark_id)
        )
        return {(v, int(seed)) for v, seed in rows}


def _load_state(ctx: JobContext, run_dir: str) -> dict[str, Any] | None:
    """The last epoch state of an interrupted run, if one was saved."""
    if not ctx.store.exists(f"{run_dir}/state.json"):
        return None
    meta = ctx.store.read_json(f"{run_dir}/state.json")
    data = ctx.store.path(f"{run_dir}/{meta['file']}").read_bytes()
    return state_from_safetensors(data, meta["state"])


def _save_state(ctx: JobContext, run_dir: str, epoch: int, state: dict[str, Any]) -> None:
    """Write the weights file first, then the JSON that points at it: the JSON is the commit marker."""
    data, meta = state_to_safetensors(state)
    name = f"epoch{epoch:04d}.safetensors"
    ctx.store.write_bytes(f"{run_dir}/{name}", data)
    ctx.store.write_json(f"{run_dir}/state.json", {"file": name, "state": meta})
    for old in ctx.store.path(run_dir).glob("epoch*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


@job_kind("benchmark", BenchmarkParams)
def benchmark(ctx: JobContext, params: BenchmarkParams) -> dict[str, Any]:
    """Train a classifier on each dataset variant and seed; record per-class test accuracy."""
    ds = load_dataset(ctx, params.dataset_id)
    imbalance = params.imbalance.model_dump() if params.imbalance is not None else None
    try:
        imb = apply_imbalance(ds.train_y, ds.classes, imbalance) if imbalance else None
    except ValueError as exc:
        raise JobError(f"imbalance: {exc}") from exc
    minority = imb.minority_classes if imb is not None else []
    device = ctx.settings.device
    model = resolve_model(params.model, device)
    mean, std = ds.info.get("mean"), ds.info.get("std")
    if mean is None or std is None:
        raise JobError(f"dataset {params.dataset_id} has no channel statistics; prepare it again")
    info = {
        "classes": list(ds.classes),
        "minority": [ds.classes[c] for c in minority],
        "model": model,
        "device": device,
        "variants": params.variant_names(),
        "seeds": params.seeds,
    }
    benchmark_id = _benchmark_row(ctx, params, info)
    ctx.save_checkpoint({**ctx.checkpoint, "benchmark_id": benchmark_id})

    units = [(v, seed) for v in params.variants for seed in params.seeds]
    done = _done_runs(ctx, benchmark_id)
    total = len(units)
    built: dict[str, Variant] = {}  # the variant being trained, reused across its seeds
    for i, (spec, seed) in enumerate(units):
        name = spec if isinstance(spec, str) else spec.name
        if (name, seed) in done:
            shutil.rmtree(ctx.store.path(_run_dir(benchmark_id, name, seed)), ignore_errors=True)
            continue
        ctx.raise_if_stopped()
        ctx.progress(i / total, f"run {i + 1} of {total}: {name}, seed {seed}, preparing data")
        if name not in built:
            built = {name: _build(ctx, spec, ds, imbalance, minority)}
        variant = built[name]
        _run_unit(ctx, benchmark_id, variant, name, seed, i, total, params, model, ds, mean, std)
        ctx.save_checkpoint({**ctx.checkpoint, "benchmark_id": benchmark_id, "runs_done": i + 1})
    ctx.progress(1.0, f"{total} runs done")
    return {"benchmark_id": benchmark_id, "runs": total}


def _build(ctx: JobContext, spec: str | SyntheticVariant, ds, imbalance: dict | None, minority: list[int]) -> Variant:
    if isinstance(spec, SyntheticVariant):
        base = build_variant(ds, "imbalanced", imbalance)
        try:
            return _synthetic_variant(ctx, spec, base, ds, minority)
        except ValueError as exc:
            raise JobError(f"variant {spec.name!r}: {exc}") from exc
    # logit_adjusted is a loss-side remedy: the imbalanced data, trained with the adjusted loss.
    data_name = "imbalanced" if spec == "logit_adjusted" else spec
    return build_variant(ds, data_name, None if spec == "full" else imbalance)


def _run_unit(ctx, benchmark_id, variant, name, seed, i, total, params, model, ds, mean, std) -> None:
    run_dir = _run_dir(benchmark_id, name, seed)
    config = TrainConfig(
        model=model,
        epochs=params.epochs,
        batch_size=params.batch_size,
        lr=params.lr,
        val_fraction=params.val_fraction,
        loss="logit_adjusted" if name == "logit_adjusted" else "ce",
        seed=seed,
        device=ctx.settings.device,
        precision=params.precision,
    )
    resume = _load_state(ctx, run_dir)
    if resume is not None:
        ctx.log(f"{name} seed {seed}: resuming after epoch {resume['epoch']}")

    def progress(fraction: float, message: str | None = None) -> None:
        epoch = f", {message}" if message else ""
        ctx.progress((i + fraction) / total, f"run {i + 1} of {total}: {name}, seed {seed}{epoch}")

    try:
        result = train(
            variant,
            ds.test_x,
            ds.test_y,
            config,
            mean=mean,
            std=std,
            num_classes=len(ds.classes),
            progress=progress,
            should_stop=ctx.should_stop,
            resume_state=resume,
            on_epoch_end=lambda epoch, state: _save_state(ctx, run_dir, epoch, state),
        )
    except TrainingInterrupted as exc:
        raise JobInterrupted() from exc
    except ValueError as exc:
        raise JobError(f"variant {name!r}, seed {seed}: {exc}") from exc
    n_synthetic = int((np.asarray(variant.origin) == "synthetic").sum())
    with ctx.session() as s:
        s.add(
            BenchmarkRun(
                benchmark_id=benchmark_id,
                variant=name,
                seed=seed,
                overall_acc=result.test_acc,
                per_class=dict(zip(ds.classes, result.test_per_class, strict=True)),
                val_acc=result.val_acc,
                epochs=params.epochs,
                n_synthetic=n_synthetic,
                history=result.history,
                confusion=result.confusion,
                info={
                    "best_epoch": result.best_epoch,
                    "num_train": result.num_train,
                    "num_val": result.num_val,
                    "seconds": round(result.seconds, 2),
                    "config": result.config,
                },
            )
        )
    shutil.rmtree(ctx.store.path(run_dir), ignore_errors=True)
    ctx.log(f"{name} seed {seed}: test {result.test_acc:.2f} %, best epoch {result.best_epoch}")
