"""/api/benchmarks routes (filled in by its issue)."""

from fastapi import APIRouter

router = APIRouter(prefix="/benchmarks", tags=["benchmarks"])
