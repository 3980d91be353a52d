"""Job kind ``assess_pool``: can a small classifier tell a pool's images from real images of their class?

The classifier two-sample test of ``backend/selection/twosample.py``, stored with the pool (``GET
/api/pools/{id}`` shows it as ``assessment``) and flagged at ``domain_auc`` >= 0.9 with the reason and the
remedy. The ``select`` job runs the same test on each pool it selects from.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from backend.core.types import DbId, Seed
from backend.data.imbalance import ImbalanceSpec
from backend.db.models import Pool
from backend.jobs.context import JobContext
from backend.jobs.errors import JobError
from backend.jobs.registry import job_kind
from backend.selection.twosample import MIN_PER_SIDE
from backend.services.assessments import assess, pool_label
from backend.services.datasets import imbalance_of, open_dataset
from backend.services.errors import Invalid


class AssessPoolParams(BaseModel):
    """Params of ``assess_pool``."""

    model_config = ConfigDict(extra="forbid")

    pool_id: DbId = Field(description="the pool to test")
    dataset_id: DbId = Field(description="the dataset whose real training images it is tested against")
    imbalance: ImbalanceSpec | None = Field(
        None, description="the imbalance whose kept images are the real side (default: every training image)"
    )
    label: str | None = Field(
        None,
        max_length=255,
        description="the class the pool's images show (default: the class a diffusion pool was sampled as, "
        "else the imbalance's one minority class)",
    )
    seed: Seed = Field(0, description="seeds the halves and the subsample")


@job_kind("assess_pool", AssessPoolParams)
def assess_pool(ctx: JobContext, params: AssessPoolParams) -> dict[str, Any]:
    """The two-sample test of one pool (seconds: logistic regression on at most 1,000 images a side)."""
    ctx.progress(0.0, "loading real and generated images")
    with ctx.session() as s:
        ds = open_dataset(s, ctx.store, params.dataset_id)
        pool = s.get(Pool, params.pool_id)
        if pool is None:
            raise Invalid("pool_id", f"pool {params.pool_id} does not exist")
        minority = params.imbalance.minority_names if params.imbalance is not None else []
        label = pool_label(pool, params.label, minority)
        if label not in ds.classes:
            raise Invalid(
                "pool_id", f"pool {pool.id} shows class {label!r}, not a class of dataset {params.dataset_id}"
            )
        kept = np.arange(len(ds.train_y)) if params.imbalance is None else imbalance_of(ds, params.imbalance).kept_idx
        if not (np.asarray(ds.train_y)[kept] == ds.classes.index(label)).any():
            raise Invalid("imbalance", f"no real image of {label!r} is left to compare with")
        try:
            result = assess(s, ctx.store, ds, params.dataset_id, kept, pool.id, label, params.seed, ctx.progress)
        except ValueError as exc:
            raise JobError(str(exc)) from exc
    ctx.log(f"pool {params.pool_id}: domain AUC {result['domain_auc']} ({result['method']}); {result['reason']}")
    ctx.progress(1.0, f"domain AUC {result['domain_auc']} ({result['method']})")
    return {"pool_id": params.pool_id, "assessment": result, "min_per_side": MIN_PER_SIDE}
