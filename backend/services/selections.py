"""Selections: the picks of an active-learning run, their review, and what a variant takes from them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.data.export import iter_zip
from backend.data.images import decode_image
from backend.data.variants import with_synthetic
from backend.db.models import Dataset, Pool, PoolImage, Selection, SelectionPick
from backend.db.models import Vocabulary as VocabularyRow
from backend.generation.prompts import Vocabulary, default_vocabulary, image_seed
from backend.selection.review import ReviewOutcome, apply_review
from backend.selection.slots import confused_classes, next_round_vocabulary, reweight, slot_analytics
from backend.services.datasets import build_variant, open_row
from backend.services.errors import Invalid, NotFound, NotReady
from backend.services.rows import job_statuses
from backend.store import FileStore


def get_selection(session: Session, selection_id: int) -> Selection:
    sel = session.get(Selection, selection_id)
    if sel is None:
        raise NotFound("selection", selection_id)
    return sel


def picks(session: Session, selection_id: int) -> list[SelectionPick]:
    """The picks of a selection by rank."""
    return list(
        session.scalars(
            select(SelectionPick).where(SelectionPick.selection_id == selection_id).order_by(SelectionPick.rank)
        )
    )


def selected_image_ids(session: Session, selection_id: int) -> list[int]:
    """Image ids a dataset variant uses from a selection, by rank: picks a reviewer accepted, or left
    pending without a near-copy flag (flagged pending picks need an explicit accept)."""
    rows = session.execute(
        select(SelectionPick.image_id, SelectionPick.review, SelectionPick.near_copy)
        .where(SelectionPick.selection_id == selection_id)
        .order_by(SelectionPick.rank)
    ).all()
    return [p.image_id for p in rows if p.review == "accepted" or (p.review == "pending" and not p.near_copy)]


def selected_images(session: Session, selection_id: int) -> list[PoolImage]:
    """The :func:`selected_image_ids` rows, in rank order."""
    get_selection(session, selection_id)
    keep = selected_image_ids(session, selection_id)
    rows = {r.id: r for r in session.scalars(select(PoolImage).where(PoolImage.id.in_(keep)))}
    return [rows[i] for i in keep if i in rows]


def store_picks(session: Session, selection_id: int, new_picks: list[dict[str, Any]]) -> None:
    """Insert picks not yet stored (idempotent by image id) and refresh the final fields of stored ones.

    Rows of a round that crashed before its checkpoint and then picked differently on the re-run (CUDA
    is not bitwise repeatable) are deleted, so the table always equals the checkpointed state.
    """
    wanted = {p["image_id"] for p in new_picks}
    stored = {}
    for row in session.scalars(select(SelectionPick).where(SelectionPick.selection_id == selection_id)):
        if row.image_id in wanted:
            stored[row.image_id] = row
        else:
            session.delete(row)
    session.flush()
    for p in new_picks:
        row = stored.get(p["image_id"])
        if row is None:
            row = SelectionPick(
                selection_id=selection_id,
                image_id=p["image_id"],
                rank=p["rank"],
                round=p["round"],
                score=p["score"],
                minority_prob=p["minority_prob"],
                review="pending",
                meta={"pool_index": p["index"]},
            )
            session.add(row)
        if "near_copy" in p:
            row.near_copy = bool(p["near_copy"])
            row.nn_distance = p["nn_distance"]


def review(
    session: Session, selection_id: int, accept: list[int], reject: list[int], replace_rejected: bool
) -> ReviewOutcome:
    """Accept/reject picks by image id; with ``replace_rejected`` each rejected pick is replaced by the
    best unused candidate of the ranked reserve (near-copies skipped). The caller commits."""
    sel = get_selection(session, selection_id)
    rows = picks(session, selection_id)
    current = [
        {"image_id": r.image_id, "rank": r.rank, "round": r.round, "review": r.review,
         "replaces": (r.meta or {}).get("replaces")}
        for r in rows
    ]  # fmt: skip
    known = {r.image_id for r in rows}
    for name, ids in (("accept", accept), ("reject", reject)):
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise Invalid(name, f"image ids {unknown} are not picks of selection {selection_id}")
    both = sorted(set(accept) & set(reject))
    if both:
        raise Invalid("reject", f"image ids {both} are both accepted and rejected")
    outcome = apply_review(current, list((sel.info or {}).get("reserve", [])), accept, reject, replace_rejected)
    by_id = {r.image_id: r for r in rows}
    for p in outcome.picks:
        row = by_id.get(p["image_id"])
        if row is not None:
            row.review = p["review"]
            continue
        session.add(
            SelectionPick(
                selection_id=selection_id,
                image_id=p["image_id"],
                rank=p["rank"],
                round=p["round"],
                score=p["score"],
                minority_prob=p.get("minority_prob"),
                review=p["review"],
                near_copy=bool(p.get("near_copy", False)),
                nn_distance=p.get("nn_distance"),
                meta={"pool_index": p.get("index"), "replaces": p["replaces"]},
            )
        )
    sel.info = {**(sel.info or {}), "reserve": outcome.reserve}
    return outcome


def export_selection(
    session: Session, store: FileStore, selection_id: int, include_test: bool
) -> tuple[str, Iterator[bytes]]:
    """(file name, zip stream) of the rebalanced dataset: the imbalanced training set plus the selection's
    accepted picks (and pending ones not flagged as near-copies), with ``metadata.jsonl`` provenance.
    Everything that can fail is checked first; the picks are decoded as the stream goes."""
    sel = get_selection(session, selection_id)
    rows = selected_images(session, selection_id)
    if not rows:
        raise NotReady(f"selection {selection_id} has no accepted or pending picks")
    dataset = session.get(Dataset, sel.dataset_id)
    if dataset is None:
        raise NotFound("dataset", sel.dataset_id)
    ds = open_row(store, dataset)
    target = (sel.info or {}).get("target_class")
    if target not in ds.classes:
        raise NotReady(f"selection {selection_id} has not finished")
    base = build_variant(ds, "imbalanced", (sel.params or {}).get("imbalance"))
    files = [(r.file, {"image_id": r.id, "pool_id": r.pool_id, "prompt": r.prompt, "seed": r.seed,
                       "source_path": r.source_path}) for r in rows]  # fmt: skip

    def stream() -> Iterator[bytes]:
        images = np.stack([decode_image(store.path(f), size=ds.image_size) for f, _ in files])
        variant = with_synthetic(
            base, images, [p for _, p in files], ds.classes.index(target), name=f"selection{selection_id}"
        )
        test = (ds.test_x, ds.test_y) if include_test else None
        yield from iter_zip(variant, ds.classes, test=test)

    return f"{dataset.name}-selection{selection_id}.zip", stream()


def selection_slots(session: Session, selection_id: int, smoothing: float = 1.0) -> dict[str, Any]:
    """Prompt-slot analytics of a selection (``selection/slots.py``) and the next round's weights.

    Candidates are every image of the selection's pools; picks carry their score and review state.
    Returns ``{"slots": {slot: [row...]}, "weights": {slot: {value: weight}}, "candidates_with_slots"}``;
    a pool without slot metadata (GAN, imported) gives empty ``slots``.
    """
    sel = get_selection(session, selection_id)
    pool_ids = list((sel.params or {}).get("pool_ids") or [])
    metas = dict(session.execute(select(PoolImage.id, PoolImage.meta).where(PoolImage.pool_id.in_(pool_ids))).all())
    slots_of = {i: (m or {}).get("slots") or {} for i, m in metas.items()}
    rows = picks(session, selection_id)
    analytics = slot_analytics(slots_of.values(), ((slots_of.get(r.image_id, {}), r.score, r.review) for r in rows))
    return {
        "slots": analytics,
        "weights": reweight(analytics, smoothing),
        "candidates_with_slots": sum(1 for v in slots_of.values() if v),
    }


def _pool_vocabulary(session: Session, pool: Pool) -> Vocabulary:
    """The vocabulary an SD pool was generated from, resolved as ``generate_sd`` resolved it."""
    params = pool.params or {}
    given = params.get("vocabulary")
    if isinstance(given, dict):
        return Vocabulary.from_dict(given)
    if isinstance(given, int):
        row = session.get(VocabularyRow, given)
        if row is None:
            raise NotReady(f"vocabulary {given} of pool {pool.id} no longer exists")
        return Vocabulary(row.template, row.slots, row.negative_prompt or "")
    meta = session.scalar(select(PoolImage.meta).where(PoolImage.pool_id == pool.id).limit(1)) or {}
    minority = ((params.get("imbalance") or {}).get("minority_names") or [None])[0]
    return default_vocabulary(meta.get("concept_token") or minority or "cat")


def _saved(session: Session, vocab: Vocabulary, name: str) -> VocabularyRow:
    """A saved vocabulary row holding ``vocab`` (weights in its slots): the existing row with the same
    content when there is one (a repeated request reuses it), else a new one named ``name`` (#2, #3...)."""
    slots = vocab.stored_slots()
    taken = set()
    for row in session.scalars(select(VocabularyRow).where(VocabularyRow.name.like(f"{name}%"))):
        taken.add(row.name)
        if (
            row.template == vocab.template
            and row.slots == slots
            and (row.negative_prompt or "") == vocab.negative_prompt
        ):
            return row
    unique, n = name, 1
    while unique in taken:
        n += 1
        unique = f"{name} #{n}"
    row = VocabularyRow(name=unique, template=vocab.template, slots=slots, negative_prompt=vocab.negative_prompt)
    session.add(row)
    session.flush()
    return row


def next_round(
    session: Session,
    selection_id: int,
    *,
    smoothing: float = 1.0,
    negative_classes: int = 0,
    seed: int | None = None,
    count: int | None = None,
) -> dict[str, Any]:
    """Params of the next ``generate_sd`` round of a finished selection over SD pools (the closed loop).

    The first pool's job params are copied; its vocabulary gets per-value weights from the selection's
    slot analytics (``slots.next_round_vocabulary``; analytics over all its pools) and, with
    ``negative_classes`` > 0, that many of the classes the pool drifted to (``slots.confused_classes``)
    as negative-prompt terms. The weighted vocabulary is saved as a vocabulary row (the job params name
    it by id, the form ``generate_sd`` reads weights from), ``seed`` defaults to a hash of (the pool's
    seed, selection id) so a repeated request asks for the same job, and ``count`` to the pool's.
    Returns ``{"params", "vocabulary_id", "vocabulary", "negative_terms"}``; the caller commits and submits.
    NotReady (409) unless the selection's job succeeded; Invalid (422) unless every pool is an SD pool.
    """
    sel = get_selection(session, selection_id)
    status = job_statuses(session, [sel.job_id]).get(sel.job_id, "unknown") if sel.job_id else "unknown"
    if status != "succeeded" or not (sel.info or {}).get("target_class"):
        raise NotReady(f"selection {selection_id} has not finished (its job is {status})")
    pool_ids = list((sel.params or {}).get("pool_ids") or [])
    pools = {p.id: p for p in session.scalars(select(Pool).where(Pool.id.in_(pool_ids)))}
    not_sd = [i for i in pool_ids if i not in pools or pools[i].kind != "sd"]
    if not pool_ids or not_sd:
        kinds = {i: pools[i].kind if i in pools else "missing" for i in not_sd}
        raise Invalid("pool_ids", f"selection {selection_id}: the next round needs SD pools; pools {kinds} are not")
    base = pools[pool_ids[0]]
    vocab = _pool_vocabulary(session, base)
    analytics = selection_slots(session, selection_id, smoothing)["slots"]
    terms = confused_classes((sel.info or {}).get("quality") or {}, negative_classes) if negative_classes else []
    try:
        weighted = next_round_vocabulary(vocab, analytics, smoothing, terms)
    except ValueError as exc:
        raise Invalid("smoothing", str(exc)) from exc
    row = _saved(session, weighted, f"next round of selection {selection_id}")
    params = {k: v for k, v in (base.params or {}).items()}
    old_seed = int(params.get("seed") or 0)
    params |= {
        "vocabulary": row.id,
        "seed": image_seed(old_seed, selection_id) if seed is None else int(seed),
        "name": f"SD next round of selection {selection_id}",
    }
    if count is not None:
        params["count"] = count
    return {"params": params, "vocabulary_id": row.id, "vocabulary": weighted.to_dict(), "negative_terms": terms}
