"""Job `generate_sd`: a prompt vocabulary through Stable Diffusion into a candidate pool.

Chunked: each chunk's images are generated batch by batch (files encode on threads while the next
batch denoises), written with their rows, committed, and only then checkpointed. A resumed attempt
skips the indices already in the pool, and image `i` is a pure function of (params, i), so the pool
ends with exactly `count` images, none twice, whatever crashed in between.

With Ray (``--ray``) the chunks are split into ``shards`` that run on Ray actors, one pipeline loaded
per actor (``backend.jobs.pool_shards``); without it they run here, one after another, as always.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from backend.core.hooks import Hooks
from backend.core.types import DbId, Name, PathText, Seed, Text
from backend.data.imbalance import ImbalanceSpec
from backend.db.models import Vocabulary as VocabularyRow
from backend.generation.prompts import PromptItem, Vocabulary, default_vocabulary
from backend.generation.schedulers import SCHEDULERS, SchedulerName
from backend.jobs.context import JobContext
from backend.jobs.errors import JobError
from backend.jobs.pool_shards import PoolItem, fill_pool
from backend.jobs.ray_executor import SHARDS_DEFAULT, SHARDS_HELP
from backend.jobs.registry import job_kind
from backend.services.concepts import usable_concept
from backend.services.datasets import minority_images, open_dataset
from backend.services.pools import dropped_if_left_empty, pool_for_job

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


class InlineVocabulary(BaseModel):
    """A vocabulary given in the job params instead of a saved vocabulary id."""

    model_config = ConfigDict(extra="forbid")
    template: Text = Field(min_length=1)
    slots: dict[Name, list[Text] | dict[Text, float]] = Field(
        description="values per slot: a list (drawn uniformly) or {value: weight} (drawn in proportion)"
    )
    negative_prompt: Text = ""
    weights: dict[str, dict[str, float]] | None = Field(
        None, description="per-value sampling weights {slot: {value: w}} for list slots (every value named)"
    )

    @model_validator(mode="after")
    def _valid(self) -> InlineVocabulary:
        Vocabulary(self.template, self.slots, self.negative_prompt, self.weights)  # ValueError names the slot
        return self


class GenerateSDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: PathText = Field(
        DEFAULT_MODEL,
        description="Hugging Face id, local pipeline directory, or 'tiny' (randomly initialised and built "
        "locally: it draws noise, for tests and offline wiring only)",
        examples=["tiny", DEFAULT_MODEL, "stabilityai/sd-turbo"],
    )
    count: int = Field(100, ge=1, le=1_000_000, description="images in the pool")
    batch_size: int = Field(8, ge=1, le=512, description="images per UNet call (halved on CUDA OOM)")
    steps: int = Field(25, ge=1, le=1000, description="denoising steps")
    guidance: float = Field(7.5, ge=0.0, le=50.0, description="classifier-free guidance; 0 for few-step models")
    scheduler: SchedulerName = Field("dpmpp_2m", description=f"sampler: {', '.join(SCHEDULERS)}")
    resolution: int = Field(512, ge=32, le=2048, multiple_of=8, description="generation side in pixels")
    seed: Seed = Field(0, description="job seed; image i's seed is a hash of (seed, i)")
    vocabulary: DbId | InlineVocabulary | None = Field(
        None, description="saved vocabulary id or inline {template, slots, negative_prompt}; default: built-in"
    )
    output_size: int | None = Field(None, ge=8, le=2048, description="dataset-resolution side; default 32")
    review_size: int = Field(256, ge=32, le=1024)
    mode: Literal["txt2img", "img2img"] = "txt2img"
    strength: float = Field(0.75, gt=0.0, le=1.0, description="img2img: how far from the real image")
    strengths: list[Annotated[float, Field(gt=0.0, le=1.0)]] | None = Field(
        None,
        min_length=1,
        max_length=16,
        description="img2img: several strengths, image i uses strengths[i % n] (DA-Fusion); replaces strength",
    )
    dataset_id: DbId | None = None
    imbalance: ImbalanceSpec | None = None
    vae: PathText | None = Field(None, description="optional VAE / TAESD decoder: id, local dir, or 'tiny'")
    safety_checker: bool = False
    dtype: Literal["fp16", "bf16", "fp32"] | None = Field(None, description="default fp16 on CUDA, fp32 on CPU")
    compile: bool = Field(False, description="torch.compile the UNet (CUDA)")
    chunk_size: int = Field(64, ge=1, le=10_000, description="images committed per checkpoint")
    shards: int | None = Field(SHARDS_DEFAULT, ge=1, le=1024, description=SHARDS_HELP)
    name: str | None = Field(None, max_length=255, description="pool name")
    concept_id: DbId | None = Field(
        None,
        description="a concept from personalize_sd (GET /api/concepts) trained on `model`; prompts use its token "
        "(default vocabulary: built around the token)",
    )

    @field_validator("model", "vae")
    @classmethod
    def _local_dirs_allowed(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A model or VAE given as a path must lie under the operator's allowed directories (checked at
        submit and again by the worker, which validates with its own settings)."""
        settings = (info.context or {}).get("settings")
        looks_local = (
            value and value != "tiny" and (Path(value).expanduser().exists() or value.startswith((".", "/", "~")))
        )
        if looks_local and settings is not None:
            settings.is_allowed(value)  # PathNotAllowed is a ValueError naming --allow-dir
        return value

    @model_validator(mode="after")
    def _img2img_inputs(self) -> GenerateSDParams:
        if self.mode == "img2img":
            if self.dataset_id is None or self.imbalance is None:
                raise ValueError("img2img needs dataset_id and imbalance (it starts from the kept minority images)")
            if int(self.steps * min(self.strengths or [self.strength])) < 1:
                raise ValueError("steps x strength must give at least one denoising step")
        elif self.strengths is not None:
            raise ValueError("strengths are for mode img2img")
        if self.concept_id is not None and self.compile:
            raise ValueError("compile cannot be combined with concept_id (concept weights are swapped into the UNet)")
        return self


def _vocabulary(ctx: JobContext, params: GenerateSDParams, minority: str | None) -> Vocabulary:
    if isinstance(params.vocabulary, InlineVocabulary):
        return Vocabulary.from_dict(params.vocabulary.model_dump())
    if params.vocabulary is None:
        return default_vocabulary(minority or "cat")
    with ctx.session() as session:
        row = session.get(VocabularyRow, params.vocabulary)
        if row is None:
            raise JobError(f"vocabulary {params.vocabulary} not found")
        data = {"template": row.template, "slots": row.slots, "negative_prompt": row.negative_prompt or ""}
    try:
        return Vocabulary.from_dict(data)
    except ValueError as exc:
        raise JobError(f"vocabulary {params.vocabulary}: {exc}") from exc


def _init_images(ctx: JobContext, params: GenerateSDParams) -> tuple[np.ndarray, np.ndarray, str | None, int]:
    """(kept minority images, their dataset indices, minority class name, dataset image side)."""
    with ctx.session() as s:
        ds = open_dataset(s, ctx.store, params.dataset_id)
    real = minority_images(ds, params.imbalance, first_only=True)
    return real.images, real.index, ds.classes[real.classes[0]], ds.image_size[0]


_PIPELINE_CACHE: dict[tuple, Any] = {}  # one loaded pipeline per process (worker or Ray actor): jobs reuse it


def release_pipeline() -> None:
    """Drop this worker's cached pipeline (a training job on the same device needs the memory)."""
    _PIPELINE_CACHE.clear()


def _pipeline(params: GenerateSDParams, device: str, workspace: Path, hooks: Hooks) -> Any:
    from backend.generation.diffusion import load_pipeline

    key = (
        params.model,
        params.mode,
        device,
        params.dtype,
        params.vae,
        params.safety_checker,
        params.compile,
        workspace,
    )
    if key not in _PIPELINE_CACHE:
        _PIPELINE_CACHE.clear()  # free the previous model before loading another
        hooks.progress(0.0, f"loading {params.model}")
        try:
            _PIPELINE_CACHE[key] = load_pipeline(
                params.model,
                mode=params.mode,
                device=device,
                dtype=params.dtype,
                workspace=workspace,
                vae=params.vae,
                safety_checker=params.safety_checker,
                scheduler=params.scheduler,
                compile=params.compile,
            )
        except ValueError as exc:
            raise JobError(str(exc)) from exc
    pipe = _PIPELINE_CACHE[key]
    from backend.generation.diffusion import make_scheduler

    pipe.scheduler = make_scheduler(params.scheduler, pipe.scheduler.config)
    return pipe


def _concept_token(folder: Path) -> str:
    from backend.generation.personalize import read_concept

    return str(read_concept(folder)["token"])


def _use_concept(pipe: Any, folder: Path | None) -> None:
    """Load the job's concept into the cached pipeline (or unload the previous job's)."""
    from backend.generation.personalize import apply_concept

    try:
        apply_concept(pipe, folder)
    except (OSError, ValueError, KeyError) as exc:
        _PIPELINE_CACHE.clear()  # a half-swapped concept must not reach the next job
        raise JobError(f"concept_id: cannot load {folder}: {exc}") from exc


def _by_strength(chunk: list[PromptItem], strengths: list[float]) -> list[list[PromptItem]]:
    """The chunk's items grouped by their img2img strength (one pipeline call takes one strength)."""
    groups: dict[float, list[PromptItem]] = {}
    for item in chunk:
        groups.setdefault(strengths[item.index % len(strengths)], []).append(item)
    return list(groups.values())


@dataclass(frozen=True)
class SDWork:
    """Everything a shard needs to make image i of the job (picklable: it travels to Ray actors)."""

    params: GenerateSDParams
    vocab: Vocabulary
    output_size: int
    base: dict[str, Any]  # metadata every image of the job shares
    workspace: Path
    concept_dir: Path | None = None
    init_pixels: np.ndarray | None = None  # img2img: the kept minority images, image i starts from i % n
    init_idx: np.ndarray | None = None
    done: int = 0  # images of the pool made before this run (a resumed job): per-step progress counts on from them


def sd_worker(work: SDWork, hooks: Hooks, device: str) -> Callable[[list[int]], Iterator[list[PoolItem]]]:
    """Load the pipeline once (per process or Ray actor); the returned worker makes a piece of indices,
    one batch per yielded part. Image i depends only on (params, i): its prompt and seed come from the
    vocabulary, its starting noise from its own seed."""
    from backend.generation.diffusion import generate

    params = work.params
    pipe = _pipeline(params, device, work.workspace, hooks)
    _use_concept(pipe, work.concept_dir)
    strengths = params.strengths or [params.strength]
    batch_size = params.batch_size

    def smaller_batch(size: int, message: str) -> None:
        nonlocal batch_size
        batch_size = size
        hooks.log(message, "warning")

    made = 0  # images this worker finished (each process or actor counts its own)
    first: tuple[float, float] | None = None  # (time, images) at the first denoising step

    def step(n: int, k: int, steps: int, latents: Any) -> None:
        """Progress, images/s and ETA from every denoising step, and a picture of the batch being denoised.

        On a Ray actor the hooks lead nowhere (the job follows finished parts); here they are the job's."""
        nonlocal first
        images = made + n * k / steps
        now = time.monotonic()
        if first is None:
            first = (now, images)
        rate = (images - first[1]) / (now - first[0]) if now > first[0] else 0.0
        start = work.done + made + 1
        which = f"image {start}" if n == 1 else f"images {start}–{start + n - 1}"
        speed = f" · {rate:.2f} images/s" if rate > 0 else ""
        hooks.progress((work.done + images) / params.count, f"{which} of {params.count}: step {k}/{steps}{speed}")
        if hooks.preview is not None:
            from backend.generation.diffusion import latent_preview

            hooks.preview(lambda: latent_preview(latents))  # made only when the throttle lets it through

    def run(piece: list[int]) -> Iterator[list[PoolItem]]:
        nonlocal made
        chunk = [work.vocab.item(i, params.seed) for i in piece]
        for group in _by_strength(chunk, strengths):
            strength = strengths[group[0].index % len(strengths)]
            for b in range(0, len(group), batch_size):
                batch = group[b : b + batch_size]
                init = None
                if work.init_pixels is not None:
                    init = [work.init_pixels[item.index % len(work.init_pixels)] for item in batch]
                try:
                    images = generate(
                        pipe,
                        batch,
                        steps=params.steps,
                        guidance=params.guidance,
                        resolution=params.resolution,
                        output_size=work.output_size,
                        negative_prompt=work.vocab.negative_prompt,
                        init_images=init,
                        strength=strength if init is not None else None,
                        batch_size=batch_size,
                        review_size=params.review_size,
                        hooks=hooks,
                        on_batch_size=smaller_batch,
                        on_step=step,
                    )
                except ValueError as exc:
                    raise JobError(str(exc)) from exc
                part = []
                for g in images:
                    meta = work.base | {"index": g.item.index, "prompt": g.item.prompt, "slots": g.item.slots}
                    meta |= {"seed": g.item.seed, "output_size": work.output_size}
                    if work.init_idx is not None:
                        meta["init_image_index"] = int(work.init_idx[g.item.index % len(work.init_idx)])
                        meta["strength"] = strength
                    part.append(PoolItem(g.item.index, meta, g.image, g.review))
                made += len(part)
                yield part

    return run


@job_kind("generate_sd", GenerateSDParams)
def generate_sd(ctx: JobContext, params: GenerateSDParams) -> dict:
    """Generate a pool of candidate images with Stable Diffusion from a prompt vocabulary."""
    init_pixels = init_idx = None
    minority = params.imbalance.minority_names[0] if params.imbalance and params.imbalance.minority_names else None
    dataset_side = None
    if params.mode == "img2img":
        init_pixels, init_idx, minority, dataset_side = _init_images(ctx, params)
    elif params.dataset_id is not None and params.output_size is None:
        with ctx.session() as s:
            dataset_side = open_dataset(s, ctx.store, params.dataset_id).image_size[0]
    output_size = params.output_size or dataset_side or 32
    concept_dir, token = None, None
    if params.concept_id is not None:
        with ctx.session() as s:  # before any pool exists: a wrong concept fails the job at once
            concept_dir = ctx.store.path(usable_concept(s, ctx.store, params.concept_id, params.model))
        token = _concept_token(concept_dir)
    vocab = _vocabulary(ctx, params, token or minority)

    with ctx.session() as session:
        pool_id, done = pool_for_job(
            session,
            ctx.job_id,
            name=params.name or f"SD {params.model} ({params.mode})",
            kind="sd",
            params=params.model_dump(mode="json") | {"output_size": output_size},
        )
    with dropped_if_left_empty(ctx.session, pool_id):
        todo = [i for i in range(params.count) if i not in done]
        if done:
            ctx.log(f"resuming pool {pool_id}: {len(done)} images exist, {len(todo)} to go")
        if not todo:
            return {"pool_id": pool_id, "count": params.count}

        base = {
            "model": params.model,
            "scheduler": params.scheduler,
            "steps": params.steps,
            "guidance": params.guidance,
            "width": params.resolution,
            "height": params.resolution,
            "mode": params.mode,
            "job_id": ctx.job_id,
            "negative_prompt": vocab.negative_prompt,
        }
        if params.mode == "img2img":
            base |= {"strength": params.strength, "dataset_id": params.dataset_id}
        if params.concept_id is not None:
            base |= {"concept_id": params.concept_id, "concept_token": token}
        work = SDWork(
            params,
            vocab,
            output_size,
            base,
            ctx.settings.workspace_dir,
            concept_dir,
            init_pixels,
            None if init_idx is None else np.asarray(init_idx),
            done=len(done),
        )
        ctx.log(f"loading {params.model} ({params.mode}, {params.scheduler}, {params.steps} steps)")
        ctx.log(f"generating {len(todo)} images into pool {pool_id}, batches of {params.batch_size}")
        fill_pool(ctx, pool_id, sd_worker, work, params, done=len(done), todo=todo)
        return {"pool_id": pool_id, "count": params.count}
