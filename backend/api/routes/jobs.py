"""/api/jobs: submit, list, inspect, log, cancel and retry jobs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from pydantic import ValidationError
from sqlalchemy import func, select

from backend.api.deps import DatabaseDep, ReadSessionDep, SettingsDep, StoreDep, not_found
from backend.api.errors import field_error
from backend.api.schemas import JobCreate, JobKindOut, JobLogOut, JobOut, JobPage, JobStatus
from backend.core.types import DbId, DbOffset
from backend.db.models import Job, JobLog
from backend.jobs import queue
from backend.jobs.context import preview_path
from backend.jobs.registry import all_kinds, get_kind
from backend.services.admission import admit

router = APIRouter(prefix="/jobs", tags=["jobs"])


# Where a form should start on a CPU server: the params' own defaults (what an omitted param means) are the
# study's GPU scale and would keep a first CPU run busy for hours. Each entry: (value, why) -- the studio
# shows the why next to the field.
CPU_SUGGESTIONS: dict[str, dict[str, tuple[Any, str]]] = {
    "train_gan": {
        "image_size": (32, "32 on this CPU server: one block fewer than 64, several times faster"),
        "width": (0.5, "0.5 on this CPU server: half the channels of the study's GPU model"),
        "epochs": (
            5,
            "5 on this CPU server to see it work; a grey, blurry grid after the first 2 epochs is expected "
            "(a DCGAN needs tens of epochs to draw shapes)",
        ),
    },
    # The digits demo's diffusion settings (examples/digits_diffusion_cpu.yaml): the whole cut set trains in
    # about 2.5 minutes on 2 CPU cores; the defaults (32 px, width 1, attention, 50 epochs) took an ETA of 5.5 h.
    "train_diffusion": {
        "image_size": (16, "16 on this CPU server: a quarter of the pixels of 32 (the digits are 8x8 at heart)"),
        "width": (0.25, "0.25 on this CPU server: channels 16-32-64, about 16x less work than width 1"),
        "layers_per_block": (1, "1 on this CPU server: half the ResNet layers"),
        "attention": (False, "off on this CPU server: self-attention is the costliest layer on a CPU"),
        "epochs": (40, "40 on this CPU server: about 2.5 minutes for the 1,300 digits on 2 cores"),
        "batch_size": (32, "32 on this CPU server: more optimiser steps per epoch for a small set"),
        "lr": (0.002, "0.002 on this CPU server: a small model on a small set trains faster at a higher rate"),
        "class_balance": (0.7, "0.7: a class of a few images is drawn often enough to train its embedding"),
    },
    "select": {
        "mc_samples": (10, "10 on this CPU server: half the head passes of the study's 20 (the backbone runs once)"),
    },
}


def _suggested(name: str, schema: dict[str, Any], device: str) -> dict[str, Any]:
    """``schema`` with ``x-suggested`` (a form's starting value on ``device``) and the reason in the
    description of each param :data:`CPU_SUGGESTIONS` names for ``name``, on a CPU server."""
    if device.startswith("cuda") or name not in CPU_SUGGESTIONS:
        return schema
    props = schema.get("properties", {})
    for param, (value, why) in CPU_SUGGESTIONS[name].items():
        if param in props:
            prop = props[param]
            prop["x-suggested"] = value
            prop["description"] = f"{prop['description']}. {why}" if prop.get("description") else why
    return schema


@router.get("/kinds", response_model=list[JobKindOut])
def list_kinds(settings: SettingsDep) -> list[JobKindOut]:
    """Every job kind this server accepts, with the JSON schema of its params. On a CPU server a param
    may carry ``x-suggested``: the value a form should start from there (its ``default`` stays what an
    omitted param means), with the reason in its description."""
    return [
        JobKindOut(
            name=k.name,
            description=k.description,
            params_schema=_suggested(k.name, k.params_model.model_json_schema(), settings.device),
        )
        for k in sorted(all_kinds().values(), key=lambda k: k.name)
    ]


@router.post("", response_model=JobOut, status_code=status.HTTP_201_CREATED)
def submit_job(
    body: JobCreate, db: DatabaseDep, session: ReadSessionDep, settings: SettingsDep, response: Response
) -> Job:
    """Queue a job. Unknown kinds and invalid params answer 422 naming the field; a repeated
    ``idempotency_key`` returns the job it created the first time (200) when kind and params are the
    same, and 409 naming what differs when they are not. Params that name rows they cannot use (a missing
    or unfinished dataset, pool, selection or model; a budget or count beyond what the pools hold) answer
    422 naming the field before anything is queued (``backend.services.admission``)."""
    kind = get_kind(body.kind)
    if kind is None:
        known = ", ".join(sorted(all_kinds())) or "none"
        raise field_error(("body", "kind"), f"unknown job kind {body.kind!r}; known kinds: {known}")
    try:
        params = kind.params_model.model_validate(body.params, context={"settings": settings})
    except ValidationError as exc:
        # Re-raise pydantic's errors under body.params.<field> so the 422 names the exact field.
        errors = [{**e, "loc": ("body", "params", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None
    admit(session, body.kind, params)  # Invalid -> 422 naming body.params.<field>
    try:
        job, created = queue.submit(
            db,
            body.kind,
            params.model_dump(mode="json"),
            idempotency_key=body.idempotency_key,
            max_attempts=settings.max_attempts,
        )
    except queue.IdempotencyConflict as exc:
        raise HTTPException(status_code=status.HTTP_409_CONFLICT, detail=str(exc)) from None
    if not created:
        response.status_code = status.HTTP_200_OK
    return job


@router.get("", response_model=JobPage)
def list_jobs(
    session: ReadSessionDep,
    kind: str | None = None,
    status_: JobStatus | None = Query(None, alias="status"),
    limit: int = Query(50, ge=1, le=500),
    offset: DbOffset = 0,
) -> JobPage:
    """Jobs, newest first, optionally filtered by kind and status."""
    q = select(Job)
    if kind:
        q = q.where(Job.kind == kind)
    if status_:
        q = q.where(Job.status == status_)
    total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    items = session.scalars(q.order_by(Job.id.desc()).limit(limit).offset(offset)).all()
    return JobPage(items=[JobOut.model_validate(j) for j in items], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: DbId, session: ReadSessionDep) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise not_found("job", job_id)
    return job


@router.get("/{job_id}/preview", response_class=FileResponse)
def get_preview(job_id: DbId, session: ReadSessionDep, store: StoreDep) -> FileResponse:
    """A running job's picture of its work in progress, as WebP: a ``generate_sd`` job's current batch, redrawn
    from its latents at every denoising step (a linear latent-to-RGB map, not a VAE decode). 404 until the job
    has drawn one; the last one stays after the job ends."""
    if session.get(Job, job_id) is None:
        raise not_found("job", job_id)
    path = store.path(preview_path(job_id))
    if not path.is_file():
        raise not_found("preview of job", job_id)
    return FileResponse(path, media_type="image/webp", headers={"Cache-Control": "no-store"})


@router.get("/{job_id}/logs", response_model=list[JobLogOut])
def get_logs(
    job_id: DbId, session: ReadSessionDep, after_id: DbOffset = 0, limit: int = Query(500, ge=1, le=5000)
) -> list[JobLog]:
    if session.get(Job, job_id) is None:
        raise not_found("job", job_id)
    q = select(JobLog).where(JobLog.job_id == job_id, JobLog.id > after_id).order_by(JobLog.id).limit(limit)
    return list(session.scalars(q))


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: DbId, db: DatabaseDep) -> Job:
    """Cancel a queued job now, or ask a running one to stop at its next chunk boundary (within seconds)."""
    job = queue.request_cancel(db, job_id)
    if job is None:
        raise not_found("job", job_id)
    if job.status in ("succeeded", "failed"):
        raise HTTPException(status_code=409, detail=f"job {job_id} already {job.status}")
    return job


@router.post("/{job_id}/retry", response_model=JobOut)
def retry_job(job_id: DbId, db: DatabaseDep) -> Job:
    """Queue a failed or cancelled job again; it resumes from its last checkpoint."""
    job = queue.retry(db, job_id)
    if job is None:
        raise not_found("job", job_id)
    if job.status not in ("queued",):
        raise HTTPException(
            status_code=409, detail=f"job {job_id} is {job.status}; only failed or cancelled jobs can be retried"
        )
    return job
