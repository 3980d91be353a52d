"""Admission: what the database can tell about a job's params when it is submitted, checked before it is queued.

The params models check each value on its own; this step checks them against the rows they name, so a job
that cannot succeed is refused at once with a 422 naming the field (``Invalid("params.budget", ...)``)
instead of failing after minutes of work. One small check per referenced row kind, and one table
(:data:`CHECKS`) saying which params of which job kind name which rows.

"Usable" follows what each kind's handler will later need:

- a dataset exists (its row is written when its prepare job succeeds) and has the classes the params name;
- a pool's generation or import has ended (queued or running pools are still growing) and holds images;
- a selection's job succeeded and it has picks a variant may use (accepted, or pending and not flagged);
- a GAN or diffusion model has a finished epoch, a concept a finished step (sampling uses the last one).

Experiments submit their stages through the queue directly, each once the stages it needs have finished,
so this step only guards the public ``POST /api/jobs``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from sqlalchemy.orm import Session

from backend.db.models import Concept, Dataset, Diffusion, Gan, Job, Pool, Selection, Vocabulary
from backend.services.errors import Invalid
from backend.services.selections import selected_image_ids

UNFINISHED = ("queued", "running")


def _job_status(session: Session, job_id: int | None) -> str | None:
    if job_id is None:
        return None
    job = session.get(Job, job_id)
    return None if job is None else job.status


def _row(session: Session, model: type, ident: int, field: str, what: str) -> Any:
    row = session.get(model, ident)
    if row is None:
        raise Invalid(field, f"{what} {ident} does not exist")
    return row


def dataset(session: Session, ident: int, field: str, imbalance: Any = None, imbalance_field: str = "") -> Dataset:
    """Dataset ``ident``, checked to have every class the imbalance names as minority."""
    row = _row(session, Dataset, ident, field, "dataset")
    if imbalance is not None:
        unknown = [c for c in imbalance.minority_names if c not in (row.classes or [])]
        if unknown:
            raise Invalid(
                f"{imbalance_field}.minority", f"{unknown} not classes of dataset {ident}; choose from {row.classes}"
            )
    return row


def pool(session: Session, ident: int, field: str) -> Pool:
    """Pool ``ident``, finished (its job no longer writing) and not empty."""
    row = _row(session, Pool, ident, field, "pool")
    status = _job_status(session, row.job_id)
    if status in UNFINISHED:
        raise Invalid(field, f"pool {ident} is still being made (job #{row.job_id} is {status}); wait for it to end")
    if row.count < 1:
        raise Invalid(field, f"pool {ident} holds no images")
    return row


def selection(session: Session, ident: int, field: str) -> int:
    """The number of images a variant may take from selection ``ident``, checked to have succeeded."""
    row = _row(session, Selection, ident, field, "selection")
    status = _job_status(session, row.job_id)
    if status not in (None, "succeeded"):
        raise Invalid(field, f"selection {ident} did not finish (job #{row.job_id} is {status})")
    usable = len(selected_image_ids(session, ident))
    if usable < 1:
        raise Invalid(field, f"selection {ident} has no accepted or pending picks")
    return usable


def _trained(session: Session, model: type, ident: int, field: str, what: str, done: str) -> Any:
    row = _row(session, model, ident, field, what)
    if getattr(row, done) < 1:
        status = _job_status(session, row.job_id)
        hint = f" (job #{row.job_id} is {status})" if status else ""
        raise Invalid(field, f"{what} {ident} has no finished {done.removesuffix('s_done')} yet{hint}")
    return row


# -- per kind ----------------------------------------------------------------------------------------
def _select(session: Session, p: Any) -> None:
    dataset(session, p.dataset_id, "params.dataset_id", p.imbalance, "params.imbalance")
    if p.target_class is not None:
        classes = session.get(Dataset, p.dataset_id).classes or []
        if p.target_class not in classes:
            raise Invalid("params.target_class", f"{p.target_class!r} is not a class of dataset {p.dataset_id}")
    sizes = {pid: pool(session, pid, f"params.pool_ids.{i}").count for i, pid in enumerate(p.pool_ids)}
    total = sum(sizes.values())
    if p.budget > total:
        each = ", ".join(f"pool {k}: {v}" for k, v in sizes.items())
        raise Invalid("params.budget", f"{p.budget} exceeds the {total} images of the chosen pools ({each})")


def _benchmark(session: Session, p: Any) -> None:
    dataset(session, p.dataset_id, "params.dataset_id", p.imbalance, "params.imbalance")
    for i, v in enumerate(p.variants):
        if isinstance(v, str):
            continue
        where = f"params.variants.{i}"
        if v.selection_id is not None:
            have, source = selection(session, v.selection_id, f"{where}.selection_id"), f"selection {v.selection_id}"
        else:
            have, source = pool(session, v.pool_id, f"{where}.pool_id").count, f"pool {v.pool_id}"
        if v.count is not None and v.count > have:
            raise Invalid(f"{where}.count", f"variant {v.name!r} asks for {v.count} images; {source} holds {have}")
        classes = None
        if v.selection_id is not None and v.label is not None:
            _picked_for(session, v.selection_id, v.label, f"{where}.label")
        for j, other in enumerate(v.others):
            at = f"{where}.others.{j}"
            if other.selection_id is not None:
                have, source = selection(session, other.selection_id, f"{at}.selection_id"), "selection"
                _picked_for(session, other.selection_id, other.label, f"{at}.label")
            else:
                have, source = pool(session, other.pool_id, f"{at}.pool_id").count, "pool"
            if other.count is not None and other.count > have:
                ident = other.selection_id or other.pool_id
                raise Invalid(f"{at}.count", f"asks for {other.count} images; {source} {ident} holds {have}")
            classes = classes if classes is not None else session.get(Dataset, p.dataset_id).classes or []
            if other.label not in classes:
                raise Invalid(f"{at}.label", f"{other.label!r} is not a class of dataset {p.dataset_id}")


def _picked_for(session: Session, selection_id: int, label: str, field: str) -> None:
    """A selection's picks are images its classifier judged to be its target class: labelled as another class
    they would teach the classifier wrong labels."""
    target = (session.get(Selection, selection_id).params or {}).get("target_class")
    if target is not None and target != label:
        raise Invalid(field, f"{label!r}, but selection {selection_id} picked images of class {target!r}")


def _source(session: Session, p: Any) -> None:
    src = p.source
    if hasattr(src, "dataset_id"):
        dataset(session, src.dataset_id, "params.source.dataset_id", src.imbalance, "params.source.imbalance")


def _generate_sd(session: Session, p: Any) -> None:
    if isinstance(p.vocabulary, int):
        _row(session, Vocabulary, p.vocabulary, "params.vocabulary", "vocabulary")
    if p.dataset_id is not None:
        dataset(session, p.dataset_id, "params.dataset_id", p.imbalance, "params.imbalance")
    if p.concept_id is not None:
        row = _trained(session, Concept, p.concept_id, "params.concept_id", "concept", "steps_done")
        if row.base_model != p.model:
            raise Invalid(
                "params.concept_id", f"concept {row.id} was trained on model {row.base_model!r}, not {p.model!r}"
            )


def _generate_gan(session: Session, p: Any) -> None:
    row = _trained(session, Gan, p.gan_id, "params.gan_id", "GAN", "epochs_done")
    if p.epoch is not None and p.epoch > row.epochs_done:
        raise Invalid("params.epoch", f"GAN {row.id} has epochs 1..{row.epochs_done}; epoch {p.epoch} is not trained")


def _generate_diffusion(session: Session, p: Any) -> None:
    row = _trained(session, Diffusion, p.diffusion_id, "params.diffusion_id", "diffusion model", "epochs_done")
    if p.class_name not in (row.classes or []):
        raise Invalid(
            "params.class", f"{p.class_name!r} is not a class of diffusion {row.id}; choose from {row.classes}"
        )


def _assess_pool(session: Session, p: Any) -> None:
    from backend.selection.twosample import MIN_PER_SIDE
    from backend.services.assessments import pool_label

    ds = dataset(session, p.dataset_id, "params.dataset_id", p.imbalance, "params.imbalance")
    row = pool(session, p.pool_id, "params.pool_id")
    if row.count < MIN_PER_SIDE:
        raise Invalid(
            "params.pool_id", f"pool {row.id} holds {row.count} image(s); the two-sample test needs {MIN_PER_SIDE}+"
        )
    minority = p.imbalance.minority_names if p.imbalance is not None else []
    label = pool_label(row, p.label, minority, field="params.label")
    if label not in (ds.classes or []):
        field = "params.label" if p.label else "params.pool_id"
        raise Invalid(field, f"pool {row.id} shows class {label!r}, not a class of dataset {ds.id} ({ds.classes})")
    imb = p.imbalance
    if imb is not None and imb.keep == 0 and label in imb.minority_names:
        raise Invalid("params.imbalance.keep", f"the imbalance keeps no real image of {label!r} to compare with")


CHECKS: dict[str, Callable[[Session, Any], None]] = {
    "assess_pool": _assess_pool,
    "select": _select,
    "benchmark": _benchmark,
    "generate_sd": _generate_sd,
    "generate_gan": _generate_gan,
    "generate_diffusion": _generate_diffusion,
    "train_gan": _source,
    "train_diffusion": _source,
    "personalize_sd": _source,
}


def admit(session: Session, kind: str, params: BaseModel) -> None:
    """Raise ``Invalid(field, message)`` when ``params`` of job ``kind`` name rows they cannot use."""
    check = CHECKS.get(kind)
    if check is not None:
        check(session, params)
