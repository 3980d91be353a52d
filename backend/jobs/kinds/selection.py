"""Job kind ``select``: active learning picks pool images for the minority class, round by round."""

from __future__ import annotations

import shutil
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from backend.core.hooks import Stopped
from backend.data.imbalance import ImbalanceSpec
from backend.db.models import Selection
from backend.jobs.context import JobContext
from backend.jobs.errors import JobError
from backend.jobs.registry import job_kind
from backend.selection.review import DEFAULT_NEAR_COPY_THRESHOLD
from backend.services.datasets import imbalance_of, open_dataset
from backend.services.errors import Invalid
from backend.services.pools import decode_pool, pool_rows
from backend.services.rows import row_for_job
from backend.services.selections import store_picks


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


@job_kind("select", SelectParams)
def select_job(ctx: JobContext, params: SelectParams) -> dict[str, Any]:
    """Active learning: pick ``budget`` pool images for the minority class, round by round."""
    from backend.selection.loop import SelectionConfig, config_dict, run_selection

    with ctx.session() as session:
        ds = open_dataset(session, ctx.store, params.dataset_id)
        target = params.target_class or params.imbalance.minority_names[0]
        if target not in ds.classes:
            raise Invalid("target_class", f"{target!r} is not a class of dataset {params.dataset_id}: {ds.classes}")
        kept = imbalance_of(ds, params.imbalance).kept_idx
        rows = pool_rows(session, params.pool_ids)
        pool_ids = [r.id for r in rows]
        files = [r.file for r in rows]
        selection_id = row_for_job(
            session,
            Selection,
            ctx.job_id,
            lambda: Selection(dataset_id=params.dataset_id, job_id=ctx.job_id, params=params.model_dump(mode="json")),
        ).id
    if params.budget > len(pool_ids):
        raise Invalid("budget", f"{params.budget} exceeds the {len(pool_ids)} images in pools {params.pool_ids}")
    pool_x = decode_pool(ctx.store, files, ds.image_size, f"selections/{selection_id}/pool.npy", ctx.hooks)
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
            store_picks(session, selection_id, state["picks"])
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
        raise Stopped("stopped after the last finished round")
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
