"""/api/datasets routes (filled in by its issue)."""

from fastapi import APIRouter

router = APIRouter(prefix="/datasets", tags=["datasets"])
