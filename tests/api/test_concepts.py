"""personalize_sd and generate_sd with concept_id end to end through the API on the tiny pipeline:
the concept's endpoints, generation with and without it (txt2img and img2img), crash-resume to the same
artifact, and bad input."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from backend.db.models import Concept, Dataset
from backend.generation.personalize_config import LORA_FILE, TI_FILE
from backend.jobs.kinds.personalize import PersonalizeSDParams, personalize_sd
from backend.services.concepts import artifact_path
from backend.store import FileStore
from tests.api.handlers import Killed, context_for, die_on_checkpoint

SPEC = {"minority": "cat", "keep": 3, "seed": 0}
TRAIN = {
    "model": "tiny",
    "resolution": 64,
    "steps": 4,
    "sample_every": 2,
    "batch_size": 2,
    "lr": 0.05,
    "grid_images": 2,
    "grid_steps": 2,
    "num_vectors": 2,
}
GEN = {"model": "tiny", "resolution": 64, "steps": 2, "batch_size": 2, "review_size": 48, "count": 2, "seed": 1}
VOCAB = {"template": "a photo of <concept> on a {thing}", "slots": {"thing": ["bed", "sofa"]}}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Several test processes share two cores; spinning OpenMP threads would slow tiny convs 10x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _dataset(api) -> int:
    """A toy cat/dog dataset in the test workspace (real images are not needed to test the plumbing)."""
    from backend.data.cache import build_cache
    from backend.data.sources import ArraySource

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
    train_x = np.repeat(np.repeat(small, 4, axis=1), 4, axis=2)  # blocky 16 px images
    train_y = np.repeat(np.arange(2), 10)
    source = ArraySource("toy", ["cat", "dog"], train_x, train_y, train_x[:4], train_y[:4])
    ds = build_cache(source, api.settings.workspace_dir / "cache")
    with api.db.session() as s:
        row = Dataset(name="toy", source="array", cache_key=ds.key, classes=ds.classes)
        s.add(row)
        s.flush()
        return row.id


def _run(api, kind: str, params: dict) -> dict:
    api.submit(kind, params)
    [done] = api.run_jobs()
    return done


def _queued_past_admission(api, kind: str, params: dict) -> dict:
    """Queue a job straight into the queue, as an experiment does, skipping the API's submit-time checks,
    run it and return it: the worker checks the same things again and fails it clearly."""
    from backend.jobs import queue
    from backend.jobs.registry import get_kind

    model = get_kind(kind).params_model
    queue.submit(api.db, kind, model.model_validate(params).model_dump(mode="json", by_alias=True))
    [done] = api.run_jobs()
    return done


def _pool(api, pool_id: int) -> tuple[list[dict], np.ndarray]:
    items = api.client.get(f"/api/pools/{pool_id}/images").json()["items"]
    pngs = [np.asarray(Image.open(io.BytesIO(api.client.get(it["url"]).content))) for it in items]
    return items, np.stack(pngs).astype(int)


def _weights(api, concept_id: int, name: str) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(FileStore(api.settings.workspace_dir).path(artifact_path(concept_id)) / name)


def test_personalize_then_generate_with_the_concept(api) -> None:
    dataset_id = _dataset(api)
    source = {"dataset_id": dataset_id, "imbalance": SPEC}
    done = _run(api, "personalize_sd", TRAIN | {"source": source, "name": "my cat"})
    assert done["status"] == "succeeded", done["error"]
    concept_id = done["result"]["concept_id"]

    [listed] = api.client.get("/api/concepts").json()
    assert listed["id"] == concept_id and listed["job_status"] == "succeeded"
    body = api.client.get(f"/api/concepts/{concept_id}").json()
    assert (body["method"], body["base_model"], body["token"], body["steps"]) == (
        "textual_inversion",
        "tiny",
        "<concept>",
        4,
    )
    assert body["steps_done"] == 4 and [h["step"] for h in body["history"]] == [2, 4]
    assert all(h["loss"] > 0 for h in body["history"])
    assert body["info"]["source"] == {"kind": "dataset", "dataset_id": dataset_id, "class": "cat", "images": 3}
    assert body["samples"] == [f"/api/concepts/{concept_id}/samples/{s}" for s in (2, 4)]
    grid = api.client.get(body["samples"][-1])
    assert grid.status_code == 200 and grid.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(grid.content)).size == (128, 64)  # 2 tiles of 64 px
    assert api.client.get(f"/api/concepts/{concept_id}/samples/3").status_code == 404
    assert _weights(api, concept_id, TI_FILE)["<concept>"].shape == (2, 32)

    # The same prompts and seeds with and without the concept, on the worker's one cached pipeline.
    with_concept = _run(api, "generate_sd", GEN | {"vocabulary": VOCAB, "concept_id": concept_id})
    assert with_concept["status"] == "succeeded", with_concept["error"]
    without = _run(api, "generate_sd", GEN | {"vocabulary": VOCAB})
    again = _run(api, "generate_sd", GEN | {"vocabulary": VOCAB, "concept_id": concept_id, "name": "again"})
    items, a = _pool(api, with_concept["result"]["pool_id"])
    _, b = _pool(api, without["result"]["pool_id"])
    _, c = _pool(api, again["result"]["pool_id"])
    assert items[0]["prompt"].startswith("a photo of <concept>") and items[0]["meta"]["concept_id"] == concept_id
    assert np.abs(a - b).max() > 2  # the token means something learned
    assert np.abs(a - c).max() <= 1  # unloaded for the plain job, loaded again identically

    # img2img from the real images, default vocabulary built around the token.
    img2img = GEN | {"mode": "img2img", "strength": 0.5, "dataset_id": dataset_id, "imbalance": SPEC}
    done = _run(api, "generate_sd", img2img | {"concept_id": concept_id, "count": 3, "strengths": [0.5, 1.0]})
    assert done["status"] == "succeeded", done["error"]
    items, mixed = _pool(api, done["result"]["pool_id"])
    assert "<concept>" in items[0]["prompt"] and "init_image_index" in items[0]["meta"]
    assert [it["meta"]["strength"] for it in items] == [0.5, 1.0, 0.5]  # DA-Fusion: several strengths
    single = _run(api, "generate_sd", img2img | {"concept_id": concept_id, "count": 3, "name": "0.5 only"})
    _, half = _pool(api, single["result"]["pool_id"])
    assert np.abs(mixed[[0, 2]] - half[[0, 2]]).max() <= 1 and np.abs(mixed[1] - half[1]).max() > 2


def test_lora_concept_end_to_end(api, tmp_path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    done = _run(
        api, "personalize_sd", TRAIN | {"method": "lora", "rank": 2, "lr": 0.01, "source": {"path": str(folder)}}
    )
    assert done["status"] == "succeeded", done["error"]
    concept_id = done["result"]["concept_id"]
    body = api.client.get(f"/api/concepts/{concept_id}").json()
    assert body["method"] == "lora" and body["info"]["source"]["images"] == 3
    weights = _weights(api, concept_id, LORA_FILE)
    assert weights and all(k.startswith("unet.") for k in weights)

    with_concept = _run(api, "generate_sd", GEN | {"vocabulary": VOCAB, "concept_id": concept_id})
    without = _run(api, "generate_sd", GEN | {"vocabulary": VOCAB})
    assert with_concept["status"] == without["status"] == "succeeded", with_concept["error"]
    _, a = _pool(api, with_concept["result"]["pool_id"])
    _, b = _pool(api, without["result"]["pool_id"])
    assert np.abs(a - b).max() > 2


def test_crash_mid_training_resumes_to_the_same_artifact(api) -> None:
    dataset_id = _dataset(api)
    params = TRAIN | {"source": {"dataset_id": dataset_id, "imbalance": SPEC}, "steps": 6}
    reference = _run(api, "personalize_sd", params)
    assert reference["status"] == "succeeded", reference["error"]

    job = api.submit("personalize_sd", params | {"name": "resumed"})
    parsed = PersonalizeSDParams.model_validate(job["params"])
    with pytest.raises(Killed):  # dies after stretch 2's files are written, before its checkpoint
        personalize_sd(die_on_checkpoint(context_for(api, job["id"]), 2), parsed)
    ctx = context_for(api, job["id"])
    assert ctx.checkpoint["step"] == 2
    logs: list[str] = []
    ctx.log = lambda message, *args: logs.append(message)
    result = personalize_sd(ctx, parsed)
    assert any("resuming after step 2" in m for m in logs)
    assert [m.split(":")[0] for m in logs if m.startswith("step ")] == ["step 4/6", "step 6/6"]  # not redone
    assert result["steps_done"] == 6 and result["concept_id"] != reference["result"]["concept_id"]
    with api.db.read_session() as s:
        assert s.query(Concept).filter(Concept.job_id == job["id"]).count() == 1  # the same row resumed
    a = _weights(api, reference["result"]["concept_id"], TI_FILE)
    b = _weights(api, result["concept_id"], TI_FILE)
    assert torch.equal(a["<concept>"], b["<concept>"])
    history = api.client.get(f"/api/concepts/{result['concept_id']}").json()["history"]
    assert history == api.client.get(f"/api/concepts/{reference['result']['concept_id']}").json()["history"]
    store = FileStore(api.settings.workspace_dir)
    states = sorted(p.name for p in store.path(f"concepts/{result['concept_id']}").glob("state_*"))
    assert states == ["state_6.safetensors"]  # older states pruned


def test_bad_concept_input_is_a_clear_error(api) -> None:
    r = api.client.post("/api/jobs", json={"kind": "generate_sd", "params": GEN | {"concept_id": 999}})
    assert r.status_code == 422 and r.json()["message"] == "params.concept_id: concept 999 does not exist"
    missing = _queued_past_admission(api, "generate_sd", GEN | {"concept_id": 999})
    assert missing["status"] == "failed" and "concept_id: concept 999 does not exist" in missing["error"]

    with api.db.session() as s:
        row = Concept(name="x", method="lora", base_model="tiny", token="<c>", params={}, steps_done=1)
        s.add(row)
        s.flush()
        concept_id = row.id
    params = GEN | {"model": "owner/other-model", "concept_id": concept_id}
    r = api.client.post("/api/jobs", json={"kind": "generate_sd", "params": params})
    assert r.status_code == 422 and "trained on model 'tiny', not 'owner/other-model'" in r.json()["message"]
    other = _queued_past_admission(api, "generate_sd", params)
    assert other["status"] == "failed"
    assert f"concept_id: concept {concept_id} was trained on model 'tiny', not 'owner/other-model'" in other["error"]
    assert api.client.get("/api/concepts/999").status_code == 404

    for bad, field in [({"token": "two words"}, "token"), ({"method": "dreambooth"}, "method"), ({}, "source")]:
        params = TRAIN | {"source": {"dataset_id": 1, "imbalance": SPEC}} | bad
        if field == "source":
            params.pop("source")
        r = api.client.post("/api/jobs", json={"kind": "personalize_sd", "params": params})
        assert r.status_code == 422 and field in r.text, r.text
    r = api.client.post("/api/jobs", json={"kind": "generate_sd", "params": GEN | {"concept_id": 1, "compile": True}})
    assert r.status_code == 422 and "concept_id" in r.text
    r = api.client.post("/api/jobs", json={"kind": "generate_sd", "params": GEN | {"strengths": [0.5]}})
    assert r.status_code == 422 and "strengths are for mode img2img" in r.text
