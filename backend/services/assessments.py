"""Pool assessments: the classifier two-sample test (``selection/twosample.py``) of a pool against real images,
stored with the pool (``Pool.info["assessment"]``), for the ``assess_pool`` job and the ``select`` job."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.data.cache import DecodedDataset
from backend.data.images import ImageDecodeError, decode_image
from backend.db.models import Pool
from backend.selection.twosample import MAX_PER_SIDE, MIN_PER_SIDE, assessment, domain_auc
from backend.services.errors import Invalid, NotReady
from backend.services.pools import first_images
from backend.store import FileStore

MAX_OTHER_CLASSES = 5  # sibling classes measured when the pool's own class has too few real images


def pool_label(pool: Pool, label: str | None, minority: list[str], field: str = "label") -> str:
    """The class a pool's images show: ``label`` if given, the class a diffusion pool was sampled as, else the
    imbalance's one minority class."""
    if label:
        return label
    recorded = sampled_class(pool)
    if recorded:
        return str(recorded)
    if len(minority) == 1:
        return minority[0]
    raise Invalid(field, f"pool {pool.id} records no class and the imbalance names no single minority; say which")


def sampled_class(pool: Pool) -> str | None:
    """The class a generator was asked for when it made the pool (``generate_diffusion`` records it as
    "class"), or None."""
    value = (pool.params or {}).get("class")
    return value if isinstance(value, str) else None


def _fake(session: Session, store: FileStore, pool: Pool, size: tuple[int, int]) -> np.ndarray:
    rows = first_images(session, pool.id, min(pool.count, MAX_PER_SIDE))
    images = []
    for row in rows:
        try:
            images.append(decode_image(store.path(row.file), size=size))
        except (ImageDecodeError, OSError) as exc:
            raise NotReady(f"pool image {row.id} cannot be read ({exc})") from exc
    return np.stack(images) if images else np.zeros((0, *size, 3), np.uint8)


def siblings(session: Session, pool: Pool, label: str) -> list[Pool]:
    """Pools of the same trained generator sampled as other classes (the every-class recipe makes them)."""
    gen = (pool.params or {}).get("diffusion_id")
    if pool.kind != "diffusion" or gen is None:
        return []
    rows = session.scalars(select(Pool).where(Pool.kind == "diffusion", Pool.id != pool.id).order_by(Pool.id)).all()
    out, seen = [], set()
    for row in rows:
        cls = sampled_class(row)
        if (row.params or {}).get("diffusion_id") == gen and cls and cls != label and cls not in seen and row.count:
            out.append(row)
            seen.add(cls)
    return out


def assess(
    session: Session,
    store: FileStore,
    ds: DecodedDataset,
    dataset_id: int,
    kept_idx: np.ndarray,
    pool_id: int,
    label: str,
    seed: int = 0,
    progress: Any = None,
) -> dict[str, Any]:
    """Run the two-sample test of pool ``pool_id`` (images of class ``label``) against the real training images
    ``kept_idx`` of that class, or through its generator's other classes; store and return the assessment."""
    pool = session.get(Pool, pool_id)
    c = ds.classes.index(label)
    labels = np.asarray(ds.train_y)[kept_idx]

    def real_of(cls: int) -> np.ndarray:
        return np.asarray(ds.train_x[np.sort(kept_idx[labels == cls])])

    real = real_of(c)
    fake = _fake(session, store, pool, ds.image_size)
    if len(real) >= MIN_PER_SIDE:
        result = assessment(domain_auc(real, fake, seed), "same_class", len(real), len(fake), label)
    else:
        per_class, n_real, n_fake = {}, 0, 0
        for other in siblings(session, pool, label):
            cls = sampled_class(other)
            if cls not in ds.classes or len(per_class) >= MAX_OTHER_CLASSES:
                continue
            other_real = real_of(ds.classes.index(cls))
            other_fake = _fake(session, store, other, ds.image_size)
            if len(other_real) < MIN_PER_SIDE or len(other_fake) < MIN_PER_SIDE:
                continue
            if progress is not None:
                progress(len(per_class) / MAX_OTHER_CLASSES, f"two-sample test on class {cls} (pool {other.id})")
            per_class[cls] = domain_auc(other_real, other_fake, seed)
            n_real, n_fake = n_real + len(other_real), n_fake + len(other_fake)
        if per_class:
            auc = float(np.mean(list(per_class.values())))
            result = assessment(auc, "generator_other_classes", n_real, n_fake, label, per_class)
        else:
            result = assessment(None, "untestable", len(real), len(fake), label)
    result.update(pool_id=pool_id, dataset_id=dataset_id, seed=seed)
    pool.info = {**(pool.info or {}), "assessment": result}
    return result
