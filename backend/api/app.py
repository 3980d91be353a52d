"""The FastAPI application: the REST API under /api (docs at /api/docs). The studio is mounted by ``backend.server``."""

from __future__ import annotations

import functools
import tempfile
from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from backend import __version__
from backend.api.errors import domain_error_handler, validation_handler
from backend.api.middleware import BasicAuthMiddleware, BodyLimitMiddleware
from backend.api.routes import ROUTERS
from backend.config import Settings
from backend.db.session import Database
from backend.jobs.registry import load_kinds
from backend.services.errors import DomainError
from backend.store import FileStore


def create_api(settings: Settings, db: Database) -> FastAPI:
    """The REST API alone; ``backend.server.create_app`` adds the studio."""
    load_kinds(settings.plugins)
    app = FastAPI(
        title="Rebalance API",
        version=__version__,
        description="Repair class imbalance with synthetic images: datasets, generation, selection, benchmarks.",
        docs_url=None,  # served by ``_offline_docs`` from local assets instead of a CDN
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    _offline_docs(app)
    app.state.settings = settings
    app.state.db = db
    app.state.store = FileStore(settings.workspace_dir)
    _spool_uploads_in(settings.tmp_dir)
    app.add_exception_handler(RequestValidationError, validation_handler)
    app.add_exception_handler(DomainError, domain_error_handler)
    for router in ROUTERS:
        app.include_router(router, prefix="/api")
    app.add_middleware(
        BodyLimitMiddleware,
        max_body=int(settings.max_body_mb * 1e6),
        max_upload=int(settings.max_upload_mb * 1e6),
    )
    if settings.auth:
        app.add_middleware(BasicAuthMiddleware, credentials=settings.auth)
    return app


def _spool_uploads_in(tmp_dir: Path) -> None:
    """Starlette writes each multipart file part over 1 MB to a ``SpooledTemporaryFile`` in the system temp
    directory; point it at ``<workspace>/tmp`` so upload bytes never land outside the workspace (the body
    guard's own spool is there already). Process-wide, like the server: one workspace per process."""
    import starlette.formparsers

    tmp_dir.mkdir(parents=True, exist_ok=True)
    starlette.formparsers.SpooledTemporaryFile = functools.partial(  # type: ignore[misc]
        tempfile.SpooledTemporaryFile, dir=str(tmp_dir)
    )


def _offline_docs(app: FastAPI) -> None:
    """Swagger UI at /api/docs and ReDoc at /api/redoc from assets shipped in a PyPI package
    (fastapi-offline), so the docs render on a machine without internet access."""
    assets = "/api/docs-assets"
    app.mount(assets, StaticFiles(directory=str(resources.files("fastapi_offline") / "static")), name="docs-assets")

    @app.get("/api/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/api/openapi.json",
            title=f"{app.title} - docs",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon.png",
        )

    @app.get("/api/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/api/openapi.json",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{assets}/redoc.standalone.js",
            redoc_favicon_url=f"{assets}/favicon.png",
            with_google_fonts=False,
        )
