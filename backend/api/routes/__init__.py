"""One module per resource; ``ROUTERS`` is everything mounted under /api."""

from fastapi import APIRouter

from backend.api.routes import (
    benchmarks,
    concepts,
    datasets,
    diffusions,
    experiments,
    gans,
    health,
    jobs,
    pools,
    selections,
    vocabularies,
)

ROUTERS: list[APIRouter] = [
    health.router,
    jobs.router,
    datasets.router,
    vocabularies.router,
    pools.router,
    pools.images_router,
    gans.router,
    diffusions.router,
    concepts.router,
    selections.router,
    benchmarks.router,
    experiments.router,
]
