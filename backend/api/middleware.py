"""ASGI middleware: HTTP Basic auth over UI and API alike, and the guard every request body passes.

The body guard reads each body before the application does, so a refusal is always a clean 4xx sent
before any route (or Gradio's upload parser) has seen a byte: 413 for bodies over the caps, chunked
or not, and 422 naming the field for NUL characters, which PostgreSQL cannot store in text while
SQLite can — one rule, checked here, keeps both databases answering the same.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl

from backend.api.errors import summarize
from backend.core.safeyaml import find_nul

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]

NUL_MESSAGE = "must not contain NUL characters (\\x00)"
_CHUNK = 1 << 20  # replayed upload chunks: 1 MB


async def _send_json(
    send: Any, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | tuple = ()
) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": data})


def credentials_match(header: bytes | str | None, expected: bytes | str) -> bool:
    """Whether an ``Authorization`` header carries exactly ``expected`` (``user:password``) as HTTP Basic.

    The scheme name is matched case-insensitively, the credentials exactly and in constant time.
    """
    if not header:
        return False
    raw = header.encode("latin-1", "replace") if isinstance(header, str) else header
    want = expected.encode() if isinstance(expected, str) else expected
    scheme, _, token = raw.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return False
    try:
        given = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, want)


class BasicAuthMiddleware:
    """Every HTTP and websocket request must carry ``user:password`` (``--auth``); health stays open.

    The scheme name is matched case-insensitively (``basic`` and ``BASIC`` too), as RFC 9110 says
    auth schemes are; the credentials themselves are compared exactly, in constant time.
    """

    OPEN_PATHS = ("/api/health",)

    def __init__(self, app: Any, credentials: str) -> None:
        self.app = app
        self.expected = credentials.encode()

    def _authorized(self, header: bytes) -> bool:
        return credentials_match(header, self.expected)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") in self.OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if self._authorized(dict(scope.get("headers") or []).get(b"authorization", b"")):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await _send_json(
            send, 401, {"detail": "authentication required"}, [(b"www-authenticate", b'Basic realm="Rebalance"')]
        )


# -- NUL characters --------------------------------------------------------------------------------
def _nul_in_url(scope: Scope) -> tuple[Any, ...] | None:
    if "\x00" in scope.get("path", ""):
        return ("path",)
    query = scope.get("query_string", b"").decode("latin-1")
    if "%00" in query or "\x00" in query:  # cheap pre-check: the parse below runs only when needed
        for key, value in parse_qsl(query, keep_blank_values=True):
            if "\x00" in key or "\x00" in value:
                return ("query", key.replace("\x00", "\\x00"))
    return None


def _nul_in_json(body: bytes) -> tuple[Any, ...] | None:
    # JSON can only carry NUL as the escape \u0000 (UTF-8) or, in a UTF-16/32 body, next to raw zero
    # bytes; anything else cannot decode to NUL, so most bodies are never parsed twice.
    if b"\\u0000" not in body and b"\x00" not in body:
        return None
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, broken or absurdly deep: the route's parsing answers
        return None
    found = find_nul(parsed, ("body",))
    if found is None:
        return None
    return tuple(str(p).replace("\x00", "\\x00") if isinstance(p, str) else p for p in found)


async def _reject_nul(send: Any, loc: tuple[Any, ...]) -> None:
    errors = [{"loc": list(loc), "msg": NUL_MESSAGE, "type": "value_error"}]
    await _send_json(send, 422, {"detail": errors, "message": summarize(errors)})


# -- body caps -------------------------------------------------------------------------------------
class BodyTooLarge(Exception):
    """The body passed its cap while being read (raised by this module's readers only)."""


class ClientGone(Exception):
    """The client disconnected before sending the whole body (raised by this module's readers only)."""


async def _read_to_memory(receive: Receive, limit: int) -> bytes:
    """The whole body; raises BodyTooLarge as soon as it passes ``limit`` bytes."""
    parts: list[bytes] = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone()
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLarge()
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def _spool_to_file(receive: Receive, limit: int, spool: IO[bytes]) -> None:
    """Copy the body into ``spool``; raises BodyTooLarge as soon as it passes ``limit`` bytes."""
    seen = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone()
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLarge()
        # A local write of one received chunk goes to the page cache; not worth a thread hop.
        spool.write(chunk)
        if not message.get("more_body", False):
            spool.seek(0)
            return


def _replay_once(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields ``body`` as one message, then hands over to the server's (disconnects)."""
    done = False

    async def replay() -> Message:
        nonlocal done
        if done:
            return await receive()
        done = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _replay(chunks: Callable[[], bytes], receive: Receive) -> Receive:
    """A ``receive`` that yields a spooled body in ``_CHUNK``-sized messages (a shorter one ends it),
    then hands over to the server's."""
    done = False

    async def replay() -> Message:
        nonlocal done
        if done:
            return await receive()
        # A 1 MB read from a file just written is served from the page cache; not worth a thread hop.
        chunk = chunks()
        more = len(chunk) == _CHUNK
        done = not more
        return {"type": "http.request", "body": chunk, "more_body": more}

    return replay


class BodyLimitMiddleware:
    """413 for bodies over the cap (``max_body`` for JSON and forms, ``max_upload`` for multipart),
    whether announced by Content-Length or sent chunked; 422 for NUL characters under ``/api``.

    Bodies without a declared length are read fully before the application runs: JSON and forms in
    memory (they are capped at ``max_body``), multipart uploads into an anonymous temporary file under
    ``<workspace>/tmp`` (``spool_dir``), so an oversized upload is refused before Gradio or a route has
    written any part of it anywhere.
    """

    def __init__(self, app: Any, max_body: int, max_upload: int, spool_dir: Path | None = None) -> None:
        self.app = app
        self.max_body = max_body
        self.max_upload = max_upload
        self.spool_dir = spool_dir

    def _spool_dir(self, scope: Scope) -> Path:
        if self.spool_dir is not None:
            return self.spool_dir
        # Starlette puts the application in the scope before its middleware runs; its settings name
        # the workspace, which keeps upload bytes out of the system temp directory.
        settings = getattr(getattr(scope.get("app"), "state", None), "settings", None)
        if settings is not None:
            return settings.workspace_dir / "tmp"
        return Path(tempfile.gettempdir())

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = scope.get("path", "").startswith("/api")
        if api and (loc := _nul_in_url(scope)) is not None:
            await _reject_nul(send, loc)
            return
        headers = dict(scope.get("headers") or [])
        multipart = headers.get(b"content-type", b"").lower().startswith(b"multipart/")
        limit = self.max_upload if multipart else self.max_body
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(send, limit)
            return
        try:
            if multipart and declared is not None:
                # The server stops the body at the declared length, already checked against the cap.
                await self.app(scope, receive, send)
            elif multipart:
                await self._chunked_upload(scope, receive, send, limit)
            else:
                body = await _read_to_memory(receive, limit)
                if api and (loc := _nul_in_json(body)) is not None:
                    await _reject_nul(send, loc)
                    return
                await self.app(scope, _replay_once(body, receive), send)
        except BodyTooLarge:
            await self._reject(send, limit)
        except ClientGone:
            return  # nobody left to answer

    async def _chunked_upload(self, scope: Scope, receive: Receive, send: Any, limit: int) -> None:
        spool_dir = self._spool_dir(scope)
        spool_dir.mkdir(parents=True, exist_ok=True)
        # TemporaryFile has no name on disk (unlinked at once), so even a killed server leaves nothing.
        with tempfile.TemporaryFile(dir=spool_dir) as spool:
            await _spool_to_file(receive, limit, spool)
            await self.app(scope, _replay(lambda: spool.read(_CHUNK), receive), send)

    @staticmethod
    async def _reject(send: Any, limit: int) -> None:
        await _send_json(send, 413, {"detail": f"request body too large (limit {limit / 1e6:g} MB)"})
