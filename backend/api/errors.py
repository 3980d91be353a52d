"""Uniform 422 answers: FastAPI's ``detail`` list plus a one-line ``message`` naming the field."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


def _loc(loc: Sequence[Any]) -> str:
    return ".".join(str(p) for p in loc if p != "body") or "body"


def summarize(errors: Sequence[dict[str, Any]]) -> str:
    return "; ".join(f"{_loc(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors)


def clean_errors(errors: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON-safe error dicts (pydantic may put exception objects in ``ctx``)."""
    out = []
    for e in errors:
        # pydantic prefixes a validator's own message with "Value error, ": the user reads the message, not that
        msg = str(e.get("msg", "")).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        item = {"loc": list(e.get("loc", ())), "msg": msg, "type": str(e.get("type", ""))}
        out.append(item)
    return out


def field_error(loc: Sequence[Any], msg: str, type_: str = "value_error") -> RequestValidationError:
    """A 422 for one field, e.g. ``field_error(("body", "kind"), "unknown job kind 'x'")``."""
    return RequestValidationError([{"loc": tuple(loc), "msg": msg, "type": type_}])


async def validation_handler(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = clean_errors(exc.errors())
    return JSONResponse(status_code=422, content={"detail": errors, "message": summarize(errors)})


async def domain_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    """Domain errors raised by ``backend.services``: 404 not found, 409 not ready, 422 naming the field."""
    from backend.services.errors import Invalid, NotFound

    if isinstance(exc, Invalid):
        errors = [{"loc": ["body", *exc.field.split(".")], "msg": exc.message, "type": "value_error"}]
        return JSONResponse(status_code=422, content={"detail": errors, "message": summarize(errors)})
    return JSONResponse(status_code=404 if isinstance(exc, NotFound) else 409, content={"detail": str(exc)})
