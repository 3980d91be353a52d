"""Errors of the domain: each one's message is written for the user and shown as-is.

The API maps them to status codes (``NotFound`` 404, ``NotReady`` 409, ``Invalid`` 422 naming the
field); a job that raises one fails with the message and no traceback.
"""

from __future__ import annotations


class DomainError(Exception):
    """A request the domain cannot honour; the message says why and what to do."""


class NotFound(DomainError):
    """A referenced row does not exist."""

    def __init__(self, what: str, ident: object) -> None:
        super().__init__(f"{what} {ident} not found")
        self.what = what
        self.ident = ident


class NotReady(DomainError):
    """The row exists but cannot be used (yet): unfinished, empty, or its files are missing."""


class Invalid(DomainError):
    """A value the caller gave is wrong; ``field`` names it (dotted path, e.g. ``source.imbalance``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
