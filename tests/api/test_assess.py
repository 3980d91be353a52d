"""Job ``assess_pool`` end to end on the digits demo: the two-sample test against real images of the pool's class,
through the generator's other classes for a starved minority, stored with the pool; bad input answers 422."""

from __future__ import annotations

import numpy as np
import pytest

from backend.data.imbalance import apply_imbalance
from backend.db.models import Pool, PoolImage
from backend.generation.imagefiles import encode_png
from backend.services.datasets import open_dataset
from backend.store import FileStore

SPEC = {"minority": "3", "keep": 5, "seed": 0}


@pytest.fixture()
def digits(api) -> tuple[int, object]:
    api.submit("prepare_dataset", {"source": "digits"})
    (done,) = api.run_jobs()
    assert done["status"] == "succeeded", done["error"]
    dataset_id = done["result"]["dataset_id"]
    with api.db.session() as s:
        ds = open_dataset(s, FileStore(api.settings.workspace_dir), dataset_id)
    return dataset_id, ds


def _pool(api, images: np.ndarray, kind: str = "imported", params: dict | None = None) -> int:
    store = FileStore(api.settings.workspace_dir)
    with api.db.session() as s:
        pool = Pool(name="p", kind=kind, params=params or {}, count=len(images), info={})
        s.add(pool)
        s.flush()
        for idx, im in enumerate(images):
            rel = f"pools/{pool.id}/{idx}.png"
            store.write_bytes(rel, encode_png(np.asarray(im)))
            s.add(PoolImage(pool_id=pool.id, idx=idx, file=rel, width=32, height=32, seed=idx, meta={}))
        return pool.id


def _generated_look(images: np.ndarray, seed: int) -> np.ndarray:
    """Real images with a generator's signature: a fixed faint pattern and noise."""
    rng = np.random.default_rng(seed)
    pattern = rng.normal(0, 12, images.shape[1:])
    return np.clip(images.astype(float) + pattern + rng.normal(0, 8, images.shape), 0, 255).astype(np.uint8)


def _assess(api, params: dict) -> dict:
    api.submit("assess_pool", params)
    (done,) = api.run_jobs()
    assert done["status"] == "succeeded", done["error"]
    pool = api.client.get(f"/api/pools/{params['pool_id']}").json()
    assert pool["assessment"] == done["result"]["assessment"]  # stored with the pool
    return pool["assessment"]


def test_same_class_real_passes_and_generated_look_is_flagged(api, digits) -> None:
    dataset_id, ds = digits
    y = np.asarray(ds.train_y)
    fives = np.asarray(ds.train_x)[y == ds.classes.index("5")]
    half = len(fives) // 2
    # Real 5s the dataset does not hold (the imbalance below removes them) as a pool: indistinguishable.
    removed = apply_imbalance(ds.train_y, ds.classes, {"minority": "5", "keep": half, "seed": 0}).removed_idx
    real_pool = _pool(api, np.asarray(ds.train_x)[removed])
    spec = {"minority": "5", "keep": half, "seed": 0}
    a = _assess(api, {"pool_id": real_pool, "dataset_id": dataset_id, "imbalance": spec})
    assert a["method"] == "same_class" and a["domain_auc"] <= 0.65 and a["flagged"] is False
    assert a["n_real"] == half and a["label"] == "5"
    fake_pool = _pool(api, _generated_look(np.asarray(ds.train_x)[removed], 0))
    a = _assess(api, {"pool_id": fake_pool, "dataset_id": dataset_id, "imbalance": spec})
    assert a["domain_auc"] >= 0.9 and a["flagged"] is True and "every-class" in a["reason"]


def test_a_starved_minority_is_assessed_through_the_generators_other_classes(api, digits) -> None:
    dataset_id, ds = digits
    x, y = np.asarray(ds.train_x), np.asarray(ds.train_y)
    # A "diffusion model" 7 sampled the starved 3 and, for the every-class recipe, 1 and 2 (its look is
    # the signature); model 8 sampled only 3.
    gen = {"diffusion_id": 7}
    minority = _pool(api, _generated_look(x[y == 3], 1), "diffusion", gen | {"class": "3"})
    for c in ("1", "2"):
        _pool(api, _generated_look(x[y == int(c)], 2), "diffusion", gen | {"class": c})
    lonely = _pool(api, _generated_look(x[y == 3], 3), "diffusion", {"diffusion_id": 8, "class": "3"})

    a = _assess(api, {"pool_id": minority, "dataset_id": dataset_id, "imbalance": SPEC})
    assert a["method"] == "generator_other_classes" and set(a["per_class"]) == {"1", "2"}
    assert a["flagged"] is True and a["domain_auc"] == pytest.approx(np.mean(list(a["per_class"].values())), 1e-3)
    a = _assess(api, {"pool_id": lonely, "dataset_id": dataset_id, "imbalance": SPEC})
    assert a["method"] == "untestable" and a["flagged"] is None and "cannot be tested" in a["reason"]


def test_bad_input_names_the_field(api, digits) -> None:
    dataset_id, ds = digits
    x, y = np.asarray(ds.train_x), np.asarray(ds.train_y)
    one = _pool(api, x[:1])
    other_dataset_class = _pool(api, x[y == 3][:30], "diffusion", {"diffusion_id": 9, "class": "cat"})
    fine = _pool(api, x[y == 3][:30])

    def refused(params: dict, field: str) -> None:
        r = api.client.post("/api/jobs", json={"kind": "assess_pool", "params": params})
        assert r.status_code == 422, r.text
        assert field in r.text, r.text

    refused({"pool_id": one, "dataset_id": dataset_id, "imbalance": SPEC}, "params.pool_id")
    refused({"pool_id": other_dataset_class, "dataset_id": dataset_id, "imbalance": SPEC}, "params.pool_id")
    refused({"pool_id": fine, "dataset_id": dataset_id, "imbalance": {**SPEC, "keep": 0}}, "params.imbalance.keep")
    refused({"pool_id": fine, "dataset_id": dataset_id, "label": "dog"}, "params.label")
    refused({"pool_id": 99999, "dataset_id": dataset_id}, "params.pool_id")
    refused({"pool_id": fine, "dataset_id": dataset_id, "seed": -1}, "seed")
