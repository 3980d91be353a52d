"""/api/vocabularies routes (filled in by its issue)."""

from fastapi import APIRouter

router = APIRouter(prefix="/vocabularies", tags=["vocabularies"])
