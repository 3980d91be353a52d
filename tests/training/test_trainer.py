"""Trainer: repeatability, resume equivalence, epoch selection on validation, loss options, checkpoint state."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from backend.core.checkpoint import load_state, save_state
from backend.core.hooks import Hooks, Stopped
from backend.training.trainer import (
    CHECKPOINT_KIND,
    TrainConfig,
    chosen_epoch,
    copies_of,
    evaluate,
    fit,
    lr_at,
    make_loss,
    predict,
    uses_bf16,
    uses_compile,
    validation_split,
)

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], dtype=np.int64)


def _toy(n: int = 192, classes: int = 3, seed: int = 0, labels: np.ndarray | None = None):
    """Images whose mean colour encodes the class, plus noise: learnable in a couple of epochs."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes if labels is None else labels
    x = COLOURS[y % 3][:, None, None, :] + rng.integers(-40, 40, (len(y), 32, 32, 3))
    return x.clip(0, 255).astype(np.uint8), y.astype(np.int64)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "batch_size": 32, **kw})


def _history(result):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in result.history]


def _weights(result) -> dict[str, torch.Tensor]:
    return result.model.state_dict()


def _test(result, tx, ty):
    return evaluate(result.model, tx, ty, mean=MEAN, std=STD, num_classes=3)


@pytest.fixture(scope="module")
def toy():
    x, y = _toy()
    tx, ty = _toy(60, seed=1)
    vx, vy = _toy(30, seed=2)
    return x, y, tx, ty, (vx, vy)


def test_same_seed_is_bitwise_repeatable_and_seed_matters(toy) -> None:
    x, y, tx, ty, val = toy
    a = fit((x, y), _cfg(), mean=MEAN, std=STD, val=val)
    b = fit((x, y), _cfg(), mean=MEAN, std=STD, val=val)
    c = fit((x, y), _cfg(seed=1), mean=MEAN, std=STD, val=val)
    assert _history(a) == _history(b)
    assert all(torch.equal(_weights(a)[k], _weights(b)[k]) for k in _weights(a))
    assert _history(a) != _history(c)
    test = _test(a, tx, ty)
    assert test.accuracy > 60  # the toy task is learnable: the loop really trains
    assert a.epoch == 3 and len(a.history) == 3  # select_epoch "last": no selection
    assert np.array(test.confusion).sum() == len(ty)


def test_resume_matches_uninterrupted_run(toy) -> None:
    x, y, tx, ty, val = toy
    strong = np.arange(len(y)) % 5 == 0  # exercise the strong-augmentation RNG path too
    cfg = _cfg(dropout=0.2, select_epoch="best_balanced")  # the best weights travel in the state as well
    states: list[dict] = []
    straight = fit((x, y, strong), cfg, mean=MEAN, std=STD, val=val, hooks=Hooks(checkpoint=states.append))
    assert [s["epoch"] for s in states] == [1, 2, 3]
    # Persist epoch 2 the way a job does (safetensors bytes) and continue from it.
    saved = load_state(save_state(states[1], CHECKPOINT_KIND), CHECKPOINT_KIND)
    resumed = fit((x, y, strong), cfg, mean=MEAN, std=STD, val=val, resume=saved)
    assert _history(resumed) == _history(straight) and resumed.epoch == straight.epoch
    assert all(torch.equal(_weights(straight)[k], _weights(resumed)[k]) for k in _weights(straight))
    assert _test(resumed, tx, ty).confusion == _test(straight, tx, ty).confusion


def test_stop_point_raises_stopped_and_resume_rejects_other_config(toy) -> None:
    x, y, *_ = toy
    states: list[dict] = []
    calls = iter(range(10_000))
    # 6 steps per epoch: stop during the second epoch, after the first epoch's state was handed out.
    hooks = Hooks(should_stop=lambda: next(calls) >= 8, checkpoint=states.append)
    with pytest.raises(Stopped, match="epoch 2"):
        fit((x, y), _cfg(), mean=MEAN, std=STD, hooks=hooks)
    assert [s["epoch"] for s in states] == [1]
    with pytest.raises(ValueError, match="lr"):
        fit((x, y), _cfg(lr=0.05), mean=MEAN, std=STD, resume=states[0])
    assert len(fit((x, y), _cfg(), mean=MEAN, std=STD, resume=states[0]).history) == 3


def test_validation_images_and_their_copies_never_train(toy) -> None:
    x, y, _, _, (vx, vy) = toy
    # The training set holds every validation image, one of them three times (an oversampled repeat).
    data = (np.concatenate([x, vx, vx[:1], vx[:1]]), np.concatenate([y, vy, vy[:1], vy[:1]]))
    result = fit(data, _cfg(epochs=1), mean=MEAN, std=STD, val=(vx, vy))
    assert result.num_train == len(x) and result.num_val == len(vx)
    assert copies_of(data[0], vx).sum() == len(vx) + 2
    assert not copies_of(x, vx).any()


def test_best_balanced_picks_the_validation_best_epoch_not_the_test_best() -> None:
    """By construction the validation labels are what the epoch-1 model predicts, so validation is best
    at epoch 1 while the test set (true labels) is best later: the weights kept must be epoch 1's."""
    x, y = _toy(96)
    tx, ty = _toy(60, seed=1)
    vx, _ = _toy(30, seed=2)
    cfg = _cfg(epochs=4, lr=0.02)  # a slow start: the first epoch is clearly worse than the last
    states: list[dict] = []
    probe = fit((x, y), cfg, mean=MEAN, std=STD, hooks=Hooks(checkpoint=states.append))
    per_epoch_test, per_epoch_val_preds = [], []
    for state in states:
        probe.model.load_state_dict(state["model"])
        per_epoch_test.append(_test(probe, tx, ty).accuracy)
        per_epoch_val_preds.append(predict(probe.model, vx, mean=MEAN, std=STD))
    val_y = per_epoch_val_preds[0]
    test_best = int(np.argmax(per_epoch_test)) + 1
    # The construction holds: the test set prefers a later epoch, and no later epoch predicts like epoch 1.
    assert test_best != 1 and all(not np.array_equal(p, val_y) for p in per_epoch_val_preds[1:]), per_epoch_test

    result = fit((x, y), _cfg(epochs=4, lr=0.02, select_epoch="best_balanced"), mean=MEAN, std=STD, val=(vx, val_y))
    assert result.epoch == 1 and result.history[0]["val_balanced"] == 100.0
    assert all(torch.equal(v, states[0]["model"][k]) for k, v in _weights(result).items())
    assert _test(result, tx, ty).accuracy == per_epoch_test[0] < per_epoch_test[test_best - 1]


def test_chosen_epoch_uses_mean_per_class_validation_accuracy() -> None:
    # Epoch 2 has the best overall accuracy (a large majority class), epoch 3 the best mean per class.
    history = [
        {"val_acc": 80.0, "val_balanced": 50.0},
        {"val_acc": 95.0, "val_balanced": 55.0},
        {"val_acc": 90.0, "val_balanced": 70.0},
        {"val_acc": 85.0, "val_balanced": 70.0},  # a tie goes to the later epoch
        {"val_acc": 96.0, "val_balanced": 40.0},
    ]
    assert chosen_epoch(history, "best_balanced") == 4
    assert chosen_epoch(history, "last") == 5


def test_best_balanced_needs_validation(toy) -> None:
    x, y, *_ = toy
    with pytest.raises(ValueError, match="select_epoch"):
        fit((x, y), _cfg(select_epoch="best_balanced"), mean=MEAN, std=STD)


def _minority_margin(result, tx) -> float:
    """Mean over test images of (minority logit - mean of the other logits)."""
    m = result.model
    with torch.no_grad():
        t = torch.from_numpy(tx).permute(0, 3, 1, 2).float() / 255
        logits = m((t - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])
    return float((logits[:, 2] - logits[:, :2].mean(1)).mean())


def test_class_weighted_and_logit_adjusted_losses_raise_the_minority_logits() -> None:
    labels = np.array([0] * 90 + [1] * 90 + [2] * 12)  # class 2 is the minority
    x, y = _toy(labels=labels)
    tx, _ = _toy(60, seed=1)
    margins = {
        loss: _minority_margin(fit((x, y), _cfg(epochs=2, loss=loss), mean=MEAN, std=STD), tx)
        for loss in ("ce", "class_weighted", "logit_adjusted")
    }
    assert margins["class_weighted"] > margins["ce"] + 0.1, margins
    assert margins["logit_adjusted"] > margins["ce"] + 0.1, margins


def test_variant_object_with_class_weights(toy) -> None:
    x, y, tx, ty, _ = toy
    variant = SimpleNamespace(
        images=x, labels=y, strong_aug_mask=None, class_weights=np.array([1.0, 2.0, 3.0, 1.0]), classes=list("rgbu")
    )
    weighted = fit(variant, _cfg(epochs=1), mean=MEAN, std=STD)
    plain = fit((x, y), _cfg(epochs=1), mean=MEAN, std=STD, num_classes=4)
    scores = evaluate(weighted.model, tx, ty, mean=MEAN, std=STD, num_classes=4)
    assert len(scores.per_class) == 4 and scores.per_class[3] is None  # class absent from the test set
    assert weighted.history[0]["train_loss"] != plain.history[0]["train_loss"]  # the weights reach the loss
    with pytest.raises(ValueError, match="class_weights"):
        fit(SimpleNamespace(**{**vars(variant), "class_weights": np.ones(3)}), _cfg(epochs=1), mean=MEAN, std=STD)


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


def test_validation_split_is_stratified_seeded_and_keeps_singletons() -> None:
    labels = np.repeat([0, 1, 2, 3], [100, 40, 10, 1])
    for seed in range(5):  # each class gives its share, whatever the seed
        assert np.bincount(labels[validation_split(labels, 0.2, seed)], minlength=4).tolist() == [20, 8, 2, 0]
    va = validation_split(labels, 0.2, seed=3)
    assert np.array_equal(va, validation_split(labels, 0.2, seed=3))
    assert not np.array_equal(va, validation_split(labels, 0.2, seed=4))
    assert len(validation_split(labels, 0.0, seed=0)) == 0
    assert 150 not in validation_split(labels, 0.9, seed=0)  # a single image cannot be split off


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
    for field, value in (("loss", "focal"), ("precision", "fp16"), ("select_epoch", "best_test"), ("epochs", 0)):
        with pytest.raises(ValueError, match=field):
            TrainConfig(**{field: value})
    assert TrainConfig.from_dict(TrainConfig(epochs=7).to_dict()).epochs == 7


def test_precision_choice() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert uses_bf16("auto", cuda) and uses_bf16("bf16", cpu)
    assert not uses_bf16("fp32", cpu) and not uses_bf16("fp32", cuda)
    assert uses_bf16("auto", cpu) == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_bf16_and_fp32_both_learn_and_differ(toy) -> None:
    x, y, tx, ty, _ = toy
    fp32 = fit((x, y), _cfg(precision="fp32"), mean=MEAN, std=STD)
    bf16 = fit((x, y), _cfg(precision="bf16"), mean=MEAN, std=STD)
    accs = _test(fp32, tx, ty).accuracy, _test(bf16, tx, ty).accuracy
    assert min(accs) >= 90.0, accs
    # bf16 autocast really ran: its rounding moves the training loss away from fp32's.
    assert _history(fp32) != _history(bf16)
    assert fp32.config["precision"] == "fp32" and bf16.config["precision"] == "bf16"


def test_synthetic_weight_is_a_normalised_per_example_weight() -> None:
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [0.3, -0.2, 1.0]])
    target = torch.tensor([2, 0, 1])
    sw = torch.tensor([0.25, 1.0, 1.0])  # the first example is synthetic
    per = -torch.log_softmax(logits, 1)[[0, 1, 2], target]
    ce = make_loss(TrainConfig(), labels, 3, None, "cpu")
    assert torch.allclose(ce(logits, target, sw), (per * sw).sum() / sw.sum())
    assert torch.allclose(ce(logits, target, torch.ones(3)), ce(logits, target))
    # With class weights both weights multiply; the normaliser is their product too.
    w = torch.tensor([10 / 18, 10 / 9, 10 / 3])
    cw = make_loss(TrainConfig(loss="class_weighted"), labels, 3, None, "cpu")
    assert torch.allclose(cw(logits, target, sw), (per * w[target] * sw).sum() / (w[target] * sw).sum())


def _mixed(toy, synthetic_every: int = 3):
    """The toy set as a Variant with every third image marked synthetic."""
    x, y, *_ = toy
    origin = np.where(np.arange(len(y)) % synthetic_every == 0, "synthetic", "real").astype(object)
    return SimpleNamespace(images=x, labels=y, strong_aug_mask=None, class_weights=None, classes=None, origin=origin)


def test_synthetic_weight_reaches_training_only_when_there_are_synthetic_images(toy) -> None:
    x, y, *_ = toy
    plain = fit(_mixed(toy), _cfg(epochs=1), mean=MEAN, std=STD)
    weighted = fit(_mixed(toy), _cfg(epochs=1, synthetic_weight=0.3), mean=MEAN, std=STD)
    assert weighted.history[0]["train_loss"] != plain.history[0]["train_loss"]
    real_only = SimpleNamespace(**{**vars(_mixed(toy)), "origin": np.full(len(y), "real", dtype=object)})
    a = fit(real_only, _cfg(epochs=1), mean=MEAN, std=STD)
    b = fit(real_only, _cfg(epochs=1, synthetic_weight=0.3), mean=MEAN, std=STD)
    assert all(torch.equal(_weights(a)[k], _weights(b)[k]) for k in _weights(a))


def test_finetune_real_refits_only_the_head_after_the_mixed_training(toy) -> None:
    _, _, tx, ty, val = toy
    base = fit(_mixed(toy), _cfg(), mean=MEAN, std=STD, val=val)
    states: list[dict] = []
    tuned = fit(
        _mixed(toy), _cfg(finetune_real_epochs=2), mean=MEAN, std=STD, val=val, hooks=Hooks(checkpoint=states.append)
    )
    assert [h["phase"] for h in tuned.history] == ["train"] * 3 + ["finetune_real"] * 2 and tuned.epoch == 5
    before, after = _weights(base), _weights(tuned)
    # The backbone (BatchNorm running statistics included) is exactly that of the mixed training ...
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("head."))
    # ... and the head moved.
    assert not torch.equal(before["head.1.weight"], after["head.1.weight"])
    assert _test(tuned, tx, ty).accuracy > 60
    # Resuming inside the fine-tune phase continues exactly (its own optimizer state travels in the state).
    saved = load_state(save_state(states[3], CHECKPOINT_KIND), CHECKPOINT_KIND)
    resumed = fit(_mixed(toy), _cfg(finetune_real_epochs=2), mean=MEAN, std=STD, val=val, resume=saved)
    assert _history(resumed) == _history(tuned)
    assert all(torch.equal(after[k], _weights(resumed)[k]) for k in after)


def test_finetune_real_needs_real_images(toy) -> None:
    x, y, *_ = toy
    all_synthetic = SimpleNamespace(**{**vars(_mixed(toy)), "origin": np.full(len(y), "synthetic", dtype=object)})
    with pytest.raises(ValueError, match="finetune_real_epochs"):
        fit(all_synthetic, _cfg(finetune_real_epochs=1), mean=MEAN, std=STD)
    with pytest.raises(ValueError):
        TrainConfig(synthetic_weight=0)


def test_compile_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._inductor import config as inductor_config

    from backend.training.trainer import COMPILE_MIN_STEPS

    assert uses_compile("on", 1) and not uses_compile("off", 10**6)
    assert not uses_compile("auto", COMPILE_MIN_STEPS - 1)  # short runs: compiling costs more than it saves
    cpu = torch.device("cpu")
    assert not uses_compile("auto", COMPILE_MIN_STEPS, cpu, bf16=True)  # measured slower compiled
    assert not uses_compile("auto", COMPILE_MIN_STEPS, torch.device("cuda"))  # not measured yet
    assert uses_compile("auto", COMPILE_MIN_STEPS, cpu) == (shutil.which(inductor_config.cpp.cxx[-1]) is not None)
    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, "/nonexistent/g++"))
    assert not uses_compile("auto", COMPILE_MIN_STEPS)  # no compiler: never tried


@pytest.mark.slow
def test_compiled_training_learns_and_keeps_plain_weights(toy) -> None:
    """compile="on": the training forward runs through torch.compile (inductor, a real C++ build), the
    model learns like the eager one, and the weights, checkpoints and evaluation stay the plain module's."""
    x, y, tx, ty, _ = toy
    states: list[dict] = []
    compiled = fit(
        (x, y), _cfg(compile="on", precision="fp32"), mean=MEAN, std=STD, hooks=Hooks(checkpoint=states.append)
    )
    eager = fit((x, y), _cfg(precision="fp32"), mean=MEAN, std=STD)
    assert _test(compiled, tx, ty).accuracy >= 90.0
    assert set(_weights(compiled)) == set(_weights(eager))  # no "_orig_mod." prefixes
    assert compiled.config["compile"] == "on"
    resumed = fit((x, y), _cfg(compile="on", precision="fp32"), mean=MEAN, std=STD, resume=states[1])
    assert len(resumed.history) == 3 and _test(resumed, tx, ty).accuracy >= 90.0


def test_a_compiler_failure_trains_eagerly(toy, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    from torch._inductor import config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, "/nonexistent/g++"))
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)  # a cached build would need no compiler
    torch._dynamo.reset()
    x, y, tx, ty, _ = toy
    with caplog.at_level("WARNING", logger="backend.training.trainer"):
        result = fit((x, y), _cfg(compile="on", precision="fp32"), mean=MEAN, std=STD)
    torch._dynamo.reset()
    assert "torch.compile failed" in caplog.text
    eager = fit((x, y), _cfg(precision="fp32"), mean=MEAN, std=STD)
    assert _history(result) == _history(eager)  # the whole run was the eager one


def _count_steps(data, config: TrainConfig) -> tuple[int, object]:
    """(optimiser steps ``fit`` really took -- one progress call each --, the fit)."""
    calls = []
    result = fit(data, config, mean=MEAN, std=STD, hooks=Hooks(progress=lambda f, m=None: calls.append(m)))
    return len(calls), result


def test_steps_are_the_same_whatever_the_size_of_the_training_set() -> None:
    """A set 6x larger gets the same number of optimiser steps, not 6x as many (in epochs it would)."""
    small_set, large_set = _toy(64), _toy(384, seed=3)
    config = _cfg(steps=25, batch_size=16)
    for data in (small_set, large_set):
        taken, result = _count_steps(data, config)
        assert taken == 25 and result.steps == 25 and result.history[-1]["steps"] == 25
        assert len(result.history) == config.periods(len(data[1]) // 16)[0]
    # In epochs the larger set trains longer: that is what steps exist to prevent.
    assert _count_steps(small_set, _cfg(epochs=2, batch_size=16))[0] == 8
    assert _count_steps(large_set, _cfg(epochs=2, batch_size=16))[0] == 48


def test_periods_of_a_step_schedule() -> None:
    # A tiny set (2 batches a pass) is not validated after every pass: at most MAX_PERIODS periods.
    assert TrainConfig(steps=3000).periods(2) == (30, 100)
    # A large set: one period per pass, the last one shorter so the total is exact.
    assert TrainConfig(steps=250).periods(100) == (3, 100)
    assert TrainConfig(epochs=7).periods(5) == (7, 5) and TrainConfig(epochs=7).total_steps(5) == 35


def test_step_schedule_resumes_exactly(toy) -> None:
    x, y, *_ = toy
    config = _cfg(steps=40, batch_size=32)  # 6 batches a pass: periods of 6 steps, the last of 4
    full = fit((x, y), config, mean=MEAN, std=STD)
    states = []
    fit((x, y), config, mean=MEAN, std=STD, hooks=Hooks(checkpoint=states.append))
    saved = load_state(save_state(states[2], CHECKPOINT_KIND), CHECKPOINT_KIND)
    resumed = fit((x, y), config, mean=MEAN, std=STD, resume=saved)
    assert _history(resumed) == _history(full)
    for k, v in _weights(full).items():
        assert torch.equal(v, _weights(resumed)[k]), k


def test_small_images_are_upscaled_for_training_and_testing() -> None:
    """8x8 images: trained and tested at min_side 32 (the padded crop no longer shifts half the image)."""
    x, y = _toy(96)
    tiny = x[:, ::4, ::4]  # 8x8
    result = fit((tiny, y), _cfg(epochs=2, min_side=32), mean=MEAN, std=STD)
    assert result.train_balanced is not None and result.train_balanced > 90
    # predict upscales exactly as training did; without it the model would see another image size.
    up = predict(result.model, tiny, mean=MEAN, std=STD, min_side=32)
    assert (up == y).mean() > 0.9
    from backend.training.trainer import upscaled

    t = torch.from_numpy(tiny).permute(0, 3, 1, 2)
    assert upscaled(t, 32).shape[-2:] == (32, 32) and upscaled(t, 0) is t and upscaled(t, 8) is t
    assert upscaled(t[:, :, :, :4], 32).shape[-2:] == (64, 32)  # 8x4: the shorter side reaches 32


def test_train_balanced_measures_the_fit_on_real_images_only() -> None:
    """train_balanced is the mean per-class accuracy on the real training images: a model that never fits
    the one minority class scores at most (K-1)/K * 100 however many majority images it fits."""
    x, y = _toy(192)
    variant = SimpleNamespace(images=x, labels=y, origin=np.where(np.arange(192) < 150, "real", "synthetic"))
    result = fit(variant, _cfg(epochs=3), mean=MEAN, std=STD)
    assert result.train_balanced == pytest.approx(100.0, abs=5)
    untrained = fit((x, y), _cfg(steps=1, lr=1e-4), mean=MEAN, std=STD)
    assert untrained.train_balanced < 90  # one tiny step: the fit is flagged as under-trained
