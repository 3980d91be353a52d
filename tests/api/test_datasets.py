"""The datasets API end to end: prepare jobs for each source, listing, preview, export, upload, bad input."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from backend.jobs import queue
from tests.data.conftest import write_folder


def _prepare(api, params: dict) -> dict:
    job = api.submit("prepare_dataset", params)
    (done,) = api.run_jobs()
    assert done["id"] == job["id"]
    return done


def test_digits_dataset_listing_preview_export(api) -> None:
    done = _prepare(api, {"source": "digits", "name": "digits demo"})
    assert done["status"] == "succeeded", done["error"]
    ds_id = done["result"]["dataset_id"]
    r = api.client.get(f"/api/datasets/{ds_id}")
    assert r.status_code == 200
    body = r.json()
    assert body["name"] == "digits demo" and body["source"] == "digits"
    assert body["classes"] == [str(i) for i in range(10)] and body["image_size"] == [32, 32]
    assert sum(body["train_counts"].values()) + sum(body["test_counts"].values()) == 1797
    assert [d["id"] for d in api.client.get("/api/datasets").json()] == [ds_id]

    r = api.client.post(f"/api/datasets/{ds_id}/imbalance/preview", json={"minority": "3", "keep": 5, "seed": 0})
    assert r.status_code == 200
    prev = r.json()
    assert prev["after"]["3"] == 5 and prev["before"]["3"] == body["train_counts"]["3"]
    assert prev["minority"] == ["3"] and prev["removed"] == body["train_counts"]["3"] - 5

    spec = json.dumps({"minority": "3", "keep": 5})
    r = api.client.get(f"/api/datasets/{ds_id}/export", params={"variant": "oversample_aug", "imbalance": spec})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        names = zf.namelist()
        meta = [json.loads(x) for x in zf.read("metadata.jsonl").decode().splitlines()]
    assert "metadata.jsonl" in names and len(meta) == len(names) - 1
    assert sum(m["label"] == "3" for m in meta) == int(np.median(list(prev["after"].values())))


def test_the_same_images_registered_again_reuse_the_dataset(api) -> None:
    """Issue 30.13: the Dataset tab's digits, then an experiment's (no name given) listed "#1 digits", "#2 digits"."""
    first = _prepare(api, {"source": "digits", "name": "digits-demo"})["result"]
    again = _prepare(api, {"source": "digits"})["result"]  # what an experiment's dataset stage submits
    assert again["dataset_id"] == first["dataset_id"] and again["reused"] is True
    named = _prepare(api, {"source": "digits", "name": "digits again"})["result"]  # asked for its own row
    split = _prepare(api, {"source": "digits", "seed": 1})["result"]  # another split: other images
    assert len({first["dataset_id"], named["dataset_id"], split["dataset_id"]}) == 3
    listed = api.client.get("/api/datasets").json()
    assert sorted(d["name"] for d in listed) == ["digits", "digits again", "digits-demo"]


def test_bad_imbalance_specs_answer_422(api) -> None:
    ds_id = _prepare(api, {"source": "digits"})["result"]["dataset_id"]
    url = f"/api/datasets/{ds_id}/imbalance/preview"
    r = api.client.post(url, json={"minority": "cat", "keep": 5})
    assert r.status_code == 422 and "'cat' is not in the dataset" in r.json()["message"]
    assert "minority" in r.json()["message"]
    r = api.client.post(url, json={"minority": "3", "keep": 100_000})
    assert r.status_code == 422 and r.json()["message"].startswith("keep")
    r = api.client.post(url, json={"minority": "3", "remove_ratio": 1.5})
    assert r.status_code == 422 and "remove_ratio" in r.json()["message"]
    r = api.client.get(f"/api/datasets/{ds_id}/export", params={"variant": "smote"})
    assert r.status_code == 422 and "variant" in r.json()["message"]
    assert api.client.get("/api/datasets/999").json() == {"detail": "dataset 999 not found"}


def test_imagefolder_with_bad_files_reports_skips(api, tmp_path: Path) -> None:
    root = write_folder(tmp_path / "folder", {"cat": 6, "dog": 6})
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG broken")
    (root / "dog" / "readme.txt").write_text("not an image")
    done = _prepare(api, {"source": "imagefolder", "path": str(root), "test_fraction": 0.5})
    assert done["status"] == "succeeded", done["error"]
    result = done["result"]
    assert result["skipped_count"] == 2
    assert any(s.startswith("cat/broken.png") for s in result["skipped"])
    body = api.client.get(f"/api/datasets/{result['dataset_id']}").json()
    assert body["train_counts"] == {"cat": 3, "dog": 3} and body["image_size"] == [8, 8]


def test_imagefolder_one_class_fails_clearly(api, tmp_path: Path) -> None:
    root = write_folder(tmp_path / "one", {"cat": 3})
    done = _prepare(api, {"source": "imagefolder", "path": str(root)})
    assert done["status"] == "failed" and "at least 2 class folders" in done["error"]


def test_path_outside_allowed_dirs(api) -> None:
    r = api.client.post("/api/datasets", json={"source": "imagefolder", "path": "/etc"})
    assert r.status_code == 422 and "--allow-dir" in r.json()["message"] and "path" in r.json()["message"]
    # A job queued without that check (e.g. straight into the queue) fails with the same message.
    job, _ = queue.submit(api.db, "prepare_dataset", {"source": "imagefolder", "path": "/etc"})
    (done,) = api.run_jobs()
    assert done["status"] == "failed" and "--allow-dir" in done["error"]


def test_params_validation_names_fields(api) -> None:
    r = api.client.post("/api/jobs", json={"kind": "prepare_dataset", "params": {"source": "zip", "path": "../x"}})
    assert r.status_code == 422 and "path" in r.json()["message"]
    r = api.client.post("/api/jobs", json={"kind": "prepare_dataset", "params": {"source": "flickr"}})
    assert r.status_code == 422 and "source" in r.json()["message"]


def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_zip_upload_to_dataset(api) -> None:
    entries = {f"pets/{c}/{i}.png": _png(i * 10) for c in ("cat", "dog") for i in range(5)}
    entries["../escape.png"] = _png(1)
    entries["pets/cat/corrupt.png"] = b"\x89PNG nope"
    r = api.client.post("/api/datasets/upload", files={"file": ("pets.zip", _zip_bytes(entries), "application/zip")})
    assert r.status_code == 201, r.text
    upload_id = r.json()["upload_id"]
    done = _prepare(api, {"source": "zip", "path": upload_id, "name": "pets"})
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["skipped_count"] == 2
    skipped = " ".join(done["result"]["skipped"])
    assert "../escape.png" in skipped and "corrupt.png" in skipped
    body = api.client.get(f"/api/datasets/{done['result']['dataset_id']}").json()
    assert body["classes"] == ["cat", "dog"] and sum(body["train_counts"].values()) == 8
    workspace = api.settings.workspace_dir
    assert not (workspace.parent / "escape.png").exists() and not (workspace / "uploads" / "escape.png").exists()


def test_upload_rejects_non_zip_and_unknown_upload(api) -> None:
    r = api.client.post("/api/datasets/upload", files={"file": ("x.zip", b"plain text", "application/zip")})
    assert r.status_code == 422 and "not a zip" in r.json()["message"]
    r = api.client.post("/api/jobs", json={"kind": "prepare_dataset", "params": {"source": "zip", "path": "0" * 32}})
    assert r.status_code == 422 and "no upload 000" in r.json()["message"] and "params.path" in r.json()["message"]
