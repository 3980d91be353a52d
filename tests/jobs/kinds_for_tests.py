"""Job kinds that exist only for the test suite (loaded with --plugins tests.jobs.kinds_for_tests)."""

from __future__ import annotations

import os
import signal
import time

from pydantic import BaseModel, ConfigDict, Field

from backend.jobs.context import JobContext
from backend.jobs.registry import job_kind


class EchoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(0, ge=0)


@job_kind("test_echo", EchoParams)
def echo(ctx: JobContext, params: EchoParams) -> dict:
    """Return the params; logs which worker ran it (the race test counts these lines)."""
    ctx.log(f"ran n={params.n}")
    return {"n": params.n}


class CountParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chunks: int = Field(10, ge=1)
    chunk_s: float = Field(0.1, ge=0)


@job_kind("test_count", CountParams)
def count(ctx: JobContext, params: CountParams) -> dict:
    """Write one output file per chunk, checkpointing after each; resumes where it stopped."""
    start = int(ctx.checkpoint.get("next", 0))
    for i in range(start, params.chunks):
        ctx.stop_point()
        time.sleep(params.chunk_s)
        # Output keyed by chunk index: a chunk redone after a crash overwrites, never duplicates.
        ctx.store.write_text(f"test_out/{ctx.job_id}/{i}.txt", f"attempt {ctx.attempt}\n")
        ctx.save_checkpoint({"next": i + 1})
        ctx.progress((i + 1) / params.chunks, f"chunk {i + 1}/{params.chunks}")
    return {"resumed_from": start, "attempt": ctx.attempt}


class FailParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str = "boom"


@job_kind("test_fail", FailParams)
def fail(ctx: JobContext, params: FailParams) -> dict:
    """Raise an unexpected error (the worker must record it and keep serving)."""
    raise ValueError(params.message)


@job_kind("test_oom", FailParams)
def oom(ctx: JobContext, params: FailParams) -> dict:
    """Raise the error torch raises when CUDA runs out of memory (the message must say what to do)."""
    import torch

    raise torch.OutOfMemoryError(f"CUDA out of memory. {params.message}")


@job_kind("test_crash", FailParams)
def crash(ctx: JobContext, params: FailParams) -> dict:
    """Kill the worker process outright, as an out-of-memory kill would."""
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


@job_kind("test_malloc", EchoParams)
def malloc(ctx: JobContext, params: EchoParams) -> dict:
    """Whether the worker process running the job has backend.core.allocator's malloc settings."""
    from backend.core import allocator

    return {"applied": allocator._done}
