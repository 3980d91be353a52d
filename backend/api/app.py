"""The FastAPI application: the REST API under /api (docs at /api/docs). The studio is mounted by ``backend.server``."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

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
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.settings = settings
    app.state.db = db
    app.state.store = FileStore(settings.workspace_dir)
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
