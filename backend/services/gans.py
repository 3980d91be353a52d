"""GANs: where a trained DCGAN's checkpoints and sample grids live, and which epoch a request means.

Store layout per GAN: ``gans/<gan_id>/epoch_<n>.safetensors`` (the latest epoch holds the full training
state; older epochs are pruned to the generator, which is all sampling needs) and
``gans/<gan_id>/samples/<n>.png`` (the fixed-noise grid of epoch n).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from backend.db.models import Gan
from backend.services.errors import Invalid, NotFound, NotReady


def checkpoint_path(gan_id: int, epoch: int) -> str:
    return f"gans/{gan_id}/epoch_{epoch}.safetensors"


def samples_path(gan_id: int, epoch: int) -> str:
    return f"gans/{gan_id}/samples/{epoch}.png"


def get_gan(session: Session, gan_id: int) -> Gan:
    row = session.get(Gan, gan_id)
    if row is None:
        raise NotFound("gan", gan_id)
    return row


def sampling_epoch(row: Gan, epoch: int | None) -> int:
    """The epoch to sample: ``epoch`` if finished, else the last finished one."""
    if row.epochs_done < 1:
        raise NotReady(f"gan {row.id} has no finished epoch yet")
    chosen = epoch or row.epochs_done
    if chosen > row.epochs_done:
        raise Invalid("epoch", f"gan {row.id} has no epoch {chosen}; epochs done: 1..{row.epochs_done}")
    return chosen
