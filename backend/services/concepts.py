"""Concepts (personalised Stable Diffusion): where their files live, and whether a generation may use one.

Store layout per concept: ``concepts/<id>/state_<step>.safetensors`` (the training state after ``step``
optimiser steps, for resuming; only the newest is kept), ``concepts/<id>/concept/`` (the diffusers-readable
weights + ``concept.json``) and ``concepts/<id>/samples/<step>.png`` (the sample grid after ``step`` steps).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from backend.db.models import Concept
from backend.services.errors import Invalid, NotFound, NotReady
from backend.store import FileStore


def state_path(concept_id: int, step: int) -> str:
    return f"concepts/{concept_id}/state_{step}.safetensors"


def artifact_path(concept_id: int) -> str:
    return f"concepts/{concept_id}/concept"


def samples_path(concept_id: int, step: int) -> str:
    return f"concepts/{concept_id}/samples/{step}.png"


def get_concept(session: Session, concept_id: int) -> Concept:
    row = session.get(Concept, concept_id)
    if row is None:
        raise NotFound("concept", concept_id)
    return row


def usable_concept(session: Session, store: FileStore, concept_id: int, model: str) -> str:
    """The store path of concept ``concept_id``'s weights, checked to be trained and made for ``model``."""
    row = session.get(Concept, concept_id)
    if row is None:
        raise Invalid("concept_id", f"concept {concept_id} does not exist")
    if row.base_model != model:
        raise Invalid(
            "concept_id",
            f"concept {concept_id} was trained on model {row.base_model!r}, not {model!r}; "
            f"generate with model {row.base_model!r} or personalise {model!r}",
        )
    rel = artifact_path(concept_id)
    if row.steps_done < 1 or not store.path(rel).is_dir():
        raise NotReady(f"concept {concept_id} has no saved weights yet")
    return rel


def prune_states(store: FileStore, concept_id: int, keep_step: int) -> None:
    """Delete the training states older than ``keep_step`` (grids are kept)."""
    folder = store.path(f"concepts/{concept_id}")
    for path in folder.glob("state_*.safetensors"):
        step = path.stem.removeprefix("state_")
        if step.isdigit() and int(step) < keep_step:
            path.unlink(missing_ok=True)
