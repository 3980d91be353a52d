"""Job kinds: a handler plus a pydantic params model, registered by name."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from backend.jobs.context import JobContext

Handler = Callable[["JobContext", Any], dict[str, Any] | None]


@dataclass(frozen=True)
class JobKind:
    name: str
    params_model: type[BaseModel]
    handler: Handler
    description: str


_REGISTRY: dict[str, JobKind] = {}


def job_kind(name: str, params_model: type[BaseModel]) -> Callable[[Handler], Handler]:
    """Register ``handler`` as job kind ``name`` whose params are validated by ``params_model``."""

    def decorate(handler: Handler) -> Handler:
        if name in _REGISTRY and _REGISTRY[name].handler is not handler:
            raise ValueError(f"job kind {name!r} is registered twice")
        doc = (handler.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = JobKind(name, params_model, handler, doc[0] if doc else "")
        return handler

    return decorate


def get_kind(name: str) -> JobKind | None:
    return _REGISTRY.get(name)


def all_kinds() -> dict[str, JobKind]:
    return dict(_REGISTRY)


def load_kinds(plugins: list[str] | tuple[str, ...] = ()) -> None:
    """Import the built-in job kinds and any plugin modules that register more."""
    importlib.import_module("backend.jobs.kinds")
    for module in plugins:
        importlib.import_module(module)
