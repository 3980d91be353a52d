"""The verdict: paired differences over seeds with an interval that covers seed and test-sample variation, the
strongest classical baseline, and 'can't tell' for under-trained runs or one seed."""

from __future__ import annotations

import numpy as np
import pytest

from backend.reports.verdict import (
    BASELINES,
    pack_bits,
    pack_labels,
    paired_interval,
    strongest_baseline,
    unpack_bits,
    unpack_labels,
    verdicts,
)

CLASSES = ["a", "b", "m"]  # "m" is the minority


def _labels(per_class: int) -> np.ndarray:
    return np.repeat(np.arange(3), per_class)


def _correct(labels: np.ndarray, acc: dict[int, float], rng: np.random.Generator) -> np.ndarray:
    """Per-image correctness with exactly round(acc * n) correct images per class, at random positions."""
    out = np.zeros(len(labels), bool)
    for c, a in acc.items():
        idx = np.flatnonzero(labels == c)
        out[rng.choice(idx, round(a * len(idx)), replace=False)] = True
    return out


def _row(variant: str, seed: int, correct: np.ndarray, labels: np.ndarray, n_synthetic: int = 0, **extra) -> dict:
    per_class = {c: 100.0 * correct[labels == i].mean() for i, c in enumerate(CLASSES)}
    return {
        "variant": variant,
        "seed": seed,
        "overall_acc": 100.0 * correct.mean(),
        "per_class": per_class,
        "n_synthetic": n_synthetic,
        "test_correct": pack_bits(correct),
        "under_trained": False,
        **extra,
    }


def _study(labels, minority_acc: dict[str, list[float]], seed: int = 0, **synthetic_extra) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for variant, accs in minority_acc.items():
        for s, a in enumerate(accs):
            correct = _correct(labels, {0: 0.9, 1: 0.9, 2: a}, rng)
            synth = 100 if variant == "synthetic" else 0
            rows.append(_row(variant, s, correct, labels, synth, **(synthetic_extra if synth else {})))
    return rows


def test_packing_round_trips() -> None:
    bits = np.random.default_rng(0).random(1001) < 0.5
    assert (unpack_bits(pack_bits(bits), 1001) == bits).all()
    labels = np.random.default_rng(1).integers(0, 300, 777)
    assert (unpack_labels(pack_labels(labels)) == labels).all()
    with pytest.raises(ValueError):
        pack_labels(np.array([-1]))


def test_a_clear_gain_helps_a_clear_loss_hurts() -> None:
    labels = _labels(200)
    rows = _study(labels, {"oversample": [0.40, 0.42, 0.41], "synthetic": [0.80, 0.82, 0.79]})
    (v,) = verdicts(rows, CLASSES, ["m"], pack_labels(labels))
    assert v["variant"] == "synthetic" and v["baseline"] == "oversample" and v["seeds"] == [0, 1, 2]
    assert v["verdict"] == "helps" and v["minority_ci"][0] > 0
    assert v["minority_delta"] == pytest.approx(np.mean([80 - 40, 82 - 42, 79 - 41]), abs=0.01)
    rows = _study(labels, {"oversample": [0.80, 0.82, 0.79], "synthetic": [0.40, 0.42, 0.41]})
    assert verdicts(rows, CLASSES, ["m"], pack_labels(labels))[0]["verdict"] == "hurts"


def test_the_interval_covers_test_sample_variation() -> None:
    """The same difference in every seed (no seed-to-seed spread): the interval still has the width of the test
    set's sampling noise, and a small test set gives a wider one than a large test set."""
    widths = {}
    for n in (20, 500):
        labels = _labels(n)
        v = _correct(labels, {0: 1.0, 1: 1.0, 2: 0.7}, np.random.default_rng(0))
        b = _correct(labels, {0: 1.0, 1: 1.0, 2: 0.5}, np.random.default_rng(1))
        stat = paired_interval(np.stack([v] * 3), np.stack([b] * 3), labels, [2])
        assert stat["minority"]["var_seed"] == 0 and stat["minority"]["delta"] == pytest.approx(20)
        lo, hi = stat["minority"]["ci"]
        widths[n] = hi - lo
    assert widths[20] > 10 and widths[500] < widths[20] / 3  # ~ 1/sqrt(n): 5x fewer images, ~sqrt(25) wider
    # With 20 minority test images a 20-point gain is within the noise: not 'helps'.
    labels = _labels(20)
    rows = _study(labels, {"oversample": [0.5, 0.5, 0.5], "synthetic": [0.7, 0.7, 0.7]})
    assert verdicts(rows, CLASSES, ["m"], pack_labels(labels))[0]["verdict"] != "helps"


def test_the_interval_covers_seed_variation() -> None:
    """A large test set (little sampling noise) but seeds that disagree (+30, -30, +30 points): the interval
    must be as wide as the seeds' spread, so no verdict is drawn."""
    labels = _labels(2000)
    rows = _study(labels, {"oversample": [0.5, 0.8, 0.5], "synthetic": [0.8, 0.5, 0.8]})
    (v,) = verdicts(rows, CLASSES, ["m"], pack_labels(labels))
    lo, hi = v["minority_ci"]
    assert v["minority_delta"] == pytest.approx(10, abs=0.1) and lo < 0 < hi and hi - lo > 60
    assert v["verdict"] == "cant_tell" and v["seeds_needed"] is not None and v["seeds_needed"] > 3


def test_the_baseline_is_the_strongest_classical_variant() -> None:
    labels = _labels(100)
    accs = {"imbalanced": [0.95] * 2, "full": [0.99] * 2, "oversample": [0.3] * 2, "logit_adjusted": [0.6] * 2,
            "class_weighted": [0.5] * 2, "synthetic": [0.55] * 2}  # fmt: skip
    rows = _study(labels, accs)
    # imbalanced and full are not remedies a user could pick instead: never the baseline.
    assert strongest_baseline(rows, ["m"]) == "logit_adjusted"
    (v,) = verdicts(rows, CLASSES, ["m"], pack_labels(labels))
    assert v["baseline"] == "logit_adjusted" and v["minority_delta"] == pytest.approx(-5.0)
    assert set(BASELINES) == {"oversample", "oversample_aug", "class_weighted", "logit_adjusted"}


def test_under_training_or_one_seed_means_cant_tell() -> None:
    labels = _labels(200)
    rows = _study(labels, {"oversample": [0.4, 0.41, 0.42], "synthetic": [0.9, 0.91, 0.9]}, under_trained=True)
    (v,) = verdicts(rows, CLASSES, ["m"], pack_labels(labels))
    assert v["minority_ci"][0] > 0  # the effect is clear ...
    assert v["verdict"] == "cant_tell" and "under-trained" in v["reason"]  # ... but the runs are not fit
    # The baseline's under-training counts too.
    rows = _study(labels, {"oversample": [0.4, 0.41, 0.42], "synthetic": [0.9, 0.91, 0.9]})
    rows[0]["under_trained"] = True
    assert verdicts(rows, CLASSES, ["m"], pack_labels(labels))[0]["verdict"] == "cant_tell"
    # One seed: the spread over seeds is unknown.
    rows = _study(labels, {"oversample": [0.4], "synthetic": [0.9]})
    (v,) = verdicts(rows, CLASSES, ["m"], pack_labels(labels))
    assert v["verdict"] == "cant_tell" and v["seeds_needed"] == 3 and "one seed" in v["reason"]


def test_overall_loss_beyond_the_margin_is_not_help() -> None:
    """The minority gains, but the other classes lose 10 points each: 'hurts', never 'helps'."""
    labels = _labels(500)
    rng = np.random.default_rng(0)
    rows = []
    for s in range(3):
        rows.append(_row("oversample", s, _correct(labels, {0: 0.95, 1: 0.95, 2: 0.4}, rng), labels))
        rows.append(_row("synthetic", s, _correct(labels, {0: 0.8, 1: 0.8, 2: 0.5}, rng), labels, 50))
    (v,) = verdicts(rows, CLASSES, ["m"], pack_labels(labels))
    assert v["minority_ci"][0] > 0 and v["overall_ci"][1] < -1 and v["verdict"] == "hurts"


def test_no_baseline_or_no_per_image_results() -> None:
    labels = _labels(50)
    rows = _study(labels, {"imbalanced": [0.2], "synthetic": [0.6]})
    (v,) = verdicts(rows, CLASSES, ["m"], pack_labels(labels))
    assert v["verdict"] == "cant_tell" and v["baseline"] is None and "no classical baseline" in v["reason"]
    rows = _study(labels, {"oversample": [0.2, 0.2], "synthetic": [0.6, 0.6]})
    assert verdicts(rows, CLASSES, ["m"], None)[0]["reason"].startswith("runs recorded before")
    assert verdicts([r for r in rows if r["variant"] == "oversample"], CLASSES, ["m"], None) == []
