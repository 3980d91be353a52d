"""Hooks: the one way core loops report progress and stop."""

from __future__ import annotations

import pytest

from backend.core.hooks import NO_HOOKS, Hooks, Stopped


def test_stop_point_raises_only_when_asked() -> None:
    NO_HOOKS.stop_point("anywhere")  # the default never stops
    asked = iter([False, True])
    hooks = Hooks(should_stop=lambda: next(asked))
    hooks.stop_point("step 1")
    with pytest.raises(Stopped, match="stopped at step 2"):
        hooks.stop_point("at step 2")


def test_scaled_maps_a_sub_step_into_its_share_of_the_caller_range() -> None:
    seen: list[tuple[float, str | None]] = []
    outer = Hooks(progress=lambda f, m=None: seen.append((round(f, 6), m)))
    inner = outer.scaled(0.5, 0.75, "epoch 2/4: ")
    inner.progress(0.0, "batch 1")
    inner.progress(0.5)
    inner.progress(2.0, "done")  # clamped: a sub-step never reports past its share
    assert seen == [(0.5, "epoch 2/4: batch 1"), (0.625, "epoch 2/4"), (0.75, "epoch 2/4: done")]
    assert inner.should_stop is outer.should_stop  # stopping still reaches the caller
