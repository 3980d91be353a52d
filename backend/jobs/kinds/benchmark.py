"""Job kind ``benchmark``: train a classifier on every dataset variant x seed and record per-class accuracy.

Each (variant, seed) run is a checkpointed unit. A finished run is a ``BenchmarkRun`` row (unique per
benchmark, variant and seed) and is never trained again. The run in flight saves its trainer state after
every epoch to ``benchmarks/<id>/runs/<variant>__seed<seed>/state.safetensors`` (never pickle), so a
killed or interrupted job resumes that run from its last finished epoch, bit-for-bit on CPU.

Every variant of one seed is selected on the same validation split: carved once per (dataset, imbalance,
seed) from the real images every variant has (for a minority class, its kept images), left out of every
variant's training data (``full`` and the oversampled repeats included) and never holding a synthetic
image. Each row records the split's size, per-class counts and a fingerprint of its image ids.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator
from sqlalchemy import select

from backend.core.checkpoint import load_state, save_state
from backend.core.types import DbId, Name, Seed
from backend.data.cache import DecodedDataset
from backend.data.images import ImageDecodeError, decode_image
from backend.data.imbalance import ImbalanceResult, ImbalanceSpec
from backend.data.variants import CLASSICAL, DATA_OF, LOSS_OF, Variant, with_synthetic
from backend.data.variants import build_variant as build_data_variant
from backend.db.models import Benchmark, BenchmarkRun
from backend.jobs.context import JobContext
from backend.jobs.errors import JobError
from backend.jobs.ray_executor import run_units
from backend.jobs.registry import job_kind
from backend.reports.verdict import pack_bits, pack_labels
from backend.services import datasets, pools, selections
from backend.services.rows import row_for_job
from backend.training.models import GPU_SHARE, ModelName
from backend.training.trainer import (
    CHECKPOINT_KIND,
    UNDER_TRAINED_BELOW,
    BatchSize,
    Epochs,
    FinetuneRealEpochs,
    LearningRate,
    MinSide,
    Precision,
    Scores,
    SelectEpoch,
    Steps,
    SyntheticWeight,
    TrainConfig,
    default_classifier,
    evaluate_as_trained,
    fit,
    run_schedule,
    validation_split,
)

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class OtherClassImages(BaseModel):
    """Synthetic images of another class, added with that class as their label: from a pool, or the picks of
    a selection made for that class (the filtered fill of a long tail)."""

    model_config = ConfigDict(extra="forbid")

    pool_id: DbId | None = Field(None, description="the pool to take them from")
    selection_id: DbId | None = Field(
        None, description="or: the selection (target_class = label) whose picks that were not rejected to take"
    )
    count: int | None = Field(
        None, ge=1, le=1_000_000, description="images to take (the pool's first; required with pool_id)"
    )
    label: Name = Field(..., description="their class, a class of the dataset")

    @model_validator(mode="after")
    def _one_source(self) -> OtherClassImages:
        if (self.selection_id is None) == (self.pool_id is None):
            raise ValueError("give exactly one of selection_id or pool_id")
        if self.pool_id is not None and self.count is None:
            raise ValueError("count is required with pool_id")
        return self


class SyntheticVariant(BaseModel):
    """The imbalanced (or oversampled) set plus synthetic minority images, from a selection or from a pool,
    optionally with synthetic images of the other classes."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        ..., min_length=1, max_length=64, description="variant name shown in tables, e.g. gan, sd_random, sd_al"
    )
    selection_id: DbId | None = Field(None, description="use this selection's picks that were not rejected")
    pool_id: DbId | None = Field(None, description="use the first `count` images of this pool")
    count: int | None = Field(None, ge=1, le=1_000_000, description="images to take (pool: required)")
    label: Name | None = Field(None, description="class of the synthetic images (default: the minority class)")
    base: Literal["imbalanced", "oversample"] = Field(
        "imbalanced",
        description="the set the synthetic images are added to: the imbalanced set, or the same with its minority "
        "oversampled to the median class count (keeps the few real minority images in view)",
    )
    others: list[OtherClassImages] = Field(
        default_factory=list,
        max_length=1000,
        description="synthetic images of the other classes from the same kind of generator, each labelled with its "
        "class: then how a generator's images look predicts no label, and a classifier must learn the minority's "
        "shapes from them (benchmarks/bench_diffusion.py: *_every_class)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> SyntheticVariant:
        if (self.selection_id is None) == (self.pool_id is None):
            raise ValueError(f"variant {self.name!r}: give exactly one of selection_id or pool_id")
        if self.pool_id is not None and self.count is None:
            raise ValueError(f"variant {self.name!r}: count is required with pool_id")
        return self


# A variant is a classical name or a synthetic spec; the discriminator keeps 422 messages to the one that applies.
VariantItem = Annotated[
    Annotated[str, Field(min_length=1, max_length=64), Tag("name")] | Annotated[SyntheticVariant, Tag("synthetic")],
    Discriminator(lambda v: "name" if isinstance(v, str) else "synthetic"),
]


class BenchmarkParams(BaseModel):
    """Params of ``benchmark``."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: DbId
    imbalance: ImbalanceSpec | None = Field(None, description="required unless every variant is 'full'")
    variants: list[VariantItem] = Field(
        default_factory=lambda: list(CLASSICAL),
        min_length=1,
        description="classical variant names, or {name, selection_id} / {name, pool_id, count} for synthetic ones",
        examples=[list(CLASSICAL)],
    )
    model: ModelName | None = Field(None, description="classifier; default resnet18_cifar on CUDA, small on CPU")
    steps: Steps | None = Field(
        None,
        description="optimiser steps of every run, the same for every variant whatever its size (more images "
        "must not mean more training); default: 100 passes over the dataset's training images, 500 to 6,000 "
        "on a CPU, up to 20,000 on CUDA (the study's 100 CIFAR-10 epochs at batch 256)",
    )
    epochs: Epochs | None = Field(
        None,
        description="instead of steps: passes over the dataset's training images, turned into the same number "
        "of steps for every variant (epochs x training images // batch_size)",
    )
    batch_size: BatchSize | None = Field(None, description="examples per step; default 64 on a CPU, 256 on CUDA")
    min_side: MinSide = 32
    seeds: list[Seed] = Field(
        default_factory=lambda: [0], min_length=1, max_length=100, description="one run per variant and seed"
    )
    lr: LearningRate = 0.1
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="share of the real kept images held out as the one validation split per seed"
    )
    select_epoch: SelectEpoch = "last"
    precision: Precision = "auto"
    # Recipes for the variants with synthetic images (classical variants train without them):
    synthetic_weight: SyntheticWeight = 1.0
    finetune_real_epochs: FinetuneRealEpochs = 0

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

    @field_validator("seeds")
    @classmethod
    def _check_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("seeds must be distinct")
        return value

    @model_validator(mode="after")
    def _needs_imbalance(self) -> BenchmarkParams:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps or epochs, not both (epochs are turned into steps)")
        if self.imbalance is None and any(v != "full" for v in self.variants):
            raise ValueError("imbalance is required for every variant except 'full'")
        if self.select_epoch == "best_balanced" and self.val_fraction == 0:
            raise ValueError("select_epoch 'best_balanced' needs a validation split (val_fraction > 0)")
        return self

    def variant_names(self) -> list[str]:
        return [v if isinstance(v, str) else v.name for v in self.variants]


def _run_dir(benchmark_id: int, variant: str, seed: int) -> str:
    return f"benchmarks/{benchmark_id}/runs/{variant}__seed{seed}"


# -- the validation split ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Validation:
    """The validation split of one seed: indices into the dataset's training images."""

    ids: np.ndarray  # sorted int64 indices into ds.train_x
    images: np.ndarray  # uint8 (M, H, W, 3)
    labels: np.ndarray  # int64 (M,)

    def summary(self, classes: list[str]) -> dict[str, Any]:
        """What a row records: size, per-class counts and a fingerprint of the image ids."""
        counts = np.bincount(self.labels, minlength=len(classes))
        digest = hashlib.sha256(",".join(map(str, self.ids.tolist())).encode()).hexdigest()
        return {
            "size": len(self.ids),
            "counts": {c: int(n) for c, n in zip(classes, counts, strict=True)},
            "fingerprint": digest[:16],
        }


def validation_for(ds: DecodedDataset, imb: ImbalanceResult | None, fraction: float, seed: int) -> Validation:
    """Carve the seed's split from the real images every variant has: all kept ones (every image without
    an imbalance). Synthetic images live in no dataset index, so they can never be part of it."""
    kept = np.arange(len(ds.train_y)) if imb is None else imb.kept_idx
    try:
        ids = kept[validation_split(ds.train_y[kept], fraction, seed)]
    except ValueError as exc:
        raise JobError(str(exc)) from exc
    return Validation(ids, np.asarray(ds.train_x[ids]), np.asarray(ds.train_y[ids], dtype=np.int64))


# -- variants --------------------------------------------------------------------------------------------


def _synthetic_images(ctx: JobContext, spec: SyntheticVariant, ds: DecodedDataset, minority: list[int]):
    """``[(uint8 images, provenance, label), ...]`` of a synthetic variant, decoded from the pool files: its
    minority images first, then those of ``others``."""
    if spec.label is not None:
        label = _label(spec.name, spec.label, ds)
    elif len(minority) == 1:
        label = minority[0]
    else:
        raise JobError(f"variant {spec.name!r}: several minority classes; say which with 'label'")
    with ctx.session() as s:
        if spec.selection_id is not None:
            rows = selections.selected_images(s, spec.selection_id)[: spec.count]
        else:
            rows = pools.first_images(s, spec.pool_id, spec.count)
        others = [
            selections.selected_images(s, o.selection_id)[: o.count]
            if o.selection_id is not None
            else pools.first_images(s, o.pool_id, o.count)
            for o in spec.others
        ]
        s.expunge_all()
    parts = [(*_decode(ctx, spec.name, rows, ds), label)]
    for other, other_rows in zip(spec.others, others, strict=True):
        parts.append((*_decode(ctx, spec.name, other_rows, ds), _label(spec.name, other.label, ds)))
    return parts


def _label(variant: str, label: str, ds: DecodedDataset) -> int:
    if label not in ds.classes:
        raise JobError(f"variant {variant!r}: label {label!r} is not a class of the dataset")
    return ds.classes.index(label)


def _decode(ctx: JobContext, name: str, rows: list, ds: DecodedDataset) -> tuple[np.ndarray, list[dict]]:
    """The pool rows' images at the dataset's size, and their provenance."""
    images, provenance = [], []
    for row in rows:
        try:
            images.append(decode_image(ctx.store.path(row.file), size=ds.image_size))
        except (ImageDecodeError, OSError) as exc:
            raise JobError(f"variant {name!r}: pool image {row.id} cannot be read ({exc})") from exc
        provenance.append({"image_id": row.id, "pool_id": row.pool_id, "prompt": row.prompt, "seed": row.seed})
    if not images:
        raise JobError(f"variant {name!r}: no synthetic images to add")
    return np.stack(images), provenance


def _variant(spec: str | SyntheticVariant, ds: DecodedDataset, imb: ImbalanceResult | None, synthetic) -> Variant:
    """The training set of a variant. ``imb`` keeps only the images outside the validation split, so
    oversampling repeats and class weights see the training images alone; ``full`` holds the split too,
    and the trainer drops every copy of a validation image."""
    if isinstance(spec, SyntheticVariant):
        variant = build_data_variant(spec.base, ds, imb)
        for images, provenance, label in synthetic:
            variant = with_synthetic(variant, images, provenance, label, name=spec.name)
        return variant
    # logit_adjusted is a loss-side remedy: the imbalanced data, trained with the adjusted loss.
    data_name = DATA_OF.get(spec, spec)
    return build_data_variant(data_name, ds, None if spec == "full" else imb)


# -- the job --------------------------------------------------------------------------------------------


@job_kind("benchmark", BenchmarkParams)
def benchmark(ctx: JobContext, params: BenchmarkParams) -> dict[str, Any]:
    """Train a classifier on each dataset variant and seed; record per-class test accuracy."""
    with ctx.session() as s:
        ds = datasets.open_dataset(s, ctx.store, params.dataset_id)
    imb = None if params.imbalance is None else datasets.imbalance_of(ds, params.imbalance)
    minority = imb.minority_classes if imb is not None else []
    model = default_classifier(params.model, ctx.settings.device)
    if ds.info.get("mean") is None or ds.info.get("std") is None:
        raise JobError(f"dataset {params.dataset_id} has no channel statistics; prepare it again")
    steps, batch = run_schedule(params.steps, params.epochs, params.batch_size, len(ds.train_y), ctx.settings.device)
    params = params.model_copy(update={"steps": steps, "batch_size": batch, "epochs": None})
    ctx.log(f"every run: {steps} optimiser steps of batch {batch}")
    kept = (
        imb.counts(ds.train_y, len(ds.classes))
        if imb is not None
        else np.bincount(ds.train_y, minlength=len(ds.classes))
    )
    info = {
        "classes": list(ds.classes),
        "minority": [ds.classes[c] for c in minority],
        "profile": params.imbalance.profile if params.imbalance is not None else None,
        # the imbalanced training counts per class: the long-tail shot groups are thresholds on these
        "train_counts": {c: int(n) for c, n in zip(ds.classes, kept, strict=True)},
        "model": model,
        "device": ctx.settings.device,
        "variants": params.variant_names(),
        "seeds": params.seeds,
        "select_epoch": params.select_epoch,
        "synthetic_weight": params.synthetic_weight,
        "finetune_real_epochs": params.finetune_real_epochs,
        "steps": steps,
        "batch_size": batch,
        # the test labels in test-set order: with each run's per-image correctness, the verdict's paired bootstrap
        "test_labels": pack_labels(np.asarray(ds.test_y)),
    }
    with ctx.session() as s:
        benchmark_id = row_for_job(
            s,
            Benchmark,
            ctx.job_id,
            lambda: Benchmark(
                dataset_id=params.dataset_id, job_id=ctx.job_id, params=params.model_dump(mode="json"), info=info
            ),
        ).id
    ctx.save_checkpoint({**ctx.checkpoint, "benchmark_id": benchmark_id})

    with ctx.session() as s:
        finished = s.execute(select(BenchmarkRun.variant, BenchmarkRun.seed).filter_by(benchmark_id=benchmark_id))
        done = {(v, int(seed)) for v, seed in finished}
    units = [(v, seed) for v in params.variants for seed in params.seeds]

    def prepared(report: bool = True) -> Any:
        """(position, name, seed, variant, validation) of each run still to do, its data built only when
        asked for (a run's variant can hold the whole training set)."""
        splits: dict[int, Validation] = {}
        synthetic: dict[str, Any] = {}  # decoded synthetic images of the variant being trained
        for i, (spec, seed) in enumerate(units):
            name = spec if isinstance(spec, str) else spec.name
            if (name, seed) in done:
                shutil.rmtree(ctx.store.path(_run_dir(benchmark_id, name, seed)), ignore_errors=True)
                continue
            ctx.stop_point("between runs")
            if report:  # on Ray, progress counts finished runs instead
                ctx.progress(i / len(units), f"run {i + 1} of {len(units)}: {name}, seed {seed}, preparing data")
            if seed not in splits:
                splits[seed] = validation_for(ds, imb, params.val_fraction, seed)
                held = int(np.isin(splits[seed].labels, minority).sum())
                ctx.log(f"seed {seed}: validation split of {len(splits[seed].ids)} real images, {held} minority")
                if params.select_epoch == "best_balanced" and minority and held < 10:
                    ctx.log(f"seed {seed}: only {held} minority validation images; best_balanced picks on noise")
            val = splits[seed]
            if isinstance(spec, SyntheticVariant) and name not in synthetic:
                synthetic = {name: _synthetic_images(ctx, spec, ds, minority)}
            train_imb = None if imb is None else dataclasses.replace(imb, kept_idx=np.setdiff1d(imb.kept_idx, val.ids))
            try:
                variant = _variant(spec, ds, train_imb, synthetic.get(name))
            except ValueError as exc:
                raise JobError(f"variant {name!r}: {exc}") from exc
            yield i, name, seed, variant, val

    if ctx.settings.ray_address:
        _run_units_on_ray(ctx, benchmark_id, prepared(report=False), (len(done), len(units)), params, model, ds)
    else:
        for i, name, seed, variant, val in prepared():
            _run_unit(ctx, benchmark_id, variant, name, seed, (i, len(units)), params, model, ds, val)
            ctx.save_checkpoint({**ctx.checkpoint, "benchmark_id": benchmark_id, "runs_done": i + 1})
    ctx.progress(1.0, f"{len(units)} runs done")
    return {"benchmark_id": benchmark_id, "runs": len(units)}


def _run_units_on_ray(ctx, benchmark_id, prepared, counts: tuple[int, int], params, model, ds) -> None:
    """Every run still to do as a Ray task with ``GPU_SHARE[model]`` of a GPU; each row is written here as
    its run finishes. A run holds no per-epoch checkpoint on the cluster: Ray retries a run whose worker
    died, and a resumed job re-runs only the runs without a row."""
    import ray

    mean, std = ds.info["mean"], ds.info["std"]
    k = len(ds.classes)
    test = (ray.put(np.asarray(ds.test_x)), ray.put(np.asarray(ds.test_y)))  # shipped once for every run
    kept: dict[tuple[str, int], tuple[Any, Validation]] = {}  # what a run's row needs once it finishes
    finished, total = counts

    def units() -> Any:
        for _i, name, seed, variant, val in prepared:
            config = _train_config(params, model, name, seed, variant)
            kept[(name, seed)] = (_made_of(variant, len(ds.classes)), val)
            yield (name, seed), (variant, config, mean, std, val.images, val.labels, k, *test)

    def on_result(key: tuple[str, int], outcome: UnitOutcome) -> None:
        nonlocal finished
        made, val = kept.pop(key)
        _store_run(ctx, benchmark_id, *key, params, ds, val, made, outcome)
        finished += 1
        ctx.progress(finished / total, f"{finished} of {total} runs done (on Ray)")
        ctx.save_checkpoint({**ctx.checkpoint, "benchmark_id": benchmark_id, "runs_done": finished})

    run_units(
        train_and_test,
        units(),
        on_result=on_result,
        should_stop=ctx.should_stop,
        address=ctx.settings.ray_address,
        gpu_fraction=GPU_SHARE.get(model, 1.0),
    )


@dataclasses.dataclass
class UnitOutcome:
    """What a finished run's row records (the fit's history and choices, the one look at the test set)."""

    fit: dict[str, Any]  # history, epoch, val_acc, num_train, num_val, seconds, config, steps, train_balanced
    test: Scores


def _train_config(params: BenchmarkParams, model: str, name: str, seed: int, variant: Variant) -> TrainConfig:
    has_synthetic = bool((np.asarray(variant.origin) == "synthetic").any())
    return TrainConfig(
        model=model,
        steps=params.steps,
        batch_size=params.batch_size,
        lr=params.lr,
        loss=LOSS_OF.get(name, "ce"),
        select_epoch=params.select_epoch,
        seed=seed,
        precision=params.precision,
        min_side=params.min_side,
        synthetic_weight=params.synthetic_weight if has_synthetic else 1.0,
        finetune_real_epochs=params.finetune_real_epochs if has_synthetic else 0,
    )


def train_and_test(
    variant, config: TrainConfig, mean, std, val_images, val_labels, k: int, test_x, test_y, *, device: str, **fit_kw
) -> UnitOutcome:
    """Fit one (variant, seed) on ``device`` and evaluate it once on the test set, with the chosen weights.
    Runs in the job's process, or as a Ray task (the arguments are plain arrays and settings)."""
    config = config.model_copy(update={"device": device})
    result = fit(variant, config, mean=mean, std=std, val=(val_images, val_labels), num_classes=k, **fit_kw)
    test = evaluate_as_trained(result.model, test_x, test_y, config, mean=mean, std=std, k=k)
    keep = ("history", "epoch", "val_acc", "num_train", "num_val", "seconds", "config", "steps", "train_balanced")
    return UnitOutcome({key: getattr(result, key) for key in keep}, test)


def _run_unit(ctx, benchmark_id, variant, name, seed, position, params, model, ds, val: Validation) -> None:
    """Fit one (variant, seed) with per-epoch checkpoints, evaluate it once on the test set, store the row."""
    run_dir = _run_dir(benchmark_id, name, seed)
    i, total = position
    config = _train_config(params, model, name, seed, variant)
    state_file = f"{run_dir}/state.safetensors"
    resume = None
    if ctx.store.exists(state_file):
        resume = load_state(ctx.store.path(state_file).read_bytes(), CHECKPOINT_KIND)
        ctx.log(f"{name} seed {seed}: resuming after epoch {resume['epoch']}")
    hooks = dataclasses.replace(
        ctx.hooks.scaled(i / total, (i + 1) / total, f"run {i + 1} of {total}: {name}, seed {seed}, "),
        checkpoint=lambda state: ctx.store.write_bytes(state_file, save_state(state, CHECKPOINT_KIND)),
    )
    try:
        outcome = train_and_test(
            variant,
            config,
            ds.info["mean"],
            ds.info["std"],
            val.images,
            val.labels,
            len(ds.classes),
            ds.test_x,
            ds.test_y,
            device=ctx.settings.device,
            hooks=hooks,
            resume=resume,
        )
    except ValueError as exc:
        raise JobError(f"variant {name!r}, seed {seed}: {exc}") from exc
    _store_run(ctx, benchmark_id, name, seed, params, ds, val, _made_of(variant, len(ds.classes)), outcome)


def _made_of(variant: Variant, k: int) -> tuple[int, list[int]]:
    """What a row records of its training set: synthetic images, and images per class (copies included)."""
    n_synthetic = int((np.asarray(variant.origin) == "synthetic").sum())
    return n_synthetic, np.bincount(variant.labels, minlength=k).astype(int).tolist()


def _store_run(
    ctx, benchmark_id, name, seed, params, ds, val: Validation, made: tuple[int, list[int]], outcome: UnitOutcome
) -> None:
    """The run's row; then its per-epoch state is no longer needed."""
    result, test = outcome.fit, outcome.test
    n_synthetic, counts = made
    with ctx.session() as s:
        s.add(
            BenchmarkRun(
                benchmark_id=benchmark_id,
                variant=name,
                seed=seed,
                overall_acc=test.accuracy,
                per_class=dict(zip(ds.classes, test.per_class, strict=True)),
                val_acc=result["val_acc"],
                epochs=sum(1 for h in result["history"] if h.get("phase", "train") == "train"),
                n_synthetic=n_synthetic,
                history=result["history"],
                confusion=test.confusion,
                info={
                    "best_epoch": result["epoch"],
                    "select_epoch": params.select_epoch,
                    "validation": val.summary(list(ds.classes)),
                    "num_train": result["num_train"],
                    # images per class in the variant (oversampled copies and synthetic images included)
                    "variant_counts": dict(zip(ds.classes, counts, strict=True)),
                    "num_val": result["num_val"],
                    "steps": result["steps"],
                    "batch_size": params.batch_size,
                    "train_balanced": result["train_balanced"],
                    "under_trained": result["train_balanced"] is None or result["train_balanced"] < UNDER_TRAINED_BELOW,
                    # per test image, in test-set order: classified correctly (packed bits, base64)
                    "test_correct": pack_bits(test.correct),
                    "seconds": round(result["seconds"], 2),
                    "config": result["config"],
                },
            )
        )
    shutil.rmtree(ctx.store.path(_run_dir(benchmark_id, name, seed)), ignore_errors=True)
    ctx.log(
        f"{name} seed {seed}: test {test.accuracy:.2f} %, weights of epoch {result['epoch']} ({params.select_epoch})"
    )
