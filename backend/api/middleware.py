"""ASGI middleware: HTTP Basic auth over UI and API alike, and request body size caps."""

from __future__ import annotations

import base64
import hmac
import json
from typing import Any

Scope = dict[str, Any]


async def _send_json(send: Any, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": data})


class BasicAuthMiddleware:
    """Every HTTP and websocket request must carry ``user:password`` (``--auth``); health stays open."""

    OPEN_PATHS = ("/api/health",)

    def __init__(self, app: Any, credentials: str) -> None:
        self.app = app
        self.expected = b"Basic " + base64.b64encode(credentials.encode())

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") in self.OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await _send_json(
            send, 401, {"detail": "authentication required"}, [(b"www-authenticate", b'Basic realm="Rebalance"')]
        )


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """413 for bodies over the cap: ``max_body`` for JSON and forms, ``max_upload`` for multipart."""

    def __init__(self, app: Any, max_body: int, max_upload: int) -> None:
        self.app = app
        self.max_body = max_body
        self.max_upload = max_upload

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        multipart = headers.get(b"content-type", b"").startswith(b"multipart/")
        limit = self.max_upload if multipart else self.max_body
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(send, limit)
            return
        seen = 0
        started = False

        async def counting_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(send, limit)

    @staticmethod
    async def _reject(send: Any, limit: int) -> None:
        await _send_json(send, 413, {"detail": f"request body too large (limit {limit / 1e6:g} MB)"})
