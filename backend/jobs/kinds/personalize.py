"""Job kind `personalize_sd`: Stable Diffusion personalised on the real minority images (textual inversion
or LoRA), saved as a concept that `generate_sd` loads with ``concept_id``.

Params extend the core's :class:`PersonalizeConfig` (every setting's default, limit and description live
there). Torch and diffusers are imported inside the handler, so registering the kind stays cheap. Every
``sample_every`` steps: training state, concept weights, sample grid, then the row, then the checkpoint;
a crash in between redoes that stretch, which is a pure function of the saved state.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from backend.config import PathNotAllowed
from backend.db.models import Concept
from backend.generation.imagefiles import encode_png
from backend.generation.personalize_config import PersonalizeConfig
from backend.jobs.context import JobContext
from backend.jobs.errors import JobError
from backend.jobs.kinds.gan import SOURCE_FORMS, DatasetSource, PathSource, Source, refuse_empty_minority
from backend.jobs.kinds.generation import release_pipeline
from backend.jobs.registry import job_kind
from backend.services.concepts import artifact_path, prune_states, samples_path, state_path
from backend.services.datasets import extract_upload, minority_images, open_dataset
from backend.services.rows import row_for_job

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
STATE_KIND = "sd-concept"


class PersonalizeSDParams(PersonalizeConfig):
    """The personalisation settings plus the base model and where the real images come from."""

    model: str = Field(
        DEFAULT_MODEL,
        min_length=1,
        max_length=4096,
        description="base pipeline: Hugging Face id, local pipeline directory, or 'tiny' (randomly initialised "
        "and built locally: it draws noise, for tests and offline wiring only)",
        examples=["tiny", DEFAULT_MODEL],
    )
    source: Source = Field(description=f"{SOURCE_FORMS}; a dataset gives the kept images of its first minority class")
    name: str | None = Field(None, max_length=255, description="concept name")

    @field_validator("model")
    @classmethod
    def _local_dirs_allowed(cls, value: str, info: ValidationInfo) -> str:
        settings = (info.context or {}).get("settings")
        looks_local = value != "tiny" and (Path(value).expanduser().exists() or value.startswith((".", "/", "~")))
        if looks_local and settings is not None:
            settings.is_allowed(value)  # PathNotAllowed is a ValueError naming --allow-dir
        return value

    @model_validator(mode="after")
    def _has_images(self) -> PersonalizeSDParams:
        refuse_empty_minority(self.source, "the concept is learned from the kept minority images")
        return self

    def config(self) -> PersonalizeConfig:
        return PersonalizeConfig(**self.model_dump(include=set(PersonalizeConfig.model_fields)))


def _images(ctx: JobContext, params: PersonalizeSDParams) -> tuple[np.ndarray, str | None, dict[str, Any]]:
    """(uint8 NHWC real images, their class name if known, JSON summary of the source)."""
    source = params.source
    if isinstance(source, DatasetSource):
        with ctx.session() as s:
            ds = open_dataset(s, ctx.store, source.dataset_id)
        real = minority_images(ds, source.imbalance, "source.imbalance", first_only=True)
        name = ds.classes[real.classes[0]]
        info = {"kind": "dataset", "dataset_id": source.dataset_id, "class": name, "images": len(real.images)}
        return real.images, name, info
    from backend.generation.gan_images import load_image_folder

    if isinstance(source, PathSource):
        try:
            folder = ctx.settings.is_allowed(source.path)
        except PathNotAllowed as exc:
            raise JobError(f"source.path: {exc}") from exc
        info: dict[str, Any] = {"kind": "path", "path": str(folder)}
    else:
        folder, _skipped = extract_upload(ctx.store, source.upload_id, ctx.hooks)
        info = {"kind": "upload", "upload_id": source.upload_id}
    try:
        loaded = load_image_folder(Path(folder), params.resolution, hooks=ctx.hooks.scaled(0.0, 0.0))
    except ValueError as exc:
        raise JobError(f"source: {exc}") from exc
    if len(loaded.images) == 0:
        raise JobError("source: no readable image")
    return loaded.images, None, info | {"images": len(loaded.images), "skipped_count": len(loaded.skipped)}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON (and PostgreSQL) has no NaN


@job_kind("personalize_sd", PersonalizeSDParams)
def personalize_sd(ctx: JobContext, params: PersonalizeSDParams) -> dict[str, Any]:
    """Learn the real minority images as a token (textual inversion) or LoRA weights; resumable."""
    from backend.core.checkpoint import CheckpointError, load_state, save_state
    from backend.generation.diffusion import load_pipeline
    from backend.generation.personalize import ConceptTrainer, save_concept

    config = params.config()
    with ctx.session() as s:
        concept_id = row_for_job(
            s,
            Concept,
            ctx.job_id,
            lambda: Concept(
                name=params.name or f"{config.token} ({config.method})",
                job_id=ctx.job_id,
                method=config.method,
                base_model=params.model,
                token=config.token,
                params=params.model_dump(mode="json"),
                steps_done=0,
                history=[],
                info={},
            ),
        ).id
    images, class_name, source_info = _images(ctx, params)
    ctx.progress(0.0, f"loading {params.model}")
    release_pipeline()  # the worker's cached generation pipeline would hold device memory training needs
    try:
        pipe = load_pipeline(
            params.model, device=ctx.settings.device, dtype="fp32", workspace=ctx.settings.workspace_dir
        )
        trainer = ConceptTrainer(pipe, config, images, config.initializer or class_name or "object")
    except ValueError as exc:
        raise JobError(str(exc)) from exc
    start = int(ctx.checkpoint.get("step", 0))
    if start:
        rel = state_path(concept_id, start)
        try:
            trainer.restore(load_state(ctx.store.path(rel).read_bytes(), STATE_KIND))
        except (OSError, CheckpointError, ValueError) as exc:
            raise JobError(f"checkpoint {rel} of concept {concept_id}: {exc}; cannot resume") from exc
        ctx.log(f"concept {concept_id}: resuming after step {start}")
    with ctx.session() as s:
        row = s.get(Concept, concept_id)
        row.info = {**(row.info or {}), "source": source_info, "device": ctx.settings.device}

    while trainer.step < config.steps:
        lo = trainer.step / config.steps
        hi = min(trainer.step + config.sample_every, config.steps) / config.steps
        t0 = time.monotonic()
        loss = trainer.train(config.sample_every, ctx.hooks.scaled(lo, hi, "training"))
        rate = (hi - lo) * config.steps / max(time.monotonic() - t0, 1e-9)
        # Files first, then the row, then the checkpoint: a crash in between redoes this stretch.
        ctx.store.write_bytes(state_path(concept_id, trainer.step), save_state(trainer.state(), STATE_KIND))
        save_concept(trainer, ctx.store.path(artifact_path(concept_id)), params.model)
        grid = trainer.sample_grid()
        if grid is not None:
            ctx.store.write_bytes(samples_path(concept_id, trainer.step), encode_png(grid))
        with ctx.session() as s:
            row = s.get(Concept, concept_id)
            row.steps_done = trainer.step
            row.history = [{"step": h.step, "loss": _finite(h.loss)} for h in trainer.history]
            row.info = {**(row.info or {}), "steps_per_s": round(rate, 3)}
        ctx.save_checkpoint({"step": trainer.step, "concept_id": concept_id})
        prune_states(ctx.store, concept_id, trainer.step)
        ctx.log(f"step {trainer.step}/{config.steps}: loss {loss:.4f}, {rate:.2f} steps/s")
    return {"concept_id": concept_id, "steps_done": trainer.step, "artifact_path": artifact_path(concept_id)}
