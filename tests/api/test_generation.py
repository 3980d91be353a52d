"""generate_sd end to end with the tiny model, resume after crashes, vocabularies and pools APIs."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import func, select

from backend.core.hooks import Stopped
from backend.db.models import Dataset, Pool, PoolImage
from backend.generation.imagefiles import read_png_metadata
from backend.jobs.kinds.generation import GenerateSDParams, generate_sd
from backend.store import FileStore
from tests.api.handlers import Killed, context_for, die_on_checkpoint

TINY = {"model": "tiny", "resolution": 64, "steps": 3, "batch_size": 2, "chunk_size": 3, "review_size": 48}
CAT = {"template": "{color} cat on a {thing}", "slots": {"color": ["red", "black"], "thing": ["bed", "sofa"]}}


@pytest.fixture(autouse=True)
def one_thread():
    # Several test processes share two cores; spinning OpenMP threads would slow tiny convs 10x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_generate_sd_job_end_to_end(api) -> None:
    job = api.submit("generate_sd", TINY | {"count": 5, "seed": 3, "vocabulary": CAT | {"negative_prompt": "dog"}})
    [done] = api.run_jobs()
    assert done["status"] == "succeeded", done["error"]
    pool_id = done["result"]["pool_id"]
    assert done["id"] == job["id"]

    pool = api.client.get(f"/api/pools/{pool_id}").json()
    assert pool["count"] == 5 and pool["kind"] == "sd" and pool["job_id"] == job["id"]
    assert any(p["id"] == pool_id for p in api.client.get("/api/pools").json())

    page = api.client.get(f"/api/pools/{pool_id}/images", params={"offset": 1, "limit": 3}).json()
    assert page["total"] == 5 and [item["idx"] for item in page["items"]] == [1, 2, 3]
    first = api.client.get(f"/api/pools/{pool_id}/images").json()["items"]
    assert len({item["prompt"] for item in first[:4]}) == 4  # 4 distinct prompts before any repeat
    assert len({item["seed"] for item in first}) == 5
    item = first[0]
    assert item["negative_prompt"] == "dog" and item["meta"]["scheduler"] == "dpmpp_2m"

    png = api.client.get(item["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png_pixels(png.content).shape == (32, 32, 3)  # default output_size
    text, meta = read_png_metadata(png.content)
    assert text.startswith(item["prompt"] + "\nNegative prompt: dog\nSteps: 3, Sampler: DPM++ 2M, CFG scale: 7.5")
    assert f"Seed: {item['seed']}, Size: 64x64, Model: tiny" in text
    assert meta["slots"] == item["meta"]["slots"]

    review = api.client.get(item["review_url"])
    assert review.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(review.content)).size == (48, 48)
    assert api.client.get("/api/images/999999").status_code == 404
    assert api.client.get("/api/pools/999999").json() == {"detail": "pool 999999 not found"}


@pytest.mark.parametrize(
    "params, field",
    [
        ({"vocabulary": {"template": "{a} {b}", "slots": {"a": ["x"]}}}, "slot 'b'"),
        ({"scheduler": "nope"}, "scheduler"),
        ({"mode": "img2img"}, "dataset_id"),
        ({"resolution": 100}, "resolution"),
        ({"count": 0}, "count"),
        ({"colour": 1}, "colour"),
    ],
)
def test_invalid_params_answer_422_naming_the_field(api, params: dict, field: str) -> None:
    r = api.client.post("/api/jobs", json={"kind": "generate_sd", "params": TINY | params})
    assert r.status_code == 422
    assert field in r.json()["message"]


def test_unloadable_model_fails_the_job_with_a_hint(api) -> None:
    api.submit("generate_sd", TINY | {"model": "nobody-xyz/not-a-model", "count": 1})
    [done] = api.run_jobs()
    assert done["status"] == "failed"
    assert "nobody-xyz/not-a-model" in done["error"] and "--local-dir" in done["error"]


def _pool_rows(api, pool_id: int) -> list[PoolImage]:
    with api.db.read_session() as s:
        return list(s.scalars(select(PoolImage).where(PoolImage.pool_id == pool_id).order_by(PoolImage.idx)))


def test_crashes_then_resume_give_exactly_count_images(api, monkeypatch) -> None:
    params = TINY | {"count": 8, "seed": 5, "vocabulary": CAT}
    reference_job = api.submit("generate_sd", params)
    [ref] = api.run_jobs()
    reference = {row.idx: row for row in _pool_rows(api, ref["result"]["pool_id"])}

    job = api.submit("generate_sd", params | {"name": "resumed"})
    assert job["id"] != reference_job["id"]
    parsed = GenerateSDParams.model_validate(job["params"])

    # Attempt 1 dies right after chunk 1 (images 0-2) is committed, before its checkpoint.
    ctx = die_on_checkpoint(context_for(api, job["id"]), 1)
    with pytest.raises(Killed):
        generate_sd(ctx, parsed)
    with api.db.read_session() as s:
        pool_id = s.scalars(select(Pool.id).where(Pool.job_id == job["id"])).one()
    assert [row.idx for row in _pool_rows(api, pool_id)] == [0, 1, 2]

    # Attempt 2 dies inside chunk 2 after both its batches' rows are written (rows go in per batch, so the
    # pool and its thumbnails grow while a job runs) but before any checkpoint.
    ctx = context_for(api, job["id"])
    calls = {"n": 0}

    def die_on_second_batch(where: str = "") -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed()

    monkeypatch.setattr(ctx, "stop_point", die_on_second_batch)
    with pytest.raises(Killed):
        generate_sd(ctx, parsed)
    assert [row.idx for row in _pool_rows(api, pool_id)] == [0, 1, 2, 3, 4, 5]
    assert "done" not in context_for(api, job["id"]).checkpoint  # never checkpointed: the rows say what exists

    # Attempt 3 skips the stored images and runs to the end.
    result = generate_sd(context_for(api, job["id"]), parsed)
    assert result["pool_id"] == pool_id
    rows = _pool_rows(api, pool_id)
    assert [row.idx for row in rows] == list(range(8))
    with api.db.read_session() as s:
        assert s.scalar(select(func.count()).where(PoolImage.pool_id == pool_id)) == 8
    store = FileStore(api.settings.workspace_dir)
    for row in rows:
        ref_row = reference[row.idx]
        assert (row.prompt, row.seed) == (ref_row.prompt, ref_row.seed)
        same = png_pixels(store.path(row.file).read_bytes()), png_pixels(store.path(ref_row.file).read_bytes())
        assert np.abs(same[0].astype(int) - same[1].astype(int)).max() <= 1
    assert api.client.get(f"/api/pools/{pool_id}").json()["count"] == 8


def test_cancel_keeps_the_images_made(api) -> None:
    job = api.submit("generate_sd", TINY | {"count": 9, "vocabulary": CAT})
    parsed = GenerateSDParams.model_validate(job["params"])
    stop = threading.Event()
    ctx = context_for(api, job["id"], stop)
    saved = ctx.save_checkpoint

    def checkpoint_then_cancel(state: dict) -> None:
        saved(state)
        stop.set()  # cancel arrives during chunk 2

    ctx.save_checkpoint = checkpoint_then_cancel
    with pytest.raises(Stopped):
        generate_sd(ctx, parsed)
    pool_id = ctx.checkpoint["pool_id"]
    assert [row.idx for row in _pool_rows(api, pool_id)] == [0, 1, 2]


def test_img2img_from_kept_minority_images(api, tmp_path: Path) -> None:
    from backend.data.cache import build_cache
    from backend.data.sources import ArraySource

    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    train_y = np.repeat(np.arange(2), 10)
    source = ArraySource("toy", ["cat", "dog"], train_x, train_y, train_x[:4], train_y[:4])
    ds = build_cache(source, api.settings.workspace_dir / "cache")
    with api.db.session() as s:
        row = Dataset(name="toy", source="array", cache_key=ds.key, classes=ds.classes)
        s.add(row)
        s.flush()
        dataset_id = row.id
    spec = {"minority": "cat", "keep": 2, "seed": 0}
    api.submit(
        "generate_sd",
        TINY | {"count": 3, "mode": "img2img", "strength": 0.5, "dataset_id": dataset_id, "imbalance": spec},
    )
    [done] = api.run_jobs()
    assert done["status"] == "succeeded", done["error"]
    items = api.client.get(f"/api/pools/{done['result']['pool_id']}/images").json()["items"]
    assert [item["width"] for item in items] == [16, 16, 16]  # output_size defaults to the dataset's
    kept = [item["meta"]["init_image_index"] for item in items]
    assert kept[0] == kept[2] != kept[1]  # cycles through the 2 kept cat images
    assert all(train_y[k] == 0 for k in kept)
    assert "cat" in items[0]["prompt"]  # built-in vocabulary of the minority class


def test_vocabulary_crud_and_preview(api) -> None:
    c = api.client
    body = {"name": "cats", **CAT, "negative_prompt": "blurry"}
    created = c.post("/api/vocabularies", json=body | {"slots": CAT["slots"] | {"color": ["red", "red", "black"]}})
    assert created.status_code == 201
    vocab = created.json()
    assert vocab["distinct_count"] == 4 and vocab["slots"]["color"] == ["red", "black"]
    assert c.post("/api/vocabularies", json=body).status_code == 409
    assert [v["name"] for v in c.get("/api/vocabularies").json()] == ["cats"]

    updated = c.put(f"/api/vocabularies/{vocab['id']}", json=body | {"slots": CAT["slots"] | {"thing": ["bed"]}})
    assert updated.json()["distinct_count"] == 2

    preview = c.post("/api/vocabularies/preview", json={"vocabulary_id": vocab["id"], "n": 5}).json()
    assert preview["distinct_count"] == 2 and sorted(preview["prompts"]) == ["black cat on a bed", "red cat on a bed"]

    ref = c.get("/api/vocabularies/defaults/cat").json()
    preview = c.post("/api/vocabularies/preview", json={"vocabulary": ref, "n": 3}).json()
    assert preview["distinct_count"] == 92_650 and len(preview["prompts"]) == 3

    bad = c.post("/api/vocabularies", json={"name": "x", "template": "{a} {b}", "slots": {"a": ["1"], "c": ["2"]}})
    assert bad.status_code == 422 and "slot 'b'" in bad.json()["message"]
    bad = c.post("/api/vocabularies/preview", json={"vocabulary": {"template": "no slots", "slots": {}}})
    assert bad.status_code == 422 and "no slots" in bad.json()["message"]

    # A job can use the saved vocabulary by id.
    api.submit("generate_sd", TINY | {"count": 2, "vocabulary": vocab["id"]})
    [done] = api.run_jobs()
    items = c.get(f"/api/pools/{done['result']['pool_id']}/images").json()["items"]
    assert {item["prompt"] for item in items} == {"black cat on a bed", "red cat on a bed"}

    assert c.delete(f"/api/vocabularies/{vocab['id']}").status_code == 204
    assert c.get(f"/api/vocabularies/{vocab['id']}").status_code == 404


def test_progress_rate_and_images_show_while_the_job_runs(api) -> None:
    """Issue 20: the card must not sit at 0% until the end; images appear as they are written."""
    job = api.submit("generate_sd", TINY | {"count": 6, "chunk_size": 64, "vocabulary": CAT})
    ctx = context_for(api, job["id"])
    seen: list[tuple[float, str, int]] = []
    report = ctx.progress

    def recording(fraction: float, message: str | None = None) -> None:
        report(fraction, message)
        with api.db.read_session() as s:
            stored = s.scalar(select(func.count()).select_from(PoolImage)) or 0
        seen.append((fraction, message or "", stored))

    ctx.progress = recording
    generate_sd(ctx, GenerateSDParams.model_validate(job["params"]))
    during = [(f, m, n) for f, m, n in seen if 0 < f < 1 and "step" not in m]  # per batch (steps: next test)
    # Three batches of 2 inside one 64-image chunk: two reports before the end, each with its images stored.
    assert [(round(f, 3), n) for f, _, n in during] == [(0.333, 2), (0.667, 4)], seen
    assert all("images/s" in m for _, m, _ in during)
    logs = [text for _, text in ctx.take_pending()[1]]
    assert any(t.startswith("loading tiny") for t in logs) and any(t.startswith("6/6 images in pool") for t in logs)


def test_one_batch_moves_at_every_denoising_step_and_draws_a_preview(api) -> None:
    """Issue 30.1: 8 images in one batch went from 0 % straight to done, with no message and no picture."""
    job = api.submit("generate_sd", TINY | {"count": 8, "batch_size": 8, "steps": 20, "chunk_size": 64,
                                            "vocabulary": CAT})  # fmt: skip
    assert api.client.get(f"/api/jobs/{job['id']}/preview").status_code == 404  # nothing drawn yet
    ctx = context_for(api, job["id"])
    ctx.PREVIEW_EVERY_S = 0.0  # keep every picture, to compare the first and the last
    seen: list[tuple[float, str]] = []
    pictures: list[bytes] = []
    report, draw = ctx.progress, ctx.preview

    def recording(fraction: float, message: str | None = None) -> None:
        report(fraction, message)
        seen.append((fraction, message or ""))

    def keeping(image: np.ndarray) -> None:
        draw(image)
        pictures.append(api.client.get(f"/api/jobs/{job['id']}/preview").content)

    ctx.progress, ctx.preview = recording, keeping
    generate_sd(ctx, GenerateSDParams.model_validate(job["params"]))
    steps = [(f, m) for f, m in seen if "step" in m]
    assert [m.split(" · ")[0] for _, m in steps] == [f"images 1–8 of 8: step {k}/20" for k in range(1, 21)]
    assert [round(f, 3) for f, _ in steps] == [round(k / 20, 3) for k in range(1, 21)]
    assert all(m.endswith("images/s") for _, m in steps[1:])  # the rate from the second step on
    assert len(pictures) == 20 and pictures[0] != pictures[-1]
    r = api.client.get(f"/api/jobs/{job['id']}/preview")
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(r.content)).size == (8 * 64, 64)  # the batch's 8 images side by side
    assert api.client.get("/api/jobs/999/preview").status_code == 404
