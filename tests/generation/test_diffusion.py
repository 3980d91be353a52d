"""The tiny random SD pipeline, loaded through the real `from_pretrained` path, generating on CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from backend.core.hooks import Hooks
from backend.generation.diffusion import generate, is_img2img, latent_preview, load_pipeline
from backend.generation.prompts import default_vocabulary

RES = 64
OUT = 32


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The test machine is shared by several processes; two spinning OpenMP threads per process
    # slow tiny convolutions down by an order of magnitude there.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sd-workspace")


@pytest.fixture(scope="module")
def pipe(workspace: Path):
    return load_pipeline("tiny", mode="txt2img", device="cpu", workspace=workspace)


@pytest.fixture(scope="module")
def items():
    return default_vocabulary("cat").sample(3, seed=11)


def run(pipe, items, **kwargs):
    params = {"steps": 4, "guidance": 7.5, "resolution": RES, "output_size": OUT}
    return generate(pipe, items, **(params | kwargs))


def test_tiny_is_a_saved_diffusers_pipeline(pipe, workspace: Path) -> None:
    model_dir = workspace / "models" / "tiny"
    assert (model_dir / "model_index.json").is_file()
    assert (model_dir / "tokenizer" / "tokenizer.json").is_file()
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert pipe.scheduler.config.algorithm_type == "dpmsolver++"
    assert pipe.safety_checker is None


def test_generates_dataset_and_review_images(pipe, items) -> None:
    out = run(pipe, items, negative_prompt="blurry", review_size=48)
    assert [g.item.index for g in out] == [0, 1, 2]
    for g in out:
        assert g.image.shape == (OUT, OUT, 3) and g.image.dtype == np.uint8
        assert g.review.shape == (48, 48, 3) and g.review.dtype == np.uint8
    # Different seeds and prompts give different images; a random network is not a constant.
    assert not np.array_equal(out[0].image, out[1].image)
    assert out[0].image.std() > 1


def test_batch_size_does_not_change_images(pipe, items) -> None:
    one = run(pipe, items, batch_size=1)
    three = run(pipe, items, batch_size=3)
    two = run(pipe, items[1:], batch_size=2)
    for a, b in zip(one, three, strict=True):
        # Same noise and prompt per image; only float summation order differs between batch
        # shapes, which can move a rare pixel by one uint8 level.
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1
        assert (a.image != b.image).mean() < 0.01
    assert np.abs(one[2].image.astype(int) - two[1].image.astype(int)).max() <= 1


def test_same_params_same_images(pipe, items) -> None:
    a, b = run(pipe, items[:2], batch_size=2), run(pipe, items[:2], batch_size=2)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))


def test_few_step_without_guidance(pipe, items) -> None:
    for steps in (1, 2):
        out = run(pipe, items[:2], steps=steps, guidance=0.0)
        assert len(out) == 2 and out[0].image.shape == (OUT, OUT, 3)


@pytest.mark.parametrize("scheduler", ["pndm", "euler_a"])
def test_schedulers_by_name(workspace: Path, items, scheduler: str) -> None:
    pipe = load_pipeline("tiny", device="cpu", workspace=workspace, scheduler=scheduler)
    assert pipe.scheduler.__class__.__name__.lower().startswith(scheduler.split("_")[0])
    a = run(pipe, items, batch_size=1)
    b = run(pipe, items, batch_size=3)
    # Ancestral samplers draw fresh noise each step: it must come from each image's generator.
    assert all(np.abs(x.image.astype(int) - y.image.astype(int)).max() <= 1 for x, y in zip(a, b, strict=True))


def test_img2img_starts_from_the_init_image(workspace: Path, items) -> None:
    pipe = load_pipeline("tiny", mode="img2img", device="cpu", workspace=workspace)
    assert is_img2img(pipe)
    rng = np.random.default_rng(0)
    white = np.full((32, 32, 3), 255, np.uint8)
    noise = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = run(pipe, items[:2], init_images=[white, noise], strength=0.3, steps=10)
    assert len(out) == 2
    assert not np.array_equal(out[0].image, out[1].image)
    with pytest.raises(ValueError, match="strength"):
        run(pipe, items[:1], init_images=[white], strength=0.0)
    with pytest.raises(ValueError, match="init_images"):
        run(pipe, items[:1])


def test_every_denoising_step_is_reported_with_its_latents(workspace: Path, pipe, items) -> None:
    """Issue 30.1: progress per step, not per batch; img2img runs steps x strength of them."""
    seen: list[tuple[int, int, int]] = []
    shown: list[np.ndarray] = []

    def on_step(n: int, k: int, steps: int, latents) -> None:
        seen.append((n, k, steps))
        shown.append(latent_preview(latents, size=16))

    run(pipe, items, batch_size=2, on_step=on_step)  # 3 images: batches of 2 and 1, 4 steps each
    assert seen == [(2, k, 4) for k in range(1, 5)] + [(1, k, 4) for k in range(1, 5)]
    assert shown[0].shape == (16, 32, 3) and shown[0].dtype == np.uint8 and shown[-1].shape == (16, 16, 3)
    assert shown[0].min() == 0 and shown[0].max() == 255  # each image stretched to its own range
    assert not np.array_equal(shown[0], shown[3])  # the picture follows the denoising
    img2img = load_pipeline("tiny", mode="img2img", device="cpu", workspace=workspace)
    seen.clear()
    white = np.full((32, 32, 3), 255, np.uint8)
    run(img2img, items[:1], init_images=[white], strength=0.5, steps=8, on_step=on_step)
    assert seen == [(1, k, 4) for k in range(1, 5)]


def test_latent_preview_maps_sd_latents_and_shows_others_by_their_channels() -> None:
    four = torch.zeros(1, 4, 8, 8)
    four[0, 0] = torch.linspace(-1, 1, 64).reshape(8, 8)  # channel 0 reads as warm: red above blue
    rgb = latent_preview(four, size=8).astype(int)
    assert rgb.shape == (8, 8, 3) and (rgb[-1, -1, 0] > rgb[-1, -1, 2])
    assert latent_preview(torch.randn(2, 16, 4, 4), size=4).shape == (4, 8, 3)  # first three channels
    assert latent_preview(torch.randn(1, 1, 4, 4), size=4).shape == (4, 4, 3)  # one channel: grey


def test_tiny_vae_decoder(workspace: Path, items) -> None:
    pipe = load_pipeline("tiny", device="cpu", workspace=workspace, vae="tiny")
    assert type(pipe.vae).__name__ == "AutoencoderTiny"
    out = run(pipe, items[:1])
    assert out[0].image.shape == (OUT, OUT, 3)


def test_should_stop_returns_finished_images_only(pipe, items) -> None:
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        # Checked before each batch, after each of the 4 denoising steps and after decoding:
        # batch 1 uses calls 1-6, so call 9 stops batch 2 at its second step.
        return calls["n"] > 8

    out = run(pipe, items, batch_size=1, hooks=Hooks(should_stop=stop))
    assert [g.item.index for g in out] == [0]


@pytest.mark.timeout(60)  # offline, the hub probe must fail fast instead of hanging
@pytest.mark.parametrize(
    "model, needles",
    [
        ("no-such-owner/no-such-model-xyz", ["no-such-owner/no-such-model-xyz", "--local-dir"]),
        ("/nonexistent/dir/model", ["/nonexistent/dir/model", "no such directory", "--allow-dir"]),
    ],
)
def test_unloadable_model_fails_fast(workspace: Path, model: str, needles: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        load_pipeline(model, device="cpu", workspace=workspace)
    assert all(needle in str(err.value) for needle in needles)


def test_local_dir_missing_files(tmp_path: Path, workspace: Path) -> None:
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(ValueError, match="cannot load the local directory"):
        load_pipeline(str(tmp_path), device="cpu", workspace=workspace)


def test_unknown_scheduler_and_mode(workspace: Path) -> None:
    with pytest.raises(ValueError, match="scheduler 'foo'"):
        load_pipeline("tiny", device="cpu", workspace=workspace, scheduler="foo")
    with pytest.raises(ValueError, match="mode"):
        load_pipeline("tiny", mode="inpaint", device="cpu", workspace=workspace)


def test_loaded_weights_are_the_saved_ones(pipe, workspace: Path) -> None:
    again = load_pipeline("tiny", device="cpu", workspace=workspace)
    for name, tensor in pipe.unet.state_dict().items():
        assert torch.equal(tensor, again.unet.state_dict()[name]), name
