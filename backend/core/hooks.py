"""One way for a core loop (training, generation, selection, cache building) to talk to its caller.

Core code never imports the job, web or database layers. It receives a :class:`Hooks` and

- calls ``hooks.progress(fraction, message)`` as it goes (fraction in [0, 1]),
- calls ``hooks.log(message)`` for the lines a user should read in the job's log,
- calls ``hooks.stop_point(where)`` at safe places: it raises :class:`Stopped` when the caller asked to stop,
- hands resumable state to ``hooks.checkpoint(state)`` when the caller wants it,
- shows a picture of the work in progress through ``hooks.preview(image)`` when the caller shows one.

``Stopped`` is the one "asked to stop" exception of the whole code base: a job handler lets it
propagate and the worker marks the job cancelled or released, to be resumed from its last checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any


class Stopped(Exception):
    """The caller asked the loop to stop (cancel, shutdown, lost lease); resume from the last checkpoint."""


def _no_progress(fraction: float, message: str | None = None) -> None:
    return None


def _no_log(message: str) -> None:
    return None


def _never() -> bool:
    return False


@dataclass(frozen=True)
class Hooks:
    """Callbacks a core loop reports through; every field has a do-nothing default."""

    progress: Callable[..., None] = _no_progress  # (fraction in [0, 1], message | None)
    should_stop: Callable[[], bool] = _never  # polled at every stop point
    log: Callable[[str], None] = _no_log  # one human-readable line
    checkpoint: Callable[[Any], None] | None = None  # resumable state, when the caller persists it
    preview: Callable[[Any], None] | None = None  # an H x W x 3 uint8 picture (or a thunk making one)

    def stop_point(self, where: str = "") -> None:
        """Raise :class:`Stopped` if the caller asked to stop."""
        if self.should_stop():
            raise Stopped(f"stopped {where}".strip())

    def scaled(self, start: float, end: float, prefix: str = "") -> Hooks:
        """The same hooks with progress mapped into [start, end] of the caller's range (for sub-steps)."""
        outer = self.progress
        span = end - start

        def progress(fraction: float, message: str | None = None) -> None:
            text = f"{prefix}{message}" if (prefix and message) else (message or (prefix.rstrip(": ") or None))
            outer(start + span * min(max(float(fraction), 0.0), 1.0), text)

        return replace(self, progress=progress)


NO_HOOKS = Hooks()
