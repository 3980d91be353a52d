"""A small synchronous client for the server's own REST API: the studio's only way to the backend."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import httpx

# The studio polls its own API every few seconds; one INFO line per request would drown the server log.
logging.getLogger("httpx").setLevel(logging.WARNING)


class ApiError(Exception):
    """A non-2xx answer, carrying the API's own one-line explanation (422 ``message`` or ``detail``) and,
    for a 422, the params it names (``budget``, ``variants.1.count``) so a form can mark those fields."""

    def __init__(self, status: int, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = fields or []


def _fields(response: httpx.Response) -> list[str]:
    """The dotted params a 422 names: ``loc`` without its ``body`` / ``params`` prefix."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return []
    if not isinstance(detail, list):
        return []
    out = []
    for d in detail:
        if not isinstance(d, dict):
            continue
        loc = [str(p) for p in d.get("loc") or []]
        while loc and loc[0] in ("body", "params"):
            loc.pop(0)
        if loc and ".".join(loc) not in out:
            out.append(".".join(loc))
    return out


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or f"HTTP {response.status_code}"
    if isinstance(body, dict):
        if body.get("message"):
            return str(body["message"])
        detail = body.get("detail")
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list) and detail:
            return "; ".join(
                f"{'.'.join(str(p) for p in d.get('loc', []) if p != 'body')}: {d.get('msg', '')}" for d in detail
            )
    return f"HTTP {response.status_code}"


def new_key() -> str:
    """A fresh idempotency key: one per rendered/changed form, so a double click makes one job."""
    return uuid.uuid4().hex


class ApiClient:
    """Talks to ``<base_url>`` (e.g. ``http://127.0.0.1:7860/api``) with optional HTTP Basic auth."""

    def __init__(self, base_url: str, auth: str | None = None, timeout: float = 30.0, http: Any = None) -> None:
        self.base_url = base_url.rstrip("/")
        user, _, password = (auth or "").partition(":")
        self._auth = (user, password) if auth else None
        # ``http``: anything with httpx.Client's ``request()``; tests pass a FastAPI TestClient (in-process app).
        self._http = http or httpx.Client(timeout=timeout)
        self._kinds: list[dict[str, Any]] | None = None

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, self.base_url + path, auth=self._auth, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, f"cannot reach the API at {self.base_url}: {exc}") from exc
        if response.status_code >= 400:
            fields = _fields(response) if response.status_code == 422 else []
            raise ApiError(response.status_code, _message(response), fields)
        if not response.content:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.content

    def job_kinds(self) -> list[dict[str, Any]]:
        """``GET /jobs/kinds``, asked once: the kinds and their schemas are fixed while a server runs
        (plugins load at start), so every form of every page load shares one answer."""
        if self._kinds is None:
            self._kinds = self.get("/jobs/kinds")
        return self._kinds

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, json: Any = None) -> Any:
        return self.request("POST", path, json=json)

    def put(self, path: str, json: Any = None) -> Any:
        return self.request("PUT", path, json=json)

    def upload(self, path: str, file_path: str, field: str = "file", **data: Any) -> Any:
        """Multipart upload of one file (zips for datasets, GAN sources and pools)."""
        with open(file_path, "rb") as fh:
            files = {field: (file_path.rsplit("/", 1)[-1], fh, "application/octet-stream")}
            return self.request("POST", path, files=files, data={k: str(v) for k, v in data.items()})

    def submit(self, kind: str, params: dict[str, Any], idempotency_key: str | None) -> dict[str, Any]:
        """POST /jobs; a repeated key returns the job the first call created."""
        body: dict[str, Any] = {"kind": kind, "params": params}
        if idempotency_key:
            body["idempotency_key"] = idempotency_key
        return self.post("/jobs", body)

    def items(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """A list endpoint's rows whether it answers a bare list or a page ``{"items": [...]}``;
        an endpoint that does not exist on this server yet reads as empty."""
        try:
            body = self.get(path, **params)
        except ApiError as exc:
            if exc.status in (404, 405):
                return []
            raise
        if isinstance(body, dict):
            return list(body.get("items", []))
        return list(body or [])

    def close(self) -> None:
        self._http.close()
