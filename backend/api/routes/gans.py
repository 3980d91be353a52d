"""/api/gans routes (filled in by its issue)."""

from fastapi import APIRouter

router = APIRouter(prefix="/gans", tags=["gans"])
