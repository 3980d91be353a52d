"""The round loop on a tiny colour-coded set with the real trainer: picks, checkpoints, resume, stop."""

from __future__ import annotations

import json

import numpy as np
import pytest

from backend.selection.loop import SelectionConfig, run_selection

RED, BLUE, GREEN = 0, 1, 2  # GREEN is the starved class


def _colour(n: int, channel: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.integers(0, 90, size=(n, 32, 32, 3))
    x[..., channel] += 140
    return x.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def data() -> dict:
    rng = np.random.default_rng(0)
    real_x = np.concatenate([_colour(24, 0, rng), _colour(24, 2, rng), _colour(6, 1, rng)])
    real_y = np.array([RED] * 24 + [BLUE] * 24 + [GREEN] * 6)
    # Pool: 16 green, 16 red/blue, then 2 exact copies of real green training images (memorised output).
    pool_x = np.concatenate([_colour(16, 1, rng), _colour(8, 0, rng), _colour(8, 2, rng), real_x[-2:]])
    return {"real_x": real_x, "real_y": real_y, "pool_x": pool_x, "ids": list(range(100, 134))}


def _config(**kw) -> SelectionConfig:
    base = dict(budget=6, per_round=3, acquisition="target_prob", epochs=2, batch_size=16, lr=0.2, mc_samples=4)
    return SelectionConfig(**{**base, **kw, "map_real": 20, "map_pool": 20})


def _run(data: dict, cfg: SelectionConfig, **kw):
    return run_selection(data["real_x"], data["real_y"], GREEN, data["pool_x"], data["ids"], cfg, **kw)


@pytest.fixture(scope="module")
def full_run(data: dict) -> tuple:
    states: list[tuple[int, dict]] = []
    # reserve=40: every unpicked candidate is ranked into the reserve, so the planted copies get checked.
    result = _run(data, _config(reserve=40), on_round_end=lambda r, s: states.append((r, s)))
    return result, states


def test_picks_rounds_and_summaries(full_run: tuple) -> None:
    result, states = full_run
    assert [p["rank"] for p in result.picks] == list(range(6))
    assert [p["round"] for p in result.picks] == [0, 0, 0, 1, 1, 1]
    ids = [p["image_id"] for p in result.picks]
    assert len(set(ids)) == 6 and all(100 <= i < 134 for i in ids)
    # Green candidates are positions 0..15 and the two planted copies 32, 33: target_prob finds them.
    green = sum(p["index"] < 16 or p["index"] >= 32 for p in result.picks)
    assert green >= 5, result.picks
    assert [r["round"] for r in result.rounds] == [0, 1]
    assert result.rounds[1]["train_size"] == 54 + 3
    assert all(0.0 <= p["minority_prob"] <= 1.0 for p in result.picks)
    assert len(result.reserve) == 34 - 6 and not {r["image_id"] for r in result.reserve} & set(ids)
    assert [r for r, _ in states] == [0, 1]
    json.dumps(states[-1][1])  # the checkpointed state is plain JSON
    fmap = result.feature_map
    assert fmap["counts"] == {"real": 20, "pool": 20, "picks": 6}


def test_planted_copies_of_training_images_are_flagged(full_run: tuple) -> None:
    result, _ = full_run
    checked = result.picks + result.reserve
    planted = [p for p in checked if p["image_id"] in (132, 133)]
    assert len(planted) == 2
    assert all(p["near_copy"] and p["nn_distance"] < 1e-4 for p in planted)
    distinct = [p for p in checked if p["image_id"] not in (132, 133)]
    assert all(p["nn_distance"] > 0 for p in distinct)


def test_resume_from_a_round_checkpoint_gives_the_same_picks(data: dict, full_run: tuple) -> None:
    result, states = full_run
    after_round0 = states[0][1]
    assert len(after_round0["picks"]) == 3 and not after_round0["done"]
    resumed = _run(data, _config(reserve=40), state=after_round0)
    assert [p["image_id"] for p in resumed.picks] == [p["image_id"] for p in result.picks]
    np.testing.assert_allclose([p["score"] for p in resumed.picks], [p["score"] for p in result.picks], rtol=1e-5)
    # A finished state returns at once, without training anything.
    done = _run(data, _config(reserve=40), state=states[-1][1], train_fn=None, should_stop=lambda: True)
    assert not done.stopped and done.picks == result.picks


def test_stop_returns_the_last_finished_round(data: dict) -> None:
    rounds_done: list[int] = []
    result = _run(
        data,
        _config(acquisition="random"),
        on_round_end=lambda r, s: rounds_done.append(r),
        should_stop=lambda: len(rounds_done) >= 1,
    )
    assert result.stopped and rounds_done == [0]
    assert len(result.state["picks"]) == 3 and len(result.rounds) == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [({"budget": 35}, "budget"), ({"per_round": 0}, "per_round"), ({"acquisition": "nope"}, "acquisition")],
)
def test_bad_config_names_the_field(data: dict, change: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        _run(data, _config(**change))


def test_epig_with_batch_knobs_runs_and_stores_the_quality_panel(data: dict, full_run: tuple) -> None:
    """EPIG (target set: the 6 real greens) with stochastic sampling and k-center runs end to end;
    the finished state carries the quality panel of the pool per class and of the picks."""
    cfg = _config(acquisition="validity_then_epig", stochastic="softrank", beta=2.0, diversity="k_center")
    result = _run(data, cfg)
    assert len(result.picks) == 6 and len({p["index"] for p in result.picks}) == 6
    quality = result.quality
    assert quality["target"] == "2" and set(quality["pool"]) == {"0", "1", "2"}
    assert quality["picks"]["n_fake"] == 6 and quality["picks"]["n_real"] == 6
    # The pool is half green: it sits closer to the real greens than to the reds (Fréchet distance).
    assert quality["pool"]["2"]["frechet"] < quality["pool"]["0"]["frechet"], quality["pool"]
    assert full_run[0].quality["picks"] is not None  # the default (target_prob) run stores it too
    with pytest.raises(ValueError, match="minority"):
        _run({**data, "real_y": np.where(data["real_y"] == GREEN, RED, data["real_y"])}, _config(acquisition="epig"))
