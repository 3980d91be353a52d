"""The one checkpoint format: nested state <-> safetensors bytes, never pickle."""

from __future__ import annotations

import pickle

import pytest
import torch

from backend.core.checkpoint import CheckpointError, load_state, read_header, save_state


def _adam_state() -> dict:
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], lr=0.1, betas=(0.5, 0.9))
    p.grad = torch.full((3,), 0.5)
    opt.step()
    return opt.state_dict()


def test_round_trip_keeps_int_keys_tuples_tensors_and_scalars() -> None:
    state = {
        "opt": _adam_state(),
        "rng": torch.Generator().manual_seed(7).get_state(),
        "history": [{"epoch": 1, "loss": 0.5, "note": None}],
        "flags": (True, "x", 3),
    }
    back = load_state(save_state(state, "unit"), "unit")
    assert list(back["opt"]["state"]) == [0]  # an optimizer's int param ids survive JSON
    assert back["opt"]["param_groups"][0]["betas"] == (0.5, 0.9)  # and its tuples
    assert torch.equal(back["opt"]["state"][0]["exp_avg"], state["opt"]["state"][0]["exp_avg"])
    assert torch.equal(back["rng"], state["rng"])
    assert back["history"] == state["history"] and back["flags"] == state["flags"]
    restored = torch.optim.Adam([torch.nn.Parameter(torch.ones(3))], lr=0.1)
    restored.load_state_dict(back["opt"])  # what resuming a run needs


def test_refuses_pickles_foreign_files_and_other_kinds() -> None:
    data = save_state({"w": torch.zeros(2)}, "dcgan")
    assert read_header(data)["kind"] == "dcgan"
    with pytest.raises(CheckpointError, match="expected 'trainer'"):
        load_state(data, "trainer")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_state(pickle.dumps({"w": [0.0, 0.0]}), "dcgan")
    import safetensors.torch

    foreign = safetensors.torch.save({"w": torch.zeros(2)})  # a valid safetensors file, not ours
    with pytest.raises(CheckpointError, match="not a rebalance-state checkpoint"):
        load_state(foreign, "dcgan")


def test_unsupported_values_fail_when_saving_not_when_loading() -> None:
    with pytest.raises(TypeError, match="set"):
        save_state({"bad": {1, 2}}, "unit")
