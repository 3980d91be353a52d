"""One checkpoint format for every resumable loop: nested state -> safetensors bytes, and back. No pickle.

A state is any nest of dicts, lists, tuples, tensors and JSON scalars (a trainer's model, optimizer and
RNG states, a GAN's two networks, a diffusion model with its EMA copy). Tensors go into the safetensors
body; the rest, with a placeholder where each tensor was, goes into its ``__metadata__`` header as JSON,
so a checkpoint swapped for a pickle or a foreign file is refused by the reader instead of executed.
Dicts with non-string keys (an optimizer's parameter ids) and tuples (Adam's betas) survive the round trip.
"""

from __future__ import annotations

import json
from typing import Any

import safetensors.torch
import torch

FORMAT = "rebalance-state"
VERSION = "1"


class CheckpointError(ValueError):
    """The bytes are not a readable checkpoint of the expected kind."""


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().to("cpu").contiguous().clone()
        return {"__tensor__": name}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and "__tensor__" not in value:
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot checkpoint a value of type {type(value).__name__}")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__items__" in value:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__items__"]}
        if "__tuple__" in value:
            return tuple(_decode(v, tensors) for v in value["__tuple__"])
        return {k: _decode(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    return value


def save_state(state: Any, kind: str) -> bytes:
    """Serialise ``state`` as safetensors; ``kind`` names what it is (checked by :func:`load_state`)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(state, tensors)
    meta = {"format": FORMAT, "version": VERSION, "kind": kind, "state": json.dumps(skeleton)}
    return safetensors.torch.save(tensors, metadata=meta)


def read_header(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a checkpoint, checked for format and version (no tensor is parsed).

    safetensors' own ``safe_open`` reads headers from files only; checkpoints travel as bytes (the
    store, Ray's object store), so the 8-byte length + JSON header is read here.
    """
    if len(data) < 8:
        raise CheckpointError("not a safetensors checkpoint: too short")
    length = int.from_bytes(data[:8], "little")
    if length > len(data) - 8:
        raise CheckpointError("not a safetensors checkpoint: header length exceeds the data")
    try:
        header = json.loads(data[8 : 8 + length])
    except ValueError as exc:
        raise CheckpointError("not a safetensors checkpoint: unreadable header") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"not a {FORMAT} checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"unsupported {FORMAT} version {meta.get('version')!r}")
    return meta


def load_state(data: bytes, kind: str) -> Any:
    """Inverse of :func:`save_state`; raises :class:`CheckpointError` for anything else."""
    meta = read_header(data)
    if meta.get("kind") != kind:
        raise CheckpointError(f"checkpoint holds a {meta.get('kind')!r} state, expected {kind!r}")
    try:
        tensors = safetensors.torch.load(data)
        return _decode(json.loads(meta["state"]), tensors)
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"damaged {kind} checkpoint: {exc}") from exc
