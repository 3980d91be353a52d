"""train_gan / generate_gan end to end through the API: folders, uploads, datasets, resume, cancel, bad input."""

from __future__ import annotations

import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load as st_load

from backend.core.checkpoint import load_state
from backend.core.hooks import Stopped
from backend.db.models import Gan
from backend.generation.gan import load_generator
from backend.generation.imagefiles import read_png_metadata
from backend.jobs.kinds.gan import TrainGanParams, train_gan
from backend.services.gans import checkpoint_path
from backend.store import FileStore
from tests.api.handlers import Killed, context_for, die_on_checkpoint

TINY = {"image_size": 32, "width": 0.125, "batch_size": 8, "seed": 1}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Several test processes share two cores; spinning OpenMP threads would slow tiny convs 10x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _image(i: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    base = rng.uniform(0, 255, 3) * (yy[..., None] / size[0]) + rng.uniform(0, 255, 3) * (xx[..., None] / size[1])
    return Image.fromarray(np.clip(base / 2, 0, 255).astype(np.uint8))


def _folder(root: Path, n: int, corrupt: bool = True) -> Path:
    """`n` images of mixed sizes and modes in nested folders, plus a corrupt file."""
    (root / "sub").mkdir(parents=True)
    for i in range(n):
        img = _image(i, (40, 48) if i % 2 else (32, 32))
        img = img.convert("L") if i % 5 == 0 else img
        img.save(root / ("sub" if i % 3 == 0 else ".") / f"{i}.png")
    if corrupt:
        (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


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


def test_train_then_generate_end_to_end(api, tmp_path: Path) -> None:
    folder = _folder(tmp_path / "cats", 20)
    done = _run(api, "train_gan", TINY | {"source": {"path": str(folder)}, "epochs": 2, "name": "cats"})
    assert done["status"] == "succeeded", done["error"]
    gan_id = done["result"]["gan_id"]

    assert [g["id"] for g in api.client.get("/api/gans").json()] == [gan_id]
    body = api.client.get(f"/api/gans/{gan_id}").json()
    assert body["name"] == "cats" and body["epochs_done"] == 2 and body["job_status"] == "succeeded"
    assert [h["epoch"] for h in body["history"]] == [1, 2]
    assert all(h["d_loss"] > 0 and h["g_loss"] > 0 for h in body["history"])
    assert body["params"]["lr"] == 5e-5 and body["params"]["betas"] == [0.5, 0.999]
    source = body["info"]["source"]
    assert source["images"] == 20 and source["skipped_count"] == 1 and "broken.png" in source["skipped"][0]
    assert body["samples"] == [f"/api/gans/{gan_id}/samples/1", f"/api/gans/{gan_id}/samples/2"]

    grid = api.client.get(body["samples"][1])
    assert grid.status_code == 200 and grid.headers["content-type"] == "image/png"
    assert _png(grid.content).shape == (8 * 34 + 2, 8 * 34 + 2, 3)
    assert api.client.get(f"/api/gans/{gan_id}/samples/3").json() == {"detail": f"gan {gan_id} epoch 3 not found"}

    # The newest epoch can resume training; older ones were pruned to the generator.
    store = FileStore(api.settings.workspace_dir)
    newest = load_state(store.path(checkpoint_path(gan_id, 2)).read_bytes(), "dcgan")
    older = load_state(store.path(checkpoint_path(gan_id, 1)).read_bytes(), "dcgan")
    assert "opt_g" in newest and "discriminator" in newest
    assert set(older) == {"config", "epoch", "generator", "history"}
    assert load_generator(store.path(checkpoint_path(gan_id, 1)).read_bytes(), "cpu").epoch == 1

    gen = _run(api, "generate_gan", {"gan_id": gan_id, "count": 5, "seed": 3, "output_size": 16, "chunk_size": 2})
    assert gen["status"] == "succeeded", gen["error"]
    assert gen["result"]["epoch"] == 2
    pool_id = gen["result"]["pool_id"]
    pool = api.client.get(f"/api/pools/{pool_id}").json()
    assert pool["kind"] == "gan" and pool["count"] == 5
    items = api.client.get(f"/api/pools/{pool_id}/images").json()["items"]
    assert [it["idx"] for it in items] == list(range(5))
    assert all(it["seed"] == 3 and it["meta"]["gan_id"] == gan_id and it["meta"]["epoch"] == 2 for it in items)
    first = api.client.get(items[0]["url"]).content
    assert _png(first).shape == (16, 16, 3)
    assert read_png_metadata(first)[1]["generator"] == "dcgan"
    review = Image.open(io.BytesIO(api.client.get(items[0]["review_url"]).content))
    assert review.size == (32, 32)  # the generator's own resolution

    # Same gan, epoch and seed -> the same images; another epoch -> different ones.
    again = _run(api, "generate_gan", {"gan_id": gan_id, "count": 2, "seed": 3, "output_size": 16})
    again_items = api.client.get(f"/api/pools/{again['result']['pool_id']}/images").json()["items"]
    assert np.array_equal(_png(api.client.get(again_items[0]["url"]).content), _png(first))
    older_pool = _run(api, "generate_gan", {"gan_id": gan_id, "epoch": 1, "count": 1, "seed": 3, "output_size": 16})
    old_items = api.client.get(f"/api/pools/{older_pool['result']['pool_id']}/images").json()["items"]
    assert old_items[0]["meta"]["epoch"] == 1
    assert not np.array_equal(_png(api.client.get(old_items[0]["url"]).content), _png(first))


def _gan(api, gan_id: int) -> Gan:
    with api.db.read_session() as s:
        row = s.get(Gan, gan_id)
        s.expunge(row)
        return row


def test_killed_training_resumes_to_the_same_result(api, tmp_path: Path) -> None:
    params = TINY | {"source": {"path": str(_folder(tmp_path / "imgs", 16, corrupt=False))}, "epochs": 3}
    straight = _run(api, "train_gan", params)
    assert straight["status"] == "succeeded", straight["error"]
    reference = _gan(api, straight["result"]["gan_id"])

    job = api.submit("train_gan", params)
    parsed = TrainGanParams.model_validate(job["params"])
    # Attempt 1 dies after epoch 2's files and row are written, before its checkpoint.
    ctx = die_on_checkpoint(context_for(api, job["id"]), 2)
    with pytest.raises(Killed):
        train_gan(ctx, parsed)

    ctx = context_for(api, job["id"])
    assert ctx.checkpoint["epoch"] == 1  # resumes after epoch 1 and redoes epoch 2
    result = train_gan(ctx, parsed)
    resumed = _gan(api, result["gan_id"])
    assert resumed.id != reference.id and resumed.epochs_done == 3
    assert resumed.history == reference.history  # same losses, epoch by epoch
    store = FileStore(api.settings.workspace_dir)
    a = st_load(store.path(checkpoint_path(reference.id, 3)).read_bytes())
    b = st_load(store.path(checkpoint_path(resumed.id, 3)).read_bytes())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cancel_keeps_the_last_finished_epoch(api, tmp_path: Path) -> None:
    job = api.submit("train_gan", TINY | {"source": {"path": str(_folder(tmp_path / "x", 16))}, "epochs": 5})
    stop = threading.Event()
    ctx = context_for(api, job["id"], stop)
    saved = ctx.save_checkpoint

    def checkpoint_then_cancel(state: dict) -> None:
        saved(state)
        stop.set()  # the cancel arrives during epoch 2

    ctx.save_checkpoint = checkpoint_then_cancel
    with pytest.raises(Stopped):
        train_gan(ctx, TrainGanParams.model_validate(job["params"]))
    gan_id = ctx.checkpoint["gan_id"]
    assert api.client.post(f"/api/jobs/{job['id']}/cancel").status_code == 200  # the handler ran outside a worker
    body = api.client.get(f"/api/gans/{gan_id}").json()
    assert body["epochs_done"] == 1 and len(body["history"]) == 1
    assert api.client.get(f"/api/gans/{gan_id}/samples/1").status_code == 200
    gen = _run(api, "generate_gan", {"gan_id": gan_id, "count": 2})
    assert gen["status"] == "succeeded" and gen["result"]["epoch"] == 1


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _png_bytes(i: int) -> bytes:
    buf = io.BytesIO()
    _image(i, (24, 24)).save(buf, format="PNG")
    return buf.getvalue()


def test_upload_and_dataset_sources(api) -> None:
    entries = {f"faces/{i}.png": _png_bytes(i) for i in range(17)} | {"faces/bad.png": b"nope"}
    r = api.client.post("/api/datasets/upload", files={"file": ("faces.zip", _zip(entries), "application/zip")})
    assert r.status_code == 201, r.text
    done = _run(api, "train_gan", TINY | {"source": {"upload_id": r.json()["upload_id"]}, "epochs": 1})
    assert done["status"] == "succeeded", done["error"]
    source = api.client.get(f"/api/gans/{done['result']['gan_id']}").json()["info"]["source"]
    assert source["kind"] == "upload" and source["images"] == 17 and source["skipped_count"] == 1

    prepared = _run(api, "prepare_dataset", {"source": "digits"})
    assert prepared["status"] == "succeeded", prepared["error"]
    dataset_id = prepared["result"]["dataset_id"]
    spec = {"minority": "3", "keep": 20, "seed": 0}
    done = _run(api, "train_gan", TINY | {"source": {"dataset_id": dataset_id, "imbalance": spec}, "epochs": 1})
    assert done["status"] == "succeeded", done["error"]
    gan_id = done["result"]["gan_id"]
    source = api.client.get(f"/api/gans/{gan_id}").json()["info"]["source"]
    assert source["classes"] == ["3"] and source["images"] == 20 and source["dataset_image_size"] == 32
    gen = _run(api, "generate_gan", {"gan_id": gan_id, "count": 1})
    item = api.client.get(f"/api/pools/{gen['result']['pool_id']}/images").json()["items"][0]
    assert (item["width"], item["height"]) == (32, 32)  # the dataset's own size by default

    too_few = _run(api, "train_gan", TINY | {"source": {"dataset_id": dataset_id, "imbalance": spec | {"keep": 10}}})
    assert too_few["status"] == "failed" and "at least 16" in too_few["error"]
    # A minority the dataset does not have is refused at submit (services.admission), naming the field.
    unknown = api.client.post(
        "/api/jobs",
        json={
            "kind": "train_gan",
            "params": TINY | {"source": {"dataset_id": dataset_id, "imbalance": {"minority": "cat", "keep": 5}}},
        },
    )
    assert unknown.status_code == 422 and "'cat'" in unknown.json()["message"]
    assert unknown.json()["message"].startswith("params.source.imbalance.minority")


@pytest.mark.parametrize(
    ("kind", "params", "field"),
    [
        ("train_gan", {"source": {"path": "."}, "image_size": 48}, "image_size"),
        ("train_gan", {"source": {"path": "."}, "width": 0}, "width"),
        ("train_gan", {"source": {"path": "."}, "betas": [0.5, 1.0]}, "betas"),
        ("train_gan", {"source": {"path": "."}, "epochs": 0}, "epochs"),
        ("train_gan", {"source": {"path": "."}, "colour": 1}, "colour"),
        ("train_gan", {"source": {"upload_id": "../x"}}, "upload_id"),
        ("train_gan", {}, "source"),
        ("train_gan", {"source": {"folder": "x"}}, "source must be"),
        ("train_gan", {"source": {"dataset_id": 1}}, "imbalance"),
        ("generate_gan", {"gan_id": 1, "count": 0}, "count"),
        ("generate_gan", {"gan_id": 1, "output_size": 4}, "output_size"),
    ],
)
def test_invalid_params_answer_422_naming_the_field(api, kind: str, params: dict, field: str) -> None:
    r = api.client.post("/api/jobs", json={"kind": kind, "params": params})
    assert r.status_code == 422, r.text
    assert field in r.json()["message"]


def test_bad_sources_and_unknown_ids_fail_clearly(api, tmp_path: Path) -> None:
    few = _run(api, "train_gan", TINY | {"source": {"path": str(_folder(tmp_path / "few", 10))}})
    assert few["status"] == "failed" and "10 images" in few["error"] and "at least 16" in few["error"]
    outside = api.client.post("/api/jobs", json={"kind": "train_gan", "params": {"source": {"path": "/etc"}}})
    assert outside.status_code == 422 and "source.path" in outside.json()["message"]
    assert "--allow-dir" in outside.json()["message"] and "upload_id" not in outside.json()["message"]
    # A folder or upload that is not there is refused at submit (issue 29), and again by the worker.
    nope = TINY | {"source": {"path": str(tmp_path / "nope")}}
    missing = api.client.post("/api/jobs", json={"kind": "train_gan", "params": nope})
    assert missing.status_code == 422 and "does not exist" in missing.json()["message"]
    assert "source.path" in missing.json()["message"]
    late = _queued_past_admission(api, "train_gan", nope)
    assert late["status"] == "failed" and "does not exist" in late["error"]
    no_upload = api.client.post(
        "/api/jobs", json={"kind": "train_gan", "params": TINY | {"source": {"upload_id": "0" * 32}}}
    )
    assert no_upload.status_code == 422 and "no upload 000" in no_upload.json()["message"]

    refused = api.client.post("/api/jobs", json={"kind": "generate_gan", "params": {"gan_id": 999}})
    assert refused.status_code == 422 and refused.json()["message"] == "params.gan_id: GAN 999 does not exist"
    unknown = _queued_past_admission(api, "generate_gan", {"gan_id": 999})
    assert unknown["status"] == "failed" and unknown["error"] == "gan 999 not found"
    assert api.client.get("/api/gans/999").json() == {"detail": "gan 999 not found"}
    assert api.client.get("/api/gans/999/samples/1").status_code == 404

    trained = _run(api, "train_gan", TINY | {"source": {"path": str(_folder(tmp_path / "ok", 16))}, "epochs": 1})
    gan_id = trained["result"]["gan_id"]
    refused = api.client.post("/api/jobs", json={"kind": "generate_gan", "params": {"gan_id": gan_id, "epoch": 5}})
    assert refused.status_code == 422 and refused.json()["message"].startswith("params.epoch: ")
    no_epoch = _queued_past_admission(api, "generate_gan", {"gan_id": gan_id, "epoch": 5})
    assert no_epoch["status"] == "failed" and f"gan {gan_id} has no epoch 5" in no_epoch["error"]
