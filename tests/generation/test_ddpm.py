"""Class-conditional diffusion core: it learns digits, sampling is batch-independent, save/load and resume are exact."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.core.checkpoint import CheckpointError
from backend.core.hooks import Hooks, Stopped
from backend.data.sources import ArraySource, load_digits
from backend.generation.ddpm import DiffusionModel, DiffusionTrainer, fit, load_model
from backend.generation.ddpm_config import DiffusionConfig, SampleConfig
from backend.generation.ddpm_sample import class_grid, generate, sample

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression
# diffusers and scikit-learn (seconds to import) are imported by the tests that use them, not at collection.

# The smallest useful model: 16 px (digits are 8x8 at heart), 8-16-32 channels, no attention.
TINY = {"image_size": 16, "width": 0.125, "layers_per_block": 1, "attention": False, "grid_per_class": 0}
# Enough for recognisable digits in about a minute on one CPU thread (see test_training_learns_the_classes).
LEARN = TINY | {"width": 0.25, "batch_size": 64, "lr": 2e-3, "warmup_steps": 20, "epochs": 12}


pytestmark = pytest.mark.slow  # seconds to minutes a test: outside the fast tier (README)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Tiny convolutions on a shared 2-core box spend most of their time in OpenMP barriers with 2 threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> ArraySource:
    return load_digits()


def _features(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC at any size -> 64 grey 8x8 pixel values in [0, 1] (the digits' native resolution)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().mean(1, keepdim=True)
    return F.adaptive_avg_pool2d(x, 8).flatten(1).numpy() / 255.0


@dataclass
class Learned:
    untrained: DiffusionModel
    trained: DiffusionModel
    losses: list[float]
    classifier: LogisticRegression


@pytest.fixture(scope="module")
def learned(digits: ArraySource) -> Learned:
    from sklearn.linear_model import LogisticRegression

    trainer = DiffusionTrainer(DiffusionConfig(**LEARN), digits.train_x, digits.train_y, digits.classes)
    untrained = trainer.model()
    history = fit(trainer)
    # A classifier trained on real digits only judges the samples (about 95% on the real test split).
    classifier = LogisticRegression(max_iter=2000).fit(_features(digits.train_x), digits.train_y)
    return Learned(untrained, trainer.model(), [h.loss for h in history], classifier)


def _class_accuracy(model: DiffusionModel, classifier: LogisticRegression, per_class: int = 10) -> tuple[float, float]:
    """Share of samples (per_class of every class) that the real-data classifier assigns to their own class,
    and the samples' mean distance from grey (0-255; the real digits are grey: 0)."""
    labels = [c for c in range(len(model.classes)) for _ in range(per_class)]
    # The raw RGB output: the grayscale projection of a model trained on grey data would hide colour noise.
    raw = dataclasses.replace(model, grayscale=False)
    images = generate(raw, labels, range(len(labels)), SampleConfig(steps=10, guidance=2.0, seed=1))
    pixels = images.astype(np.float32)
    colour = float(np.abs(pixels - pixels.mean(-1, keepdims=True)).mean())
    return float((classifier.predict(_features(images)) == np.array(labels)).mean()), colour


def _tiny_model(classes: int = 3, seed: int = 0) -> DiffusionModel:
    images = np.random.default_rng(seed).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(8) % classes
    return DiffusionTrainer(
        DiffusionConfig(**TINY, seed=seed), images, labels, [f"c{i}" for i in range(classes)]
    ).model()


# ------------------------------------------------------------------------------------------------ learning


def test_training_learns_the_classes(learned: Learned) -> None:
    """Breakage caught: labels ignored (label_dropout 1), lr ~0, or samplers whose x0 estimate is not kept in
    [-1, 1] (every image saturates into colour noise, ~66 from grey, that still average-pools to a digit)."""
    assert learned.losses[-1] < 0.5 * learned.losses[0], learned.losses
    untrained, _ = _class_accuracy(learned.untrained, learned.classifier)
    trained, colour = _class_accuracy(learned.trained, learned.classifier)
    # Untrained samples land on their class at chance (~10%); the trained ones must clearly beat that.
    assert trained >= untrained + 0.25, (untrained, trained)
    assert colour < 30, colour  # grey-ish digits, not saturated noise


def test_a_model_of_grey_images_samples_grey_images(learned: Learned, tmp_path) -> None:
    """Breakage caught: grayscale not detected, not saved/loaded, or not applied to the samples."""
    assert learned.trained.grayscale  # the digits are R = G = B
    learned.trained.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.grayscale
    images = sample(loaded, "3", 4, SampleConfig(steps=2, seed=0), output_size=32)
    assert (images[..., 0] == images[..., 1]).all() and (images[..., 1] == images[..., 2]).all()
    assert not _tiny_model().grayscale  # random colour images are not


def test_class_grid_has_a_row_per_class(learned: Learned) -> None:
    model = learned.trained
    model.config = DiffusionConfig(**(LEARN | {"grid_per_class": 3, "grid_steps": 2}))
    try:
        grid = class_grid(model)
    finally:
        model.config = DiffusionConfig(**LEARN)
    # torchvision's make_grid: 2 px padding around 16 px tiles; 10 rows (classes) x 3 columns.
    assert grid.shape == (2 + 10 * 18, 2 + 3 * 18, 3) and grid.dtype == np.uint8


# ------------------------------------------------------------------------------------------------ sampling


def _same_up_to_rounding(a: np.ndarray, b: np.ndarray) -> None:
    """Equal pixels, except that a float kernel chosen per batch shape (oneDNN on CPUs with AVX512-BF16 picks
    others) may flip a rare value across a rounding boundary: at most one level, on under 1% of values.
    Noise drawn per batch instead of per image changes most values by far more."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp"])
def test_images_do_not_depend_on_the_batch(sampler: str) -> None:
    """Breakage caught: noise drawn per batch (one generator for the whole batch) or a stateful sampler reused."""
    model = _tiny_model()
    labels, indices = [0, 1, 2, 0, 1], list(range(5))
    cfg = SampleConfig(sampler=sampler, steps=4, guidance=3.0, seed=7)
    whole = generate(model, labels, indices, cfg)
    halves = generate(model, labels, indices, cfg.model_copy(update={"batch_size": 2}))
    tail = generate(model, labels[3:], indices[3:], cfg.model_copy(update={"batch_size": 1}))
    assert whole.shape == (5, 16, 16, 3) and whole.dtype == np.uint8
    _same_up_to_rounding(whole, halves)
    _same_up_to_rounding(whole[3:], tail)
    other_seed = generate(model, labels, indices, cfg.model_copy(update={"seed": 8}))
    assert not np.array_equal(whole, other_seed)


def test_sdedit_starts_from_the_given_images() -> None:
    """Breakage caught: start images ignored, or `strength` not limiting how much of the schedule is re-run."""
    model = _tiny_model()
    start = np.zeros((2, 20, 20, 3), np.uint8)
    start[1] = 255
    light = SampleConfig(sampler="ddim", steps=10, strength=0.1, seed=3)
    out = generate(model, [0, 0], [0, 1], light, start_images=start)
    # At strength 0.1 one DDIM step from a lightly noised start stays near the start image.
    assert out[0].mean() < 80 and out[1].mean() > 175, (out[0].mean(), out[1].mean())
    full = generate(model, [0, 0], [0, 1], SampleConfig(sampler="ddim", steps=10, seed=3))
    ignored = generate(model, [0, 0], [0, 1], SampleConfig(sampler="ddim", steps=10, seed=3), start_images=start)
    np.testing.assert_array_equal(full, ignored)  # strength 1.0: the start images play no part


def test_save_then_load_gives_the_same_samples(tmp_path) -> None:
    """Breakage caught: saving the raw instead of the EMA weights, or losing the class names / schedule."""
    model = _tiny_model()
    cfg = SampleConfig(steps=3, seed=5)
    before = sample(model, "c1", 3, cfg)
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.classes == ["c0", "c1", "c2"] and loaded.config == model.config
    np.testing.assert_array_equal(sample(loaded, "c1", 3, cfg), before)
    # The folder is plain diffusers: the UNet loads without this module.
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(tmp_path / "m" / "unet")
    assert unet.config.num_class_embeds == 4  # three classes + the null class


def test_sampling_errors_are_clear() -> None:
    model = _tiny_model()
    with pytest.raises(ValueError, match=r"class 'dog' is not a class of this model; choose one of \['c0'"):
        sample(model, "dog", 1, SampleConfig(steps=1))
    with pytest.raises(ValueError, match="sampler"):
        SampleConfig(sampler="euler")
    with pytest.raises(ValueError, match="leaves no denoising step"):
        generate(model, [0], [0], SampleConfig(steps=5, strength=0.1), start_images=np.zeros((1, 8, 8, 3), np.uint8))


# -------------------------------------------------------------------------------------- training state


def test_stopped_then_resumed_training_equals_uninterrupted(digits: ArraySource) -> None:
    """Breakage caught: RNG, EMA, optimiser or step counter (warm-up) not in the checkpoint."""
    x, y = digits.train_x[:96], digits.train_y[:96]
    cfg = DiffusionConfig(**(TINY | {"epochs": 2, "batch_size": 32, "warmup_steps": 4, "seed": 3}))

    straight = DiffusionTrainer(cfg, x, y, digits.classes)
    fit(straight)

    checkpoints: list[bytes] = []
    first = DiffusionTrainer(cfg, x, y, digits.classes)
    calls = iter(range(10**6))
    # Stop at the second step of epoch 2 (three steps per epoch): epoch 1 was checkpointed.
    hooks = Hooks(should_stop=lambda: next(calls) == 4, checkpoint=checkpoints.append)
    with pytest.raises(Stopped):
        fit(first, hooks)
    assert len(checkpoints) == 1
    resumed = DiffusionTrainer(cfg, x, y, digits.classes)
    resumed.restore(checkpoints[-1])
    assert resumed.epoch == 1
    fit(resumed)

    assert [h.loss for h in resumed.history] == [h.loss for h in straight.history]
    for name, tensor in straight.unet.state_dict().items():
        assert torch.equal(tensor, resumed.unet.state_dict()[name]), name
    for a, b in zip(straight.ema.shadow_params, resumed.ema.shadow_params, strict=True):
        assert torch.equal(a, b)


def test_restore_refuses_other_checkpoints(digits: ArraySource) -> None:
    x, y = digits.train_x[:16], digits.train_y[:16]
    trainer = DiffusionTrainer(DiffusionConfig(**TINY), x, y, digits.classes)
    wider = DiffusionTrainer(DiffusionConfig(**(TINY | {"width": 0.25})), x, y, digits.classes)
    with pytest.raises(ValueError, match="architecture"):
        trainer.restore(wider.state_bytes())
    with pytest.raises(CheckpointError):
        trainer.restore(b"not a checkpoint at all")


# ----------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"image_size": 48}, r"image_size\n  Input should be 16, 32 or 64"),
        ({"epochs": 0}, r"epochs\n  Input should be greater than or equal to 1"),
        ({"lr": float("nan")}, r"lr\n"),
        ({"label_dropout": 1.5}, r"label_dropout\n  Input should be less than or equal to 1"),
        ({"beta_schedule": "cosine"}, r"beta_schedule\n"),
        ({"width": 0.06}, "width 0.06 leaves a UNet block with fewer than 8 channels"),
        ({"batch_size": 2.5}, r"batch_size\n  Input should be a valid integer"),
        ({"colour": 1}, r"colour\n  Extra inputs are not permitted"),
    ],
)
def test_bad_config_is_refused_with_a_message_naming_the_field(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DiffusionConfig(**values)


def test_settings_carry_their_limits_and_descriptions() -> None:
    """The job params and the studio read these (via the params' JSON schema)."""
    schema = DiffusionConfig.model_json_schema()["properties"]
    assert schema["image_size"]["enum"] == [16, 32, 64] and schema["image_size"]["default"] == 32
    assert schema["epochs"]["minimum"] == 1 and schema["epochs"]["description"]
    assert all(entry.get("description") for entry in schema.values())
    assert SampleConfig.model_json_schema()["properties"]["sampler"]["enum"] == ["ddim", "dpmpp"]


def test_class_balance_draws_rare_classes_as_often_as_common_ones() -> None:
    """Breakage caught: class_balance ignored (plain shuffling shows the rare class 5% of the time)."""
    images = np.zeros((100, 16, 16, 3), np.uint8)
    labels = np.array([0] * 95 + [1] * 5)
    seen: list[torch.Tensor] = []
    trainer = DiffusionTrainer(DiffusionConfig(**TINY, class_balance=1.0, batch_size=100), images, labels, ["a", "b"])
    unet_forward = trainer.unet.forward

    def spy(sample, timestep, class_labels=None, **kwargs):
        seen.append(class_labels.clone())
        return unet_forward(sample, timestep, class_labels=class_labels, **kwargs)

    trainer.unet.forward = spy
    trainer.train_epoch()
    drawn = torch.cat(seen)
    rare = int((drawn == 1).sum())
    common = int((drawn == 0).sum())
    assert rare > 25 and common > 25, (rare, common)  # about 45 each (10% go to the null class)


def test_trainer_refuses_bad_data(digits: ArraySource) -> None:
    cfg = DiffusionConfig(**TINY)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        DiffusionTrainer(cfg, digits.train_x[:4], np.array([0, 1, 2, 0]), ["a", "b"])
    with pytest.raises(ValueError, match="uint8 N x H x W x 3"):
        DiffusionTrainer(cfg, digits.train_x[:4].astype(np.float32), digits.train_y[:4], digits.classes)
