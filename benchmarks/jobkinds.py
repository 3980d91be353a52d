"""Job kinds used only by the benchmarks (loaded into workers with --plugins benchmarks.jobkinds)."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from backend.jobs.context import JobContext
from backend.jobs.registry import job_kind


class ProgressParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    updates: int = Field(200, ge=1)
    interval_s: float = Field(0.01, ge=0)
    mode: Literal["buffered", "direct"] = "buffered"


@job_kind("bench_progress", ProgressParams)
def bench_progress(ctx: JobContext, params: ProgressParams) -> dict:
    """Report progress ``updates`` times: buffered (ctx.progress) or as a direct DB write each time."""
    for i in range(params.updates):
        ctx.stop_point()
        if params.mode == "buffered":
            ctx.progress((i + 1) / params.updates, f"step {i + 1}")
        else:
            ctx.save_checkpoint({"step": i + 1})  # a committed write per update: the naive pattern
        time.sleep(params.interval_s)
    return {"updates": params.updates}


class NoopParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@job_kind("bench_noop", NoopParams)
def bench_noop(ctx: JobContext, params: NoopParams) -> dict:
    """Does nothing; measures queue latency."""
    return {}
