"""Trainer: repeatability, resume equivalence, loss options, validation split, checkpoint state."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from backend.training.trainer import (
    TrainConfig,
    TrainingInterrupted,
    content_groups,
    lr_at,
    make_loss,
    state_from_safetensors,
    state_to_safetensors,
    stratified_split,
    train,
    uses_bf16,
)

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def _toy(n: int = 192, classes: int = 3, seed: int = 0):
    """Images whose mean colour encodes the class, plus noise: learnable in a couple of epochs."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    base = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], dtype=np.int64)[y % 3]
    x = base[:, None, None, :] + rng.integers(-40, 40, (n, 32, 32, 3))
    return x.clip(0, 255).astype(np.uint8), y.astype(np.int64)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "batch_size": 32, "val_fraction": 0.2, **kw})


def _history(result):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in result.history]


@pytest.fixture(scope="module")
def toy():
    x, y = _toy()
    tx, ty = _toy(60, seed=1)
    return x, y, tx, ty


def test_same_seed_is_bitwise_repeatable_and_seed_matters(toy) -> None:
    x, y, tx, ty = toy
    a = train((x, y), tx, ty, _cfg(), mean=MEAN, std=STD)
    b = train((x, y), tx, ty, _cfg(), mean=MEAN, std=STD)
    c = train((x, y), tx, ty, _cfg(seed=1), mean=MEAN, std=STD)
    assert _history(a) == _history(b)
    assert all(torch.equal(a.model_state[k], b.model_state[k]) for k in a.model_state)
    assert _history(a) != _history(c)
    assert a.test_acc > 60  # the toy task is learnable: the loop really trains
    assert len(a.history) == 3 and 1 <= a.best_epoch <= 3
    assert np.array(a.confusion).sum() == len(ty)


def test_resume_matches_uninterrupted_run(toy) -> None:
    x, y, tx, ty = toy
    strong = np.arange(len(y)) % 5 == 0  # exercise the strong-augmentation RNG path too
    cfg = _cfg(dropout=0.2)
    states: dict[int, dict] = {}
    straight = train((x, y, strong), tx, ty, cfg, mean=MEAN, std=STD, on_epoch_end=lambda e, s: states.update({e: s}))
    # Persist epoch 2 the way a job does (safetensors bytes + JSON) and continue from it.
    data, meta = state_to_safetensors(states[2])
    resumed = train((x, y, strong), tx, ty, cfg, mean=MEAN, std=STD, resume_state=state_from_safetensors(data, meta))
    assert _history(resumed) == _history(straight)
    assert all(torch.equal(straight.model_state[k], resumed.model_state[k]) for k in straight.model_state)
    assert resumed.confusion == straight.confusion


def test_should_stop_interrupts_and_resume_rejects_other_config(toy) -> None:
    x, y, tx, ty = toy
    states: dict[int, dict] = {}
    calls = iter(range(10_000))
    with pytest.raises(TrainingInterrupted):
        # 4 steps per epoch: stop during the second epoch, after the first epoch's state was handed out.
        train(
            (x, y),
            tx,
            ty,
            _cfg(),
            mean=MEAN,
            std=STD,
            should_stop=lambda: next(calls) >= 6,
            on_epoch_end=lambda e, s: states.update({e: s}),
        )
    assert list(states) == [1]
    with pytest.raises(ValueError, match="lr"):
        train((x, y), tx, ty, _cfg(lr=0.05), mean=MEAN, std=STD, resume_state=states[1])
    # A state saved before TrainConfig had ``precision`` still resumes (the key takes its default).
    old = dict(states[1], config={k: v for k, v in states[1]["config"].items() if k != "precision"})
    assert len(train((x, y), tx, ty, _cfg(), mean=MEAN, std=STD, resume_state=old).history) == 3


def test_variant_object_with_class_weights_and_losses(toy) -> None:
    x, y, tx, ty = toy
    variant = SimpleNamespace(
        images=x,
        labels=y,
        strong_aug_mask=None,
        class_weights=np.array([1.0, 2.0, 3.0, 1.0]),
        classes=["r", "g", "b", "unused"],
    )
    r = train(variant, tx, ty, _cfg(epochs=1), mean=MEAN, std=STD)
    assert len(r.test_per_class) == 4 and r.test_per_class[3] is None  # class absent from the test set
    for loss in ("class_weighted", "logit_adjusted"):
        res = train((x, y), tx, ty, _cfg(epochs=1, loss=loss), mean=MEAN, std=STD)
        assert math.isfinite(res.history[0]["train_loss"])


def test_loss_options_match_hand_computed_values() -> None:
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    target = torch.tensor([2, 0])
    ce = make_loss(TrainConfig(), labels, 3, None, "cpu")(logits, target)
    assert torch.allclose(ce, torch.nn.functional.cross_entropy(logits, target))

    # Inverse frequency: N / (K n_c) = 10 / (3 * [6, 3, 1]).
    w = torch.tensor([10 / 18, 10 / 9, 10 / 3])
    cw = make_loss(TrainConfig(loss="class_weighted"), labels, 3, None, "cpu")(logits, target)
    per = -torch.log_softmax(logits, 1)[[0, 1], target]
    assert torch.allclose(cw, (per * w[target]).sum() / w[target].sum())

    # Logit adjustment: logits + log(prior), prior = [0.6, 0.3, 0.1].
    la = make_loss(TrainConfig(loss="logit_adjusted"), labels, 3, None, "cpu")(logits, target)
    shifted = logits + torch.log(torch.tensor([0.6, 0.3, 0.1]))
    assert torch.allclose(la, torch.nn.functional.cross_entropy(shifted, target))
    assert la > ce  # the rare true class (2) is penalised harder


def test_stratified_split_is_disjoint_stratified_seeded() -> None:
    labels = np.repeat([0, 1, 2], [100, 40, 5])
    tr, va = stratified_split(labels, 0.2, seed=3)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(labels)
    assert np.bincount(labels[va], minlength=3).tolist() == [20, 8, 1]
    assert np.array_equal(va, stratified_split(labels, 0.2, seed=3)[1])
    assert not np.array_equal(va, stratified_split(labels, 0.2, seed=4)[1])
    # A class with a single sample keeps it for training.
    tr1, va1 = stratified_split(np.array([0] * 10 + [1]), 0.5, seed=0)
    assert 10 in tr1 and 10 not in va1


def test_split_keeps_copies_together_and_only_holds_out_eligible() -> None:
    x, y = _toy(30)
    images = np.concatenate([x, x[:3], x[:3]])  # oversampled repeats of the first three images
    labels = np.concatenate([y, y[:3], y[:3]])
    eligible = np.ones(len(labels), bool)
    eligible[30:] = False  # repeats are strong-augmented: never validation
    groups = content_groups(images)
    assert len(np.unique(groups)) == 30
    tr, va = stratified_split(labels, 0.3, seed=0, groups=groups, eligible=eligible)
    assert not set(groups[tr]) & set(groups[va])  # no image on both sides
    assert not {0, 1, 2} & set(va.tolist())  # repeated images (with ineligible copies) always train
    assert len(va) == 9


def test_schedule_warmup_and_cosine() -> None:
    assert TrainConfig(epochs=100).warmup == 5 and TrainConfig(epochs=30).warmup == 3
    assert TrainConfig(epochs=8).warmup == 0 and TrainConfig(epochs=8, warmup_epochs=2).warmup == 2
    assert lr_at(0, 100, 10, 0.1) == pytest.approx(0.01)
    assert lr_at(9, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_at(10, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_at(55, 100, 10, 0.1) == pytest.approx(0.05)
    assert lr_at(99, 100, 10, 0.1) < 1e-3


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unknown training config keys: bogus"):
        TrainConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="loss"):
        TrainConfig(loss="focal")
    with pytest.raises(ValueError, match="val_fraction"):
        TrainConfig(val_fraction=1.5)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")
    assert TrainConfig.from_dict(TrainConfig(epochs=7).to_dict()).epochs == 7


def test_precision_choice() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert uses_bf16("auto", cuda) and uses_bf16("bf16", cpu)
    assert not uses_bf16("fp32", cpu) and not uses_bf16("fp32", cuda)
    assert uses_bf16("auto", cpu) == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_bf16_and_fp32_both_learn_and_differ(toy) -> None:
    x, y, tx, ty = toy
    fp32 = train((x, y), tx, ty, _cfg(precision="fp32"), mean=MEAN, std=STD)
    bf16 = train((x, y), tx, ty, _cfg(precision="bf16"), mean=MEAN, std=STD)
    assert fp32.test_acc >= 90.0 and bf16.test_acc >= 90.0, (fp32.test_acc, bf16.test_acc)
    # bf16 autocast really ran: its rounding moves the training loss away from fp32's.
    assert _history(fp32) != _history(bf16)
    assert fp32.config["precision"] == "fp32" and bf16.config["precision"] == "bf16"
