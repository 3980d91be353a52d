"""/api/pools and /api/images routes (filled in by its issue)."""

from fastapi import APIRouter

router = APIRouter(prefix="/pools", tags=["pools"])
images_router = APIRouter(prefix="/images", tags=["images"])
