"""Diffusion models trained here: where their files live, and which of them a request may sample.

Store layout per model: ``diffusions/<id>/state_<n>.safetensors`` (the full training state after epoch n,
for resuming), ``diffusions/<id>/model_<n>/`` (the EMA model as a diffusers folder: ``unet/``,
``scheduler/``, ``classes.json``) and ``diffusions/<id>/samples/<n>.png`` (the per-class grid of epoch n).
Only the newest state and model are kept; every epoch's grid stays.
"""

from __future__ import annotations

import shutil

from sqlalchemy.orm import Session

from backend.db.models import Diffusion
from backend.services.errors import Invalid, NotFound, NotReady
from backend.store import FileStore


def state_path(diffusion_id: int, epoch: int) -> str:
    return f"diffusions/{diffusion_id}/state_{epoch}.safetensors"


def model_path(diffusion_id: int, epoch: int) -> str:
    return f"diffusions/{diffusion_id}/model_{epoch}"


def samples_path(diffusion_id: int, epoch: int) -> str:
    return f"diffusions/{diffusion_id}/samples/{epoch}.png"


def get_diffusion(session: Session, diffusion_id: int) -> Diffusion:
    row = session.get(Diffusion, diffusion_id)
    if row is None:
        raise NotFound("diffusion", diffusion_id)
    return row


def sampling_model(store: FileStore, row: Diffusion, class_name: str) -> str:
    """The store path of the newest saved model of ``row``, checked to hold class ``class_name``."""
    if row.epochs_done < 1:
        raise NotReady(f"diffusion {row.id} has no finished epoch yet")
    if class_name not in (row.classes or []):
        raise Invalid("class", f"{class_name!r} is not a class of diffusion {row.id}; choose one of {row.classes}")
    rel = model_path(row.id, row.epochs_done)
    if not store.path(rel).is_dir():
        raise NotReady(f"the saved model {rel} of diffusion {row.id} is missing")
    return rel


def prune_before(store: FileStore, diffusion_id: int, epoch: int) -> None:
    """Delete the training states and model folders of epochs before ``epoch`` (grids are kept)."""
    for older in range(epoch - 1, 0, -1):
        state, model = store.path(state_path(diffusion_id, older)), store.path(model_path(diffusion_id, older))
        if not state.exists() and not model.exists():
            break  # everything older was pruned by an earlier epoch
        state.unlink(missing_ok=True)
        shutil.rmtree(model, ignore_errors=True)
