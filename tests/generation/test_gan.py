"""DCGAN core: architecture, config validation, exact resume, sampling, folder loading, and evidence it learns."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from backend.core.checkpoint import CheckpointError, read_header
from backend.core.hooks import Hooks, Stopped
from backend.data.images import decode_image
from backend.generation.gan import (
    Discriminator,
    GanConfig,
    GanTrainer,
    Generator,
    augment_batch,
    generator_only,
    latent_noise,
    load_generator,
    sample_images,
    to_uint8,
)
from backend.generation.gan_images import load_image_folder

TINY = {"image_size": 32, "width": 0.125, "batch_size": 16}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Tiny convolutions on a shared 2-core box spend most of their time in OpenMP barriers with 2 threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _images(n: int = 48, size: int = 32, seed: int = 0) -> np.ndarray:
    """Structured test images: smooth colour gradients with a bright square, not white noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        c = rng.uniform(0, 1, (3, 3))
        img = c[0] * yy[..., None] + c[1] * xx[..., None] + c[2] * 0.2
        y, x = rng.integers(0, size // 2, 2)
        img[y : y + size // 4, x : x + size // 4] = 1.0
        out[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


# ------------------------------------------------------------------------------------------ architecture


@pytest.mark.parametrize("size", [32, 64])
def test_shapes_and_channel_widths(size: int) -> None:
    g = Generator(nz=100, width=0.125, image_size=size)
    d = Discriminator(width=0.125, image_size=size)
    assert g(torch.randn(2, 100, 1, 1)).shape == (2, 3, size, size)
    assert d(torch.randn(2, 3, size, size)).shape == (2,)
    g_ch = [m.out_channels for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    d_ch = [m.out_channels for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    if size == 64:
        assert g_ch == [128, 64, 32, 16, 3]  # 1024-512-256-128 scaled by 0.125, then 3
        assert d_ch == [16, 32, 64, 128, 1]
    else:  # one fewer up-sampling: the widest block goes
        assert g_ch == [64, 32, 16, 3]
        assert d_ch == [16, 32, 64, 1]
    # BCE-with-logits: no sigmoid at the end; tanh on the generator.
    assert not any(isinstance(m, torch.nn.Sigmoid) for m in d.modules())
    assert isinstance(g.net[-1], torch.nn.Tanh)


def test_full_width_matches_the_study() -> None:
    g = Generator(nz=100, width=1.0, image_size=64)
    d = Discriminator(width=1.0, image_size=64)
    assert [m.out_channels for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d)] == [
        1024,
        512,
        256,
        128,
        3,
    ]
    bns = [m for m in d.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert [m.num_features for m in bns] == [256, 512, 1024]  # no BN on the first block


@pytest.mark.parametrize(
    ("field", "value"),
    [("image_size", 48), ("epochs", 0), ("batch_size", 0), ("lr", 0.0), ("betas", (0.5, 1.0)), ("width", 0.0)],
)
def test_config_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        GanConfig(**{field: value})


def test_too_few_images_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        GanTrainer(GanConfig(**TINY), _images(15), "cpu")


def test_mismatched_sizes_are_cropped_to_square() -> None:
    trainer = GanTrainer(GanConfig(**TINY), _images(16, size=48)[:, :, 4:44], "cpu")
    assert trainer.data.shape == (16, 3, 32, 32)


# ------------------------------------------------------------------------------------------ training


def test_augment_is_vertical_flip_and_torchvision_sharpness() -> None:
    x = torch.from_numpy(_images(64)).permute(0, 3, 1, 2).float() / 255
    rng = torch.Generator().manual_seed(0)
    flip, sharp = torch.rand(64, generator=rng) < 0.5, torch.rand(64, generator=rng) < 0.5
    out = augment_batch(x, flip, sharp)
    for i in range(len(x)):
        expected = x[i].flip(1) if flip[i] else x[i]
        expected = TF.adjust_sharpness(expected, 2.0) if sharp[i] else expected
        assert torch.allclose(out[i], expected, atol=1e-5), f"image {i} (flip {flip[i]}, sharp {sharp[i]})"
    assert {(bool(f), bool(s)) for f, s in zip(flip, sharp, strict=True)} == {(a, b) for a in (0, 1) for b in (0, 1)}


def _train(epochs: int, images: np.ndarray, **cfg: object) -> GanTrainer:
    trainer = GanTrainer(GanConfig(**{**TINY, **cfg}), images, "cpu")
    for _ in range(epochs):
        trainer.train_epoch()
    return trainer


def test_resume_from_checkpoint_equals_training_straight_through(tmp_path: Path) -> None:
    images = _images()
    straight = _train(3, images, seed=7)

    first = _train(2, images, seed=7)
    (tmp_path / "epoch_2.safetensors").write_bytes(first.state_bytes())
    resumed = GanTrainer(GanConfig(**TINY, seed=7), images, "cpu")
    resumed.load_state((tmp_path / "epoch_2.safetensors").read_bytes())
    assert resumed.epoch == 2
    resumed.train_epoch()

    assert resumed.epoch == straight.epoch == 3
    assert resumed.history == straight.history
    for net in ("generator", "discriminator"):
        a, b = getattr(straight, net).state_dict(), getattr(resumed, net).state_dict()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{net}.{key} differs after resume"
    for key, value in straight.opt_g.state_dict()["state"][0].items():
        assert torch.equal(value, resumed.opt_g.state_dict()["state"][0][key])
    assert np.array_equal(straight.sample(8, seed=3), resumed.sample(8, seed=3))


def test_checkpoint_is_safetensors_without_pickle(tmp_path: Path) -> None:
    trainer = _train(1, _images(), seed=1)
    data = trainer.state_bytes()
    assert read_header(data)["kind"] == "dcgan"
    from safetensors.torch import load

    assert len(load(data)) > 20  # weights, both Adam states and the RNG, all as tensors
    with pytest.raises(CheckpointError, match="safetensors"):
        trainer.load_state(b"\x80\x04pickle-bytes-here")
    with pytest.raises(ValueError, match="does not match"):
        GanTrainer(GanConfig(**{**TINY, "width": 0.25}), _images(), "cpu").load_state(data)


def test_stop_request_aborts_the_epoch_without_counting_it() -> None:
    trainer = GanTrainer(GanConfig(**TINY), _images(), "cpu")
    calls = iter([False, True])
    with pytest.raises(Stopped):
        trainer.train_epoch(Hooks(should_stop=lambda: next(calls)))
    assert trainer.epoch == 0 and trainer.history == []


# ------------------------------------------------------------------------------------------ sampling


def test_sampling_is_reproducible_and_chunk_independent() -> None:
    trainer = _train(1, _images(), seed=2)
    whole = trainer.sample(10, seed=5)
    assert whole.shape == (10, 32, 32, 3) and whole.dtype == np.uint8
    parts = np.concatenate(
        [sample_images(trainer.generator, 4, 5, "cpu", start=0), sample_images(trainer.generator, 6, 5, "cpu", start=4)]
    )
    assert np.abs(whole.astype(int) - parts.astype(int)).max() <= 1  # same noise per index, any chunking
    assert not np.array_equal(whole, trainer.sample(10, seed=6))
    small = trainer.sample(3, seed=5, output_size=16)
    assert small.shape == (3, 16, 16, 3)
    grid = trainer.sample_grid()
    assert grid.shape == (8 * 34 + 2, 8 * 34 + 2, 3)


def test_generator_only_checkpoint_samples_the_same_images() -> None:
    trainer = _train(1, _images(), seed=4)
    small = generator_only(trainer.state_bytes())
    assert len(small) < len(trainer.state_bytes()) / 3
    loaded = load_generator(small, "cpu")
    assert loaded.epoch == 1 and loaded.config == trainer.config
    assert np.array_equal(sample_images(loaded.generator, 6, 9, "cpu"), trainer.sample(6, seed=9))
    with pytest.raises(ValueError, match="only the generator"):
        GanTrainer(trainer.config, _images(), "cpu").load_state(small)


# ------------------------------------------------------------------------------------------ folders


def test_folder_loader_handles_modes_sizes_and_corrupt_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "a" / "deep").mkdir(parents=True)
    rgb = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a" / "wide.jpg")
    Image.fromarray(rgb[:, :, 0]).save(tmp_path / "a" / "deep" / "gray.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(np.dstack([rgb, rgb[:, :, :1]])).save(tmp_path / "alpha.png")
    Image.fromarray((rng.integers(0, 65535, (20, 20))).astype(np.uint16)).save(tmp_path / "sixteen.png")
    Image.fromarray(rgb[:8, :8]).save(tmp_path / "tiny.bmp")
    good = (tmp_path / "a" / "wide.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    outside.write_bytes((tmp_path / "palette.png").read_bytes())
    (tmp_path / "link.png").symlink_to(outside)  # a link out of the allowed folder is never followed
    with open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.png"), "wb") as fh:  # Latin-1 name, not UTF-8
        Image.fromarray(rgb).save(fh, format="PNG")

    loaded = load_image_folder(tmp_path, 32)
    assert loaded.images.shape == (7, 32, 32, 3) and loaded.images.dtype == np.uint8
    assert sorted(loaded.paths) == sorted(
        ["a/wide.jpg", "a/deep/gray.png", "palette.png", "alpha.png", "sixteen.png", "tiny.bmp", "caf\ufffd.png"]
    )
    skipped = {s["path"]: s["reason"] for s in loaded.skipped}
    assert set(skipped) == {"truncated.jpg", "empty.png", "notes.txt", "link.png"}
    assert skipped["link.png"] == "link leads outside the folder" and skipped["notes.txt"] == "not an image file"
    gray = loaded.images[loaded.paths.index("a/deep/gray.png")]
    assert np.array_equal(gray[..., 0], gray[..., 1])  # grayscale became RGB


def test_folder_loader_rejects_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        load_image_folder(tmp_path / "nope", 32)


# ------------------------------------------------------------------------------------------ evidence


def _histograms(images: np.ndarray, bins: int = 32) -> np.ndarray:
    """(3, bins) per-channel pixel histograms, each summing to 1."""
    return np.stack(
        [np.histogram(images[..., c], bins=bins, range=(0, 256))[0] / images[..., c].size for c in range(3)]
    )


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over channels of the total-variation distance between pixel histograms (0 = same, 1 = disjoint)."""
    return float(np.abs(_histograms(a) - _histograms(b)).sum(axis=1).mean() / 2)


def neighbour_correlation(images: np.ndarray) -> float:
    """Correlation of horizontally adjacent luminance values: ~0.9 for photos, < 0 for checkerboard noise."""
    lum = images.astype(np.float64).mean(-1)
    return float(np.corrcoef(lum[:, :, :-1].ravel(), lum[:, :, 1:].ravel())[0, 1])


def _first_images(folder: Path, n: int) -> np.ndarray:
    return np.stack([decode_image(p) for p in sorted(folder.glob("*.jpg"))[:n]])


@pytest.mark.slow
def test_training_brings_samples_closer_to_real_images(cifar10_root: Path) -> None:
    """After 8 epochs on 1,024 real CIFAR-10 cats, samples are measurably closer to held-out cats."""
    real = _first_images(cifar10_root / "train" / "cat", 1024)
    held_out = _first_images(cifar10_root / "test" / "cat", 512)
    # lr 2e-4 (DCGAN's default) rather than the study's 5e-5 so a CPU test sees progress in 8 epochs.
    trainer = GanTrainer(GanConfig(**{**TINY, "batch_size": 32, "lr": 2e-4, "seed": 0}), real, "cpu")
    noise = latent_noise(123, 0, 512, trainer.config.nz)
    # Baseline: the untrained generator with batch statistics, i.e. what training starts from. (Eval mode
    # with fresh running statistics would give flat grey images, an easier baseline to beat.)
    with torch.no_grad():
        before = to_uint8(copy.deepcopy(trainer.generator).train()(noise))
    for _ in range(8):
        trainer.train_epoch()
    after = trainer.sample(512, seed=123)

    # Compared against held-out test cats: memorising the training images is not what is measured.
    d_before, d_after = histogram_distance(before, held_out), histogram_distance(after, held_out)
    assert d_after < 0.7 * d_before, (d_before, d_after)
    c_real, c_before, c_after = (neighbour_correlation(x) for x in (held_out, before, after))
    assert abs(c_after - c_real) < 0.3 * abs(c_before - c_real), (c_real, c_before, c_after)
