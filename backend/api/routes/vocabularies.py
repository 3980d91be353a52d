"""/api/vocabularies: saved prompt vocabularies (CRUD), the built-in defaults, and previews."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, HTTPException, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from backend.api.deps import ReadSessionDep, SessionDep, not_found
from backend.core.types import DbId, DbOffset
from backend.db.models import Vocabulary as VocabularyRow
from backend.db.models import utcnow
from backend.generation.prompts import Vocabulary, default_vocabulary

router = APIRouter(prefix="/vocabularies", tags=["vocabularies"])


class VocabularyBody(BaseModel):
    """Template, slots and negative prompt; validated as a whole (422 names the slot at fault)."""

    model_config = ConfigDict(extra="forbid")
    template: str = Field(..., max_length=2000, examples=["{breed} cat {preposition} the {furniture}"])
    slots: dict[str, list[str] | dict[str, float]] = Field(
        ...,
        examples=[{"breed": ["Bengal"], "preposition": ["on"]}],
        description="values per slot: a list (drawn uniformly) or {value: weight} (drawn in proportion)",
    )
    negative_prompt: str = Field("", max_length=2000)
    weights: dict[str, dict[str, float]] | None = Field(
        None, description="per-value sampling weights {slot: {value: w}} for list slots (every value named)"
    )

    @model_validator(mode="after")
    def _valid(self) -> VocabularyBody:
        self.core()  # ValueError names the slot at fault
        return self

    def core(self) -> Vocabulary:
        return Vocabulary(self.template, self.slots, self.negative_prompt, self.weights)


class VocabularyIn(VocabularyBody):
    name: str = Field(..., min_length=1, max_length=255)


class VocabularyOut(BaseModel):
    id: int
    name: str
    template: str
    slots: dict[str, list[str]]
    negative_prompt: str
    weights: dict[str, dict[str, float]] | None = None  # per-value sampling weights (normalised per slot)
    distinct_count: int
    created_at: datetime
    updated_at: datetime


class PreviewIn(BaseModel):
    """Either a saved `vocabulary_id` or an inline vocabulary."""

    model_config = ConfigDict(extra="forbid")
    vocabulary_id: DbId | None = None
    vocabulary: VocabularyBody | None = None
    n: int = Field(10, ge=0, le=1000, description="number of sample prompts")
    seed: int = Field(0, ge=0, description="the job seed whose first prompts are shown")

    @model_validator(mode="after")
    def _one_source(self) -> PreviewIn:
        if (self.vocabulary_id is None) == (self.vocabulary is None):
            raise ValueError("give exactly one of vocabulary_id or vocabulary")
        return self


class PreviewOut(BaseModel):
    distinct_count: int
    prompts: list[str]
    negative_prompt: str


def _out(row: VocabularyRow) -> VocabularyOut:
    vocab = Vocabulary(row.template, row.slots, row.negative_prompt or "")
    return VocabularyOut(
        id=row.id,
        name=row.name,
        template=vocab.template,
        slots={k: list(v) for k, v in vocab.slots.items()},
        negative_prompt=vocab.negative_prompt,
        weights=vocab.weights or None,
        distinct_count=vocab.distinct_count(),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _store(row: VocabularyRow, body: VocabularyIn) -> None:
    vocab = body.core()  # store the normalised form: duplicates dropped, whitespace tidied
    row.name = body.name.strip()
    row.template = vocab.template
    row.slots = {k: list(v) for k, v in vocab.slots.items()}
    row.negative_prompt = vocab.negative_prompt
    row.updated_at = utcnow()


def _commit(session: SessionDep, name: str) -> None:
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, f"a vocabulary named {name!r} already exists") from None


@router.get("", response_model=list[VocabularyOut])
def list_vocabularies(
    session: ReadSessionDep, offset: DbOffset = 0, limit: int = Query(100, ge=1, le=1000)
) -> list[VocabularyOut]:
    rows = session.scalars(select(VocabularyRow).order_by(VocabularyRow.id).offset(offset).limit(limit))
    return [_out(row) for row in rows]


@router.post("", response_model=VocabularyOut, status_code=status.HTTP_201_CREATED)
def create_vocabulary(body: VocabularyIn, session: SessionDep) -> VocabularyOut:
    row = VocabularyRow(created_at=utcnow())
    _store(row, body)
    session.add(row)
    _commit(session, body.name)
    return _out(row)


@router.get("/defaults/{class_name}", response_model=VocabularyBody)
def default_for_class(class_name: str) -> VocabularyBody:
    """The built-in vocabulary for a class (the reference study's for `cat`)."""
    vocab = default_vocabulary(class_name)
    return VocabularyBody(**vocab.to_dict())


@router.post("/preview", response_model=PreviewOut)
def preview(body: PreviewIn, session: ReadSessionDep) -> PreviewOut:
    """The number of distinct prompts and the first `n` prompts a job with `seed` would use."""
    if body.vocabulary is not None:
        vocab = body.vocabulary.core()
    else:
        row = session.get(VocabularyRow, body.vocabulary_id)
        if row is None:
            raise not_found("vocabulary", body.vocabulary_id)
        vocab = Vocabulary(row.template, row.slots, row.negative_prompt or "")
    return PreviewOut(
        distinct_count=vocab.distinct_count(),
        prompts=vocab.preview(body.n, seed=body.seed),
        negative_prompt=vocab.negative_prompt,
    )


@router.get("/{vocabulary_id}", response_model=VocabularyOut)
def get_vocabulary(vocabulary_id: DbId, session: ReadSessionDep) -> VocabularyOut:
    row = session.get(VocabularyRow, vocabulary_id)
    if row is None:
        raise not_found("vocabulary", vocabulary_id)
    return _out(row)


@router.put("/{vocabulary_id}", response_model=VocabularyOut)
def update_vocabulary(vocabulary_id: DbId, body: VocabularyIn, session: SessionDep) -> VocabularyOut:
    row = session.get(VocabularyRow, vocabulary_id)
    if row is None:
        raise not_found("vocabulary", vocabulary_id)
    _store(row, body)
    _commit(session, body.name)
    return _out(row)


@router.delete("/{vocabulary_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_vocabulary(vocabulary_id: DbId, session: SessionDep) -> Response:
    row = session.get(VocabularyRow, vocabulary_id)
    if row is None:
        raise not_found("vocabulary", vocabulary_id)
    session.delete(row)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
