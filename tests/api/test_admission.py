"""Submit-time checks against the database (issue 20.3): a job that cannot succeed is refused with a 422
naming the field, and nothing is queued.

The rows a job names (dataset, pools, picks, models, and the jobs that made them) are written straight into
the test app's SQLite database: what is under test is the submit route reading them, not the jobs that
would normally write them.
"""

from __future__ import annotations

from typing import Any

import pytest

from backend.db.models import Concept, Dataset, Diffusion, Gan, Job, Pool, PoolImage, Selection, SelectionPick

SPEC = {"minority": "cat", "keep": 5, "seed": 0}
CLASSES = ["cat", "dog"]


def _add(api, row: Any) -> int:
    with api.db.session() as s:
        s.add(row)
        s.flush()
        ident = row.id
        s.commit()
    return ident


def _job(api, status: str, kind: str = "generate_sd") -> int:
    return _add(api, Job(kind=kind, params={}, status=status))


def _dataset(api) -> int:
    return _add(api, Dataset(name="d", source="digits", cache_key="k", classes=CLASSES, image_size=[8, 8]))


def _pool(api, count: int, status: str = "succeeded") -> int:
    """A pool of ``count`` images made by a job that is ``status``."""
    pool_id = _add(api, Pool(name="p", kind="sd", job_id=_job(api, status), count=count))
    with api.db.session() as s:
        s.add_all(PoolImage(pool_id=pool_id, idx=i, file=f"{i}.png", width=8, height=8) for i in range(count))
        s.commit()
    return pool_id


def _selection(api, dataset_id: int, picks: int, status: str = "succeeded") -> int:
    pool_id = _pool(api, picks + 2)
    sel_id = _add(api, Selection(dataset_id=dataset_id, job_id=_job(api, status, "select"), params={}))
    with api.db.session() as s:
        images = s.query(PoolImage).filter_by(pool_id=pool_id).order_by(PoolImage.idx).all()
        for rank, img in enumerate(images[:picks]):
            s.add(SelectionPick(selection_id=sel_id, image_id=img.id, rank=rank, round=0, score=1.0))
        s.commit()
    return sel_id


def _post(api, kind: str, params: dict[str, Any]):
    return api.client.post("/api/jobs", json={"kind": kind, "params": params})


def _refused(api, kind: str, params: dict[str, Any], field: str, text: str) -> None:
    """The submit answers 422 whose first error is at ``body.params.<field>`` and says ``text``; no job queued."""
    before = api.client.get("/api/jobs").json()["total"]
    r = _post(api, kind, params)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["detail"][0]["loc"] == ["body", "params", *field.split(".")], body
    assert body["message"].startswith(f"params.{field}: ") and text in body["message"], body["message"]
    assert api.client.get("/api/jobs").json()["total"] == before


def _select(dataset_id: int, pool_ids: list[int], budget: int) -> dict[str, Any]:
    return {"dataset_id": dataset_id, "imbalance": SPEC, "pool_ids": pool_ids, "budget": budget, "per_round": 1}


def test_select_budget_over_the_pools_is_refused_naming_budget(api) -> None:
    ds = _dataset(api)
    a, b = _pool(api, 6), _pool(api, 4)
    _refused(api, "select", _select(ds, [a, b], 11), "budget", "11 exceeds the 10 images of the chosen pools")
    assert f"pool {a}: 6, pool {b}: 4" in _post(api, "select", _select(ds, [a, b], 11)).json()["message"]
    assert _post(api, "select", _select(ds, [a, b], 10)).status_code == 201  # exactly the pools' size is fine


def test_select_names_the_missing_unfinished_or_empty_row(api) -> None:
    ds = _dataset(api)
    ok = _pool(api, 5)
    _refused(api, "select", _select(ds + 100, [ok], 1), "dataset_id", f"dataset {ds + 100} does not exist")
    _refused(api, "select", _select(ds, [ok, 999], 1), "pool_ids.1", "pool 999 does not exist")
    running = _pool(api, 3, status="running")
    _refused(api, "select", _select(ds, [running], 1), "pool_ids.0", f"pool {running} is still being made")
    empty = _pool(api, 0, status="failed")
    _refused(api, "select", _select(ds, [ok, empty], 1), "pool_ids.1", f"pool {empty} holds no images")
    params = _select(ds, [ok], 1) | {"imbalance": {"minority": "horse", "keep": 5}}
    _refused(api, "select", params, "imbalance.minority", "['horse'] not classes of dataset")
    _refused(api, "select", _select(ds, [ok], 1) | {"target_class": "emu"}, "target_class", "'emu' is not a class")
    # A cancelled generation keeps what it made: its images are usable.
    assert _post(api, "select", _select(ds, [_pool(api, 3, status="cancelled")], 3)).status_code == 201


def test_benchmark_variant_counts_beyond_their_source_are_refused(api) -> None:
    ds = _dataset(api)
    pool_id = _pool(api, 8)
    sel = _selection(api, ds, picks=4)
    base = {"dataset_id": ds, "imbalance": SPEC, "epochs": 1}
    fine = [{"name": "sd", "pool_id": pool_id, "count": 8}, {"name": "al", "selection_id": sel, "count": 4}]
    too_many = [*fine[:1], {"name": "gan", "pool_id": pool_id, "count": 9}]
    _refused(api, "benchmark", base | {"variants": too_many}, "variants.1.count", f"pool {pool_id} holds 8")
    assert "'gan' asks for 9 images" in _post(api, "benchmark", base | {"variants": too_many}).json()["message"]
    over = ["imbalanced", {"name": "al", "selection_id": sel, "count": 5}]
    _refused(api, "benchmark", base | {"variants": over}, "variants.1.count", f"selection {sel} holds 4")
    assert _post(api, "benchmark", base | {"variants": ["imbalanced", *fine]}).status_code == 201


def test_benchmark_refuses_failed_or_pickless_selections_and_missing_pools(api) -> None:
    ds = _dataset(api)
    base = {"dataset_id": ds, "imbalance": SPEC}
    failed = _selection(api, ds, picks=3, status="failed")
    variants = [{"name": "al", "selection_id": failed}]
    _refused(api, "benchmark", base | {"variants": variants}, "variants.0.selection_id", "job #")
    assert "did not finish" in _post(api, "benchmark", base | {"variants": variants}).json()["message"]
    none = _selection(api, ds, picks=0)
    variants = ["oversample", {"name": "al", "selection_id": none}]
    _refused(api, "benchmark", base | {"variants": variants}, "variants.1.selection_id", "no accepted or pending")
    variants = [{"name": "sd", "pool_id": 77, "count": 5}]
    _refused(api, "benchmark", base | {"variants": variants}, "variants.0.pool_id", "pool 77 does not exist")
    _refused(api, "benchmark", base | {"dataset_id": 42}, "dataset_id", "dataset 42 does not exist")
    # Rejected picks do not count: 3 picks, one rejected, leave 2 for the variant.
    sel = _selection(api, ds, picks=3)
    with api.db.session() as s:
        s.query(SelectionPick).filter_by(selection_id=sel, rank=0).update({"review": "rejected"})
        s.commit()
    variants = [{"name": "al", "selection_id": sel, "count": 3}]
    _refused(api, "benchmark", base | {"variants": variants}, "variants.0.count", f"selection {sel} holds 2")


def test_a_class_s_picks_are_refused_under_another_class_s_label(api) -> None:
    """The filtered fill of a long tail adds each class's selection picks with that class's label (issue 31):
    picks made for "dog" labelled "cat" would teach wrong labels, so the submit names the label."""
    ds = _dataset(api)
    cat, dog = _selection(api, ds, picks=3), _selection(api, ds, picks=2)
    with api.db.session() as s:
        for sel_id, target in ((cat, "cat"), (dog, "dog")):
            s.get(Selection, sel_id).params = {"target_class": target}
        s.commit()
    base = {"dataset_id": ds, "imbalance": SPEC}
    fill = {"name": "fill_al", "selection_id": cat, "label": "cat", "others": [{"selection_id": dog, "label": "dog"}]}
    swapped = fill | {"others": [{"selection_id": dog, "label": "cat"}]}
    _refused(
        api, "benchmark", base | {"variants": [swapped]}, "variants.0.others.0.label", "picked images of class 'dog'"
    )
    _refused(api, "benchmark", base | {"variants": [fill | {"label": "dog"}]}, "variants.0.label", "class 'cat'")
    over = fill | {"others": [{"selection_id": dog, "label": "dog", "count": 3}]}
    _refused(api, "benchmark", base | {"variants": [over]}, "variants.0.others.0.count", f"selection {dog} holds 2")
    both = fill | {"others": [{"selection_id": dog, "pool_id": _pool(api, 2), "count": 1, "label": "dog"}]}
    r = _post(api, "benchmark", base | {"variants": [both]})
    assert r.status_code == 422 and "exactly one of selection_id or pool_id" in r.json()["message"], r.text
    assert _post(api, "benchmark", base | {"variants": [fill]}).status_code == 201


@pytest.mark.parametrize(
    ("kind", "params", "field", "text"),
    [
        ("generate_gan", {"gan_id": 999}, "gan_id", "GAN 999 does not exist"),
        ("generate_diffusion", {"diffusion_id": 999, "class": "cat"}, "diffusion_id", "diffusion model 999 does not"),
        ("generate_sd", {"model": "tiny", "concept_id": 999}, "concept_id", "concept 999 does not exist"),
        ("generate_sd", {"model": "tiny", "vocabulary": 999}, "vocabulary", "vocabulary 999 does not exist"),
        ("train_gan", {"source": {"dataset_id": 999, "imbalance": SPEC}}, "source.dataset_id", "dataset 999"),
        ("train_diffusion", {"source": {"dataset_id": 999, "imbalance": SPEC}}, "source.dataset_id", "dataset 999"),
        ("personalize_sd", {"source": {"dataset_id": 999, "imbalance": SPEC}}, "source.dataset_id", "dataset 999"),
    ],
)
def test_unknown_ids_are_refused_naming_the_field(api, kind: str, params: dict, field: str, text: str) -> None:
    _refused(api, kind, params, field, text)


def test_models_must_have_a_finished_epoch_and_fit_the_request(api) -> None:
    untrained = _add(api, Gan(name="g", job_id=_job(api, "running", "train_gan"), epochs_done=0))
    _refused(api, "generate_gan", {"gan_id": untrained}, "gan_id", "no finished epoch yet (job #")
    gan = _add(api, Gan(name="g", epochs_done=2))
    _refused(api, "generate_gan", {"gan_id": gan, "epoch": 3}, "epoch", "epochs 1..2")
    assert _post(api, "generate_gan", {"gan_id": gan, "epoch": 2}).status_code == 201

    diffusion = _add(api, Diffusion(name="m", classes=CLASSES, epochs_done=1))
    _refused(api, "generate_diffusion", {"diffusion_id": diffusion, "class": "emu"}, "class", "'emu' is not a class")
    assert _post(api, "generate_diffusion", {"diffusion_id": diffusion, "class": "dog"}).status_code == 201

    concept = _add(api, Concept(name="c", method="lora", base_model="tiny", token="<c>", steps_done=1))
    params = {"model": "owner/other", "concept_id": concept}
    _refused(api, "generate_sd", params, "concept_id", "trained on model 'tiny', not 'owner/other'")
    fresh = _add(api, Concept(name="c", method="lora", base_model="tiny", token="<d>", steps_done=0))
    _refused(api, "generate_sd", {"model": "tiny", "concept_id": fresh}, "concept_id", "no finished step yet")
