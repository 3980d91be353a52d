"""Job kind ``select``: active learning picks pool images for the minority class, round by round."""

from __future__ import annotations

import shutil
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from backend.core.hooks import Stopped
from backend.core.types import DbId, Name
from backend.data.imbalance import ImbalanceSpec
from backend.db.models import Selection
from backend.jobs.context import JobContext
from backend.jobs.errors import JobError
from backend.jobs.registry import job_kind
from backend.selection.loop import SelectionConfig, SelectionSpec, run_selection
from backend.services.assessments import assess
from backend.services.datasets import imbalance_of, open_dataset
from backend.services.errors import DomainError, Invalid
from backend.services.pools import decode_pool, pool_rows
from backend.services.rows import row_for_job
from backend.services.selections import store_picks


# -- select -----------------------------------------------------------------------------------------
class SelectParams(SelectionSpec):
    """The selection's own knobs (``SelectionSpec``: defaults, limits, descriptions) plus what to select
    from and for."""

    dataset_id: DbId = Field(description="the dataset whose kept real images train the round classifier")
    imbalance: ImbalanceSpec = Field(description="the imbalance that makes the training set")
    pool_ids: list[DbId] = Field(min_length=1, max_length=100, description="candidate pools, searched in this order")
    target_class: Name | None = Field(None, description="the class picks are labelled as (default: the one minority)")

    @model_validator(mode="after")
    def _check(self) -> SelectParams:
        if len(set(self.pool_ids)) != len(self.pool_ids):
            raise ValueError("pool_ids lists a pool twice")
        if self.target_class is None and len(self.imbalance.minority_names) != 1:
            raise ValueError("target_class is required unless the imbalance names exactly one minority class")
        return self


@job_kind("select", SelectParams)
def select_job(ctx: JobContext, params: SelectParams) -> dict[str, Any]:
    """Active learning: pick ``budget`` pool images for the minority class, round by round."""

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
    cfg = SelectionConfig(**params.model_dump(include=set(SelectionSpec.model_fields)), device=ctx.settings.device)

    def on_round_end(r: int, state: dict[str, Any]) -> None:
        # Rows first, then the checkpoint: a crash in between re-runs the round and re-inserts nothing.
        with ctx.session() as session:
            store_picks(session, selection_id, state["picks"])
            sel = session.get(Selection, selection_id)
            sel.rounds = state["rounds"]
            if state.get("done"):
                sel.feature_map = state["feature_map"]
                sel.info = {**(sel.info or {}), "reserve": state["reserve"], "quality": state.get("quality", {})}
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
            "config": cfg.model_dump(),
            "real_counts": {c: int((real_y == i).sum()) for i, c in enumerate(ds.classes)},
            "pool_size": len(pool_ids),
        }
    _assess_pools(ctx, params, ds, kept, target, selection_id)
    shutil.rmtree(ctx.store.path(f"selections/{selection_id}"), ignore_errors=True)  # the decoded pool copy
    return {"selection_id": selection_id, "picks": len(result.picks)}


def _assess_pools(ctx: JobContext, params: SelectParams, ds, kept, target: str, selection_id: int) -> None:
    """The two-sample test of each pool selected from (stored with the pool and in the selection's info);
    a pool too small or a failure to test is logged, never fails the selection."""
    results = {}
    for pool_id in params.pool_ids:
        with ctx.session() as session:
            try:
                results[str(pool_id)] = assess(session, ctx.store, ds, params.dataset_id, kept, pool_id, target)
            except (ValueError, DomainError) as exc:
                ctx.log(f"pool {pool_id}: two-sample test skipped ({exc})")
                continue
        a = results[str(pool_id)]
        ctx.log(f"pool {pool_id}: domain AUC {a['domain_auc']} ({a['method']}); {a['reason']}")
    with ctx.session() as session:
        sel = session.get(Selection, selection_id)
        sel.info = {**(sel.info or {}), "assessments": results}
