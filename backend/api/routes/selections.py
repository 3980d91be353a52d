"""/api/selections routes (filled in by its issue)."""

from fastapi import APIRouter

router = APIRouter(prefix="/selections", tags=["selections"])
