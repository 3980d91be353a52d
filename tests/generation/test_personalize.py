"""Textual inversion and LoRA on the tiny random SD pipeline (loaded like real weights): training moves
only what it should, the loss falls, the saved concept reads back through diffusers' own loaders and gives
the same images, and a restored state trains on exactly as an uninterrupted run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from backend.core.checkpoint import load_state, save_state
from backend.generation.diffusion import load_pipeline
from backend.generation.personalize import (
    ConceptTrainer,
    apply_concept,
    read_concept,
    save_concept,
)
from backend.generation.personalize_config import PersonalizeConfig

METHODS = ["textual_inversion", "lora"]
FAST = {"resolution": 64, "batch_size": 4, "num_vectors": 2, "grid_images": 2, "grid_steps": 2, "seed": 3}
LR = {"textual_inversion": 5e-2, "lora": 1e-2}  # large: a few CPU steps must show learning
PROMPT = "a photo of a <concept> on a sofa"
HELD_OUT = range(10**6, 10**6 + 4)  # batches and noise never drawn by training (steps 0..N)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # Several test processes share two cores; spinning OpenMP threads would slow tiny convs 10x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sd-workspace")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Four blocky 64 px 'photos' of one object: structure the tiny model can fit in a few steps."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, 4, axis=1), 4, axis=2)


def trainer(workspace: Path, images: np.ndarray, method: str, **kw) -> ConceptTrainer:
    pipe = load_pipeline("tiny", workspace=workspace, dtype="fp32")
    config = PersonalizeConfig(**(FAST | {"method": method, "lr": LR[method], "steps": 20} | kw))
    return ConceptTrainer(pipe, config, images, "cat")


def render(pipe, prompt: str = PROMPT) -> np.ndarray:
    out = pipe(
        prompt=[prompt] * 2,
        num_inference_steps=2,
        height=64,
        width=64,
        generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
        output_type="np",
    )
    return out.images


def frozen(t: ConceptTrainer) -> dict[str, torch.Tensor]:
    """Copies of the weights training must not touch (LoRA's adapter weights excluded)."""
    unet = {k: v.clone() for k, v in t.pipe.unet.state_dict().items() if "lora" not in k}
    table = t.pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    return unet | {"old_rows": table[: len(table) - t.config.num_vectors]}


@pytest.mark.parametrize("method", METHODS)
def test_loss_falls_and_only_the_concept_weights_change(workspace, images, method) -> None:
    t = trainer(workspace, images, method)
    before_loss, before_weights, before_frozen = t.loss_at(HELD_OUT), t.weights(), frozen(t)
    t.train(20)
    assert t.step == 20 and [h.step for h in t.history] == [20]
    after_loss = t.loss_at(HELD_OUT)
    assert after_loss < before_loss - 1e-3, (before_loss, after_loss)
    after = t.weights()
    assert after.keys() == before_weights.keys()
    if method == "textual_inversion":
        assert list(after) == ["<concept>"] and after["<concept>"].shape == (2, 32)  # num_vectors x hidden
    else:
        assert all(".lora" in k for k in after) and len(after) > 4
    assert all(not torch.equal(after[k], before_weights[k]) for k in after)
    now = frozen(t)
    assert all(torch.equal(now[k], v) for k, v in before_frozen.items()), "frozen weights moved"


@pytest.mark.parametrize("method", METHODS)
def test_saved_concept_loads_through_diffusers_and_gives_the_same_images(workspace, images, method, tmp_path) -> None:
    t = trainer(workspace, images, method)
    t.train(20)
    with torch.no_grad():
        trained = render(t.pipe)
    save_concept(t, tmp_path / "concept", "tiny")
    info = read_concept(tmp_path / "concept")
    assert (info["steps"], info["base_model"], info["method"], info["token"]) == (20, "tiny", method, "<concept>")

    fresh = load_pipeline("tiny", workspace=workspace)
    plain = render(fresh)
    if method == "textual_inversion":  # diffusers' own loaders, default file names
        fresh.load_textual_inversion(str(tmp_path / "concept"), local_files_only=True)
    else:
        fresh.load_lora_weights(str(tmp_path / "concept"), local_files_only=True)
    loaded = render(fresh)
    np.testing.assert_allclose(loaded, trained, atol=1e-5)
    assert np.abs(loaded - plain).max() > 1e-3  # the concept changes the images


@pytest.mark.parametrize("method", METHODS)
def test_apply_concept_swaps_in_and_out_of_a_reused_pipeline(workspace, images, method, tmp_path) -> None:
    t = trainer(workspace, images, method, steps=5)
    t.train(5)
    save_concept(t, tmp_path / "a", "tiny")
    pipe = load_pipeline("tiny", workspace=workspace)
    plain = render(pipe)
    apply_concept(pipe, tmp_path / "a")
    first = render(pipe)
    apply_concept(pipe, tmp_path / "a")  # already loaded: a no-op, not a "token exists" error
    apply_concept(pipe, None)
    np.testing.assert_array_equal(render(pipe), plain)  # unloaded completely
    apply_concept(pipe, tmp_path / "a")
    np.testing.assert_array_equal(render(pipe), first)
    assert np.abs(first - plain).max() > 1e-3


@pytest.mark.parametrize("method", METHODS)
def test_restored_state_continues_exactly(workspace, images, method) -> None:
    straight = trainer(workspace, images, method, steps=6)
    straight.train(6)

    first = trainer(workspace, images, method, steps=6)
    first.train(3)
    blob = save_state(first.state(), "sd-concept")  # what the job writes to the store
    resumed = trainer(workspace, images, method, steps=6)
    resumed.restore(load_state(blob, "sd-concept"))
    assert resumed.step == 3
    resumed.train(10)  # capped at config.steps
    assert resumed.step == 6
    a, b = straight.weights(), resumed.weights()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h.step for h in resumed.history] == [3, 6] and resumed.history[0].loss == first.history[0].loss


def test_restore_refuses_a_state_of_other_settings(workspace, images) -> None:
    t = trainer(workspace, images, "textual_inversion", steps=2)
    other = trainer(workspace, images, "textual_inversion", steps=3)
    with pytest.raises(ValueError, match="other settings"):
        other.restore(t.state())


@pytest.mark.parametrize(
    ("field", "value"),
    [("token", "two words"), ("token", "{slot}"), ("method", "dreambooth"), ("resolution", 60), ("rank", 0)],
)
def test_bad_settings_name_the_field(field, value) -> None:
    with pytest.raises(ValidationError, match=field):
        PersonalizeConfig(**{field: value})
