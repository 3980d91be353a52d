"""train_diffusion / generate_diffusion end to end through the API: dataset and folder sources, pools,
crash-resume, SDEdit starts, and bad input."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.db.models import Diffusion
from backend.generation.imagefiles import read_png_metadata
from backend.jobs.kinds.diffusion import GenerateDiffusionParams, TrainDiffusionParams, generate_diffusion
from backend.jobs.kinds.diffusion import train_diffusion as train_handler
from backend.services.diffusions import model_path, state_path
from backend.store import FileStore
from tests.api.handlers import Killed, context_for, die_on_checkpoint

# A model small enough to train an epoch of the digits demo in about a second on one thread.
TINY = {
    "image_size": 16,
    "width": 0.125,
    "layers_per_block": 1,
    "attention": False,
    "batch_size": 256,
    "grid_per_class": 2,
    "grid_steps": 2,
    "seed": 1,
}
FAST = {"steps": 2, "sampler": "ddim"}  # sampling settings for tests


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Several test processes share two cores; spinning OpenMP threads would slow tiny convs 10x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _pool_images(api, pool_id: int) -> tuple[list[dict], list[np.ndarray]]:
    items = api.client.get(f"/api/pools/{pool_id}/images").json()["items"]
    return items, [_png(api.client.get(it["url"]).content) for it in items]


def _digits(api) -> int:
    prepared = _run(api, "prepare_dataset", {"source": "digits"})
    assert prepared["status"] == "succeeded", prepared["error"]
    return prepared["result"]["dataset_id"]


SPEC = {"minority": "3", "keep": 5, "seed": 0}


def test_train_then_generate_end_to_end(api) -> None:
    from diffusers import UNet2DModel  # here, not at import: diffusers costs collection seconds

    dataset_id = _digits(api)
    source = {"dataset_id": dataset_id, "imbalance": SPEC}
    done = _run(api, "train_diffusion", TINY | {"source": source, "epochs": 2, "name": "digits"})
    assert done["status"] == "succeeded", done["error"]
    diffusion_id = done["result"]["diffusion_id"]

    assert [d["id"] for d in api.client.get("/api/diffusions").json()] == [diffusion_id]
    body = api.client.get(f"/api/diffusions/{diffusion_id}").json()
    assert body["name"] == "digits" and body["epochs_done"] == 2 and body["job_status"] == "succeeded"
    assert body["classes"] == [str(d) for d in range(10)]  # all classes of the imbalanced set
    assert body["info"]["source"]["counts"]["3"] == 5 and body["info"]["source"]["kind"] == "dataset"
    assert [h["epoch"] for h in body["history"]] == [1, 2] and all(h["loss"] > 0 for h in body["history"])
    assert body["params"]["label_dropout"] == 0.1  # defaults come from the core config
    assert body["samples"] == [f"/api/diffusions/{diffusion_id}/samples/{e}" for e in (1, 2)]
    grid = api.client.get(body["samples"][1])
    assert grid.status_code == 200 and grid.headers["content-type"] == "image/png"
    assert _png(grid.content).shape == (2 + 10 * 18, 2 + 2 * 18, 3)  # a row per class, 16 px tiles
    assert api.client.get(f"/api/diffusions/{diffusion_id}/samples/3").status_code == 404

    # Only the newest epoch keeps a training state and a model; the model is a plain diffusers folder.
    store = FileStore(api.settings.workspace_dir)
    assert body["model_path"] == model_path(diffusion_id, 2)
    assert not store.exists(state_path(diffusion_id, 1)) and not store.exists(model_path(diffusion_id, 1))
    assert store.exists(state_path(diffusion_id, 2))
    assert UNet2DModel.from_pretrained(store.path(model_path(diffusion_id, 2)) / "unet").config.num_class_embeds == 11

    params = {"diffusion_id": diffusion_id, "class": "3", "count": 5, "seed": 3, "chunk_size": 2} | FAST
    gen = _run(api, "generate_diffusion", params)
    assert gen["status"] == "succeeded", gen["error"]
    assert gen["params"]["class"] == "3"  # stored under the name the user wrote
    pool = api.client.get(f"/api/pools/{gen['result']['pool_id']}").json()
    assert pool["kind"] == "diffusion" and pool["count"] == 5
    items, pngs = _pool_images(api, pool["id"])
    assert [it["idx"] for it in items] == list(range(5))
    assert all(p.shape == (32, 32, 3) for p in pngs)  # the dataset's size by default
    meta = read_png_metadata(api.client.get(items[0]["url"]).content)[1]
    assert meta["generator"] == "ddpm" and meta["class"] == "3" and meta["diffusion_id"] == diffusion_id
    assert meta["epoch"] == 2 and meta["job_seed"] == 3 and meta["sampler"] == "ddim"
    review = Image.open(io.BytesIO(api.client.get(items[0]["review_url"]).content))
    assert review.size == (16, 16)  # the model's own resolution

    # Image i depends on (seed, i) only: another batch size and chunking give the same pixels, up to one
    # intensity level (oneDNN picks convolution kernels per batch shape; their float sums may round apart).
    again = _run(api, "generate_diffusion", params | {"count": 3, "batch_size": 1, "chunk_size": 3})
    _, again_pngs = _pool_images(api, again["result"]["pool_id"])
    diffs = [np.abs(a.astype(int) - b.astype(int)) for a, b in zip(again_pngs, pngs[:3], strict=True)]
    assert all(d.max() <= 1 for d in diffs), [int(d.max()) for d in diffs]

    # SDEdit from the five kept real 3s: provenance names the real image each one started from.
    sdedit = _run(api, "generate_diffusion", params | {"count": 2, "strength": 0.5, "steps": 4})
    assert sdedit["status"] == "succeeded", sdedit["error"]
    items, _ = _pool_images(api, sdedit["result"]["pool_id"])
    starts = [read_png_metadata(api.client.get(it["url"]).content)[1]["init_image_index"] for it in items]
    assert len(set(starts)) == 2 and all(isinstance(i, int) for i in starts)


def _class_folders(root: Path) -> Path:
    """Two class folders of simple shapes (bright squares / dark squares), plus a corrupt file."""
    for c, level in (("bright", 220), ("dark", 40)):
        (root / c).mkdir(parents=True)
        for i in range(6):
            img = np.full((20, 24, 3), 255 - level, np.uint8)
            img[4 + i % 3 : 14, 6:16] = level
            Image.fromarray(img).save(root / c / f"{i}.png")
    (root / "dark" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def test_folder_source_names_the_classes(api, tmp_path: Path) -> None:
    folder = _class_folders(tmp_path / "shapes")
    done = _run(api, "train_diffusion", TINY | {"source": {"path": str(folder)}, "epochs": 1})
    assert done["status"] == "succeeded", done["error"]
    body = api.client.get(f"/api/diffusions/{done['result']['diffusion_id']}").json()
    assert body["classes"] == ["bright", "dark"]
    source = body["info"]["source"]
    assert source["counts"] == {"bright": 6, "dark": 6} and source["skipped_count"] == 1
    assert "dark/broken.png" in source["skipped"][0]
    gen = _run(api, "generate_diffusion", {"diffusion_id": body["id"], "class": "dark", "count": 2, "strength": 0.5})
    assert gen["status"] == "succeeded", gen["error"]
    items, pngs = _pool_images(api, gen["result"]["pool_id"])
    assert pngs[0].shape == (16, 16, 3)  # no dataset: the model's own size

    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(flat / "x.png")
    no_classes = _run(api, "train_diffusion", TINY | {"source": {"path": str(flat)}})
    assert no_classes["status"] == "failed" and "<class>/ subfolders" in no_classes["error"]


def _row(api, diffusion_id: int) -> Diffusion:
    with api.db.read_session() as s:
        row = s.get(Diffusion, diffusion_id)
        s.expunge(row)
        return row


def test_killed_jobs_resume_to_the_same_result(api, tmp_path: Path) -> None:
    """Training killed between an epoch's files and its checkpoint redoes that epoch identically; generation
    killed after a chunk's rows adds the rest exactly once."""
    from diffusers import UNet2DModel

    params = TINY | {"source": {"path": str(_class_folders(tmp_path / "s"))}, "epochs": 3, "batch_size": 4}
    straight = _run(api, "train_diffusion", params)
    assert straight["status"] == "succeeded", straight["error"]
    reference = _row(api, straight["result"]["diffusion_id"])
    gen_params = {"diffusion_id": reference.id, "class": "bright", "count": 5, "chunk_size": 2, "seed": 4} | FAST
    whole = _run(api, "generate_diffusion", gen_params)  # before the in-process jobs below sit in the queue
    _, whole_pngs = _pool_images(api, whole["result"]["pool_id"])

    job = api.submit("train_diffusion", params)
    parsed = TrainDiffusionParams.model_validate(job["params"])
    with pytest.raises(Killed):
        train_handler(die_on_checkpoint(context_for(api, job["id"]), 2), parsed)
    ctx = context_for(api, job["id"])
    assert ctx.checkpoint["epoch"] == 1
    messages: list[str] = []
    report = ctx.progress
    ctx.progress = lambda fraction, message=None: (messages.append(message or ""), report(fraction, message))[1]
    result = train_handler(ctx, parsed)
    # It resumed after epoch 1 (restoring its state) instead of training again from scratch.
    assert any(m.startswith("epoch 2/3") for m in messages) and not any(m.startswith("epoch 1/3") for m in messages)
    resumed = _row(api, result["diffusion_id"])
    assert resumed.id != reference.id and resumed.epochs_done == 3
    assert resumed.history == reference.history  # same losses, epoch by epoch
    store = FileStore(api.settings.workspace_dir)
    a = UNet2DModel.from_pretrained(store.path(model_path(reference.id, 3)) / "unet").state_dict()
    b = UNet2DModel.from_pretrained(store.path(model_path(resumed.id, 3)) / "unet").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    job = api.submit("generate_diffusion", gen_params)
    parsed = GenerateDiffusionParams.model_validate(job["params"])
    with pytest.raises(Killed):  # dies after chunk 2's rows are written, before its checkpoint
        generate_diffusion(die_on_checkpoint(context_for(api, job["id"]), 2), parsed)
    result = generate_diffusion(context_for(api, job["id"]), parsed)
    items, pngs = _pool_images(api, result["pool_id"])
    assert [it["idx"] for it in items] == list(range(5))  # none missing, none twice
    assert all(np.array_equal(a, b) for a, b in zip(pngs, whole_pngs, strict=True))


UPLOAD = {"dataset_id": 1, "imbalance": {"minority": "3", "keep": 5}}  # well-formed: only the field under test is wrong


@pytest.mark.parametrize(
    ("kind", "params", "field"),
    [
        ("train_diffusion", {"source": UPLOAD, "image_size": 48}, "image_size"),
        ("train_diffusion", {"source": UPLOAD, "width": 0.06}, "width"),
        ("train_diffusion", {"source": UPLOAD, "label_dropout": 2}, "label_dropout"),
        ("train_diffusion", {"source": UPLOAD, "beta_schedule": "cosine"}, "beta_schedule"),
        ("train_diffusion", {"source": UPLOAD, "colour": 1}, "colour"),
        ("train_diffusion", {}, "source"),
        ("generate_diffusion", {"diffusion_id": 1}, "class"),
        ("generate_diffusion", {"diffusion_id": 1, "class": "3", "sampler": "euler"}, "sampler"),
        ("generate_diffusion", {"diffusion_id": 1, "class": "3", "count": 0}, "count"),
        ("generate_diffusion", {"diffusion_id": 1, "class": "3", "steps": 2, "strength": 0.2}, "no denoising step"),
    ],
)
def test_invalid_params_answer_422_naming_the_field(api, kind: str, params: dict, field: str) -> None:
    r = api.client.post("/api/jobs", json={"kind": kind, "params": params})
    assert r.status_code == 422, r.text
    assert field in r.json()["message"]


def test_unknown_ids_and_classes_fail_clearly(api, tmp_path: Path) -> None:
    r = api.client.post("/api/jobs", json={"kind": "generate_diffusion", "params": {"diffusion_id": 999, "class": "3"}})
    assert r.status_code == 422 and r.json()["message"].startswith("params.diffusion_id: diffusion model 999")
    unknown = _queued_past_admission(api, "generate_diffusion", {"diffusion_id": 999, "class": "3"})
    assert unknown["status"] == "failed" and unknown["error"] == "diffusion 999 not found"
    assert api.client.get("/api/diffusions/999").json() == {"detail": "diffusion 999 not found"}
    assert api.client.get("/api/diffusions/999/samples/1").status_code == 404

    done = _run(api, "train_diffusion", TINY | {"source": {"path": str(_class_folders(tmp_path / "f"))}, "epochs": 1})
    diffusion_id = done["result"]["diffusion_id"]
    params = {"diffusion_id": diffusion_id, "class": "cat"}
    r = api.client.post("/api/jobs", json={"kind": "generate_diffusion", "params": params})
    assert r.status_code == 422 and r.json()["message"].startswith("params.class: 'cat' is not a class")
    wrong = _queued_past_admission(api, "generate_diffusion", params)
    assert wrong["status"] == "failed" and "'cat' is not a class of diffusion" in wrong["error"]
    assert "['bright', 'dark']" in wrong["error"]


def test_training_progress_messages_read_as_one_phrase(api, monkeypatch) -> None:
    """Each progress message names the epoch and the step apart ("epoch 1/2: step 3/9"), never glued
    ("epoch 1/2epoch 1 step 3/9") and never with two epoch numbers."""
    import re

    from backend.jobs.context import JobContext

    seen: list[str] = []
    original = JobContext.progress

    def progress(self, fraction, message=None):
        if message:
            seen.append(message)
        return original(self, fraction, message)

    monkeypatch.setattr(JobContext, "progress", progress)
    source = {"dataset_id": _digits(api), "imbalance": SPEC}
    done = _run(api, "train_diffusion", TINY | {"source": source, "epochs": 2})
    assert done["status"] == "succeeded", done["error"]
    steps = [m for m in seen if "step" in m]
    assert steps and all(re.fullmatch(r"epoch [12]/2: step \d+/\d+", m) for m in steps), steps[:5]
