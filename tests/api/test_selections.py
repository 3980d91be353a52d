"""End to end through the API: digits dataset, an imported pool (folder and zip), select, review."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.data.sources import load_digits
from backend.db.models import SelectionPick
from backend.jobs.kinds.selection import SelectParams, select_job
from tests.api.handlers import Killed, context_for, die_on_checkpoint

pytestmark = pytest.mark.slow  # seconds to minutes a test: outside the fast tier (README)


def _write_pool_folder(root: Path) -> dict[str, int]:
    """20 test-split "3"s and 20 other digits as PNGs in sub-folders, plus one corrupt file."""
    digits = load_digits()
    threes = digits.test_x[digits.test_y == 3][:20]
    others = digits.test_x[digits.test_y != 3][:20]
    for sub, images in (("threes", threes), ("others/mixed", others)):
        (root / sub).mkdir(parents=True)
        for i, img in enumerate(images):
            Image.fromarray(img).save(root / sub / f"{i:02d}.png")
    (root / "others" / "broken.png").write_bytes(b"not a png")
    return {"threes": len(threes), "others": len(others)}


def _prepare(api) -> int:
    job = api.submit("prepare_dataset", {"source": "digits"})
    done = api.run_jobs()
    assert done[-1]["status"] == "succeeded", done[-1]
    return api.job(job["id"])["result"]["dataset_id"]


@pytest.fixture
def selected(api, tmp_path: Path) -> dict:
    dataset_id = _prepare(api)
    folder = tmp_path / "made_elsewhere"
    _write_pool_folder(folder)
    job = api.submit("import_pool", {"path": str(folder), "name": "elsewhere"})
    (done,) = api.run_jobs()
    assert done["status"] == "succeeded", done
    result = done["result"]
    assert result["count"] == 40 and result["skipped_count"] == 1
    assert result["skipped"][0][0] == "others/broken.png"
    pool_id = result["pool_id"]
    params = {
        "dataset_id": dataset_id,
        "imbalance": {"minority": "3", "keep": 8, "seed": 0},
        "pool_ids": [pool_id],
        "budget": 10,
        "per_round": 5,
        "acquisition": "target_prob",
        "mc_samples": 4,
        "epochs": 4,
        "batch_size": 64,
        "lr": 0.2,
    }
    job = api.submit("select", params)
    (done,) = api.run_jobs()
    assert done["status"] == "succeeded", done.get("error")
    return {"selection_id": done["result"]["selection_id"], "pool_id": pool_id, "job": job}


def test_import_select_review_end_to_end(api, selected: dict) -> None:
    """One pipeline run (digits, folder import, select) checked step by step; the run is the slow part."""
    _check_source_paths(api, selected)
    _check_selection_detail_and_list(api, selected)
    _check_review_accept_reject_and_replace(api, selected)
    _check_export_of_the_rebalanced_dataset(api, selected)


def test_killed_selection_resumes_to_the_same_picks(api, selected: dict) -> None:
    """Killed after round 2's rows are written but before its checkpoint: the re-run resumes from round 1,
    redoes round 2 and ends with exactly the picks of the uninterrupted run, each stored once."""
    straight = api.client.get(f"/api/selections/{selected['selection_id']}").json()
    job = api.submit("select", selected["job"]["params"])
    params = SelectParams.model_validate(job["params"], context={"settings": api.settings})
    ctx = die_on_checkpoint(context_for(api, job["id"]), 2)
    with pytest.raises(Killed):
        select_job(ctx, params)

    ctx = context_for(api, job["id"])
    assert len(ctx.checkpoint["state"]["picks"]) == 5  # resumes after round 1
    result = select_job(ctx, params)
    sid = result["selection_id"]
    assert sid != selected["selection_id"] and result["picks"] == 10
    resumed = api.client.get(f"/api/selections/{sid}").json()

    def picks(sel: dict) -> list[tuple]:
        return [(p["image_id"], p["rank"], p["round"], round(p["score"], 5)) for p in sel["picks"]]

    assert picks(resumed) == picks(straight)
    assert [r["train_size"] for r in resumed["rounds"]] == [r["train_size"] for r in straight["rounds"]]
    with api.db.read_session() as s:
        rows = s.query(SelectionPick).filter(SelectionPick.selection_id == sid).all()
        assert sorted(r.image_id for r in rows) == sorted({r.image_id for r in rows}) and len(rows) == 10
    assert not (api.settings.workspace_dir / "selections" / str(sid)).exists()  # decoded pool copy removed


def _check_source_paths(api, selected: dict) -> None:
    r = api.client.get(f"/api/pools/{selected['pool_id']}/images", params={"limit": 100})
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    paths = sorted(i["source_path"] for i in items)
    assert paths[0] == "others/mixed/00.png" and paths[-1] == "threes/19.png" and len(paths) == 40


def _check_selection_detail_and_list(api, selected: dict) -> None:
    sid = selected["selection_id"]
    r = api.client.get(f"/api/selections/{sid}")
    assert r.status_code == 200, r.text
    sel = r.json()
    picks = sel["picks"]
    assert [p["rank"] for p in picks] == list(range(10))
    assert [p["round"] for p in picks] == [0] * 5 + [1] * 5
    assert all(p["review"] == "pending" and 0 <= p["minority_prob"] <= 1 for p in picks)
    assert len(sel["rounds"]) == 2 and sel["rounds"][1]["train_size"] > sel["rounds"][0]["train_size"]
    assert sel["info"]["target_class"] == "3" and sel["info"]["reserve_left"] == 5
    groups = {p["group"] for p in sel["feature_map"]["points"]}
    assert groups == {"real", "pool", "picks"}
    # The picks are mostly the real "3"s of the pool: the selection looks at the images.
    images = {i["id"]: i for i in api.client.get(f"/api/pools/{selected['pool_id']}/images?limit=100").json()["items"]}
    threes = sum(images[p["image_id"]]["source_path"].startswith("threes/") for p in picks)
    assert threes >= 7, [images[p["image_id"]]["source_path"] for p in picks]
    listing = api.client.get("/api/selections").json()
    assert listing[0]["id"] == sid and listing[0]["picks"] == 10
    assert api.client.get("/api/selections/9999").json() == {"detail": "selection 9999 not found"}


def _check_review_accept_reject_and_replace(api, selected: dict) -> None:
    sid = selected["selection_id"]
    picks = api.client.get(f"/api/selections/{sid}").json()["picks"]
    ids = [p["image_id"] for p in picks]
    r = api.client.post(
        f"/api/selections/{sid}/review", json={"accept": ids[:3], "reject": ids[3:5], "replace_rejected": True}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [old for old, _ in body["replaced"]] == ids[3:5]
    after = body["selection"]["picks"]
    assert len(after) == 12
    states = {p["image_id"]: p["review"] for p in after}
    assert all(states[i] == "accepted" for i in ids[:3]) and all(states[i] == "rejected" for i in ids[3:5])
    new = after[10:]
    assert [p["replaces"] for p in new] == ids[3:5] and all(p["image_id"] not in ids for p in new)
    assert body["selection"]["info"]["reserve_left"] == 3  # 5 reserved, 2 used
    bad = api.client.post(f"/api/selections/{sid}/review", json={"accept": [123456]})
    assert bad.status_code == 422 and "accept" in bad.text and "123456" in bad.text
    assert api.client.post("/api/selections/777/review", json={}).status_code == 404


def _check_export_of_the_rebalanced_dataset(api, selected: dict) -> None:
    sid = selected["selection_id"]
    picks = api.client.get(f"/api/selections/{sid}").json()["picks"]
    used = [
        p["image_id"] for p in picks if p["review"] == "accepted" or (p["review"] == "pending" and not p["near_copy"])
    ]
    r = api.client.get(f"/api/selections/{sid}/export")
    assert r.status_code == 200, r.text
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        meta = [json.loads(line) for line in zf.read("metadata.jsonl").decode().splitlines()]
        names = set(zf.namelist())
    synthetic = [m for m in meta if m["origin"] == "synthetic"]
    assert sorted(m["provenance"]["image_id"] for m in synthetic) == sorted(used)
    assert all(m["label"] == "3" for m in synthetic) and all(m["file"] in names for m in meta)
    assert sum(m["label"] == "3" and m["origin"] == "real" for m in meta) == 8  # keep=8 real minority images
    assert api.client.get("/api/selections/999/export").status_code == 404


def test_import_from_an_uploaded_zip(api) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(3):
            img = Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8))
            data = io.BytesIO()
            img.save(data, "PNG")
            zf.writestr(f"set/{i}.png", data.getvalue())
        zf.writestr("readme.txt", "not an image")
    r = api.client.post("/api/datasets/upload", files={"file": ("pool.zip", buf.getvalue(), "application/zip")})
    assert r.status_code == 201, r.text
    api.submit("import_pool", {"upload_id": r.json()["upload_id"], "image_size": 32})
    (done,) = api.run_jobs()
    assert done["status"] == "succeeded", done.get("error")
    assert done["result"]["count"] == 3
    items = api.client.get(f"/api/pools/{done['result']['pool_id']}/images").json()["items"]
    assert sorted(i["source_path"] for i in items) == ["set/0.png", "set/1.png", "set/2.png"]
    assert {(i["width"], i["height"]) for i in items} == {(32, 32)}


def test_bad_params_name_the_field(api, tmp_path: Path) -> None:
    r = api.client.post(
        "/api/jobs",
        json={
            "kind": "select",
            "params": {
                "dataset_id": 1,
                "pool_ids": [1],
                "imbalance": {"minority": "3", "keep": 5},
                "acquisition": "most_cat",
            },
        },
    )
    assert r.status_code == 422 and "acquisition" in r.text
    r = api.client.post("/api/jobs", json={"kind": "import_pool", "params": {"name": "x"}})
    assert r.status_code == 422 and "path or upload_id" in r.text
    r = api.client.post("/api/jobs", json={"kind": "import_pool", "params": {"path": "/etc"}})
    assert r.status_code == 422 and "path" in r.text and "--allow-dir" in r.text
    params = {"dataset_id": 99, "pool_ids": [1], "imbalance": {"minority": "3", "keep": 5}}
    r = api.client.post("/api/jobs", json={"kind": "select", "params": params})
    assert r.status_code == 422 and r.json()["message"] == "params.dataset_id: dataset 99 does not exist"
    assert api.client.get("/api/jobs", params={"kind": "select"}).json()["total"] == 0


def test_slot_analytics_weights_the_value_whose_images_were_picked(api, selected: dict) -> None:
    """A planted SD-like pool: every real "3" carries breed=tabby, the other digits siamese or persian,
    and a place slot unrelated to the digit. The selection picks threes, so tabby has the highest pick
    rate and the largest next-round weight; smoothing keeps every value above zero."""
    from backend.db.models import PoolImage

    with api.db.session() as s:
        for row in s.query(PoolImage).filter(PoolImage.pool_id == selected["pool_id"]):
            three = row.source_path.startswith("threes/")
            breed = "tabby" if three else ("siamese" if row.idx % 2 else "persian")
            row.meta = {**(row.meta or {}), "slots": {"breed": breed, "place": "sofa" if row.idx % 2 else "floor"}}
        s.commit()
    sid = selected["selection_id"]
    picks = api.client.get(f"/api/selections/{sid}").json()["picks"]
    path_of = {
        i["id"]: i["source_path"]
        for i in api.client.get(f"/api/pools/{selected['pool_id']}/images?limit=100").json()["items"]
    }
    tabby = [p["image_id"] for p in picks if path_of[p["image_id"]].startswith("threes/")]
    other = [p["image_id"] for p in picks if not path_of[p["image_id"]].startswith("threes/")]
    assert api.client.post(f"/api/selections/{sid}/review", json={"accept": tabby[:1], "reject": other[:1]}).is_success
    r = api.client.get(f"/api/selections/{sid}/slots")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["candidates_with_slots"] == 40
    breed = {row["value"]: row for row in body["slots"]["breed"]}
    assert breed["tabby"]["candidates"] == 20 and breed["tabby"]["picks"] == len(tabby)
    assert sum(row["picks"] for row in breed.values()) == len(picks)
    assert breed["tabby"]["acceptance_rate"] == 1.0
    if other:
        assert 0.0 in (breed["siamese"]["acceptance_rate"], breed["persian"]["acceptance_rate"])
    w = body["weights"]["breed"]
    assert max(w, key=w.get) == "tabby" and min(w.values()) > 0 and abs(sum(w.values()) - 1) < 1e-9
    assert w["tabby"] > 0.5, w
    assert api.client.get("/api/selections/999/slots").status_code == 404
    assert api.client.get(f"/api/selections/{sid}/slots", params={"smoothing": 0}).status_code == 422
    # The quality panel was stored with the selection and comes back in its info.
    quality = api.client.get(f"/api/selections/{sid}").json()["info"]["quality"]
    assert quality["target"] == "3" and set(quality["pool"]) >= {"3"}
    assert 0.0 <= quality["pool"]["3"]["precision"] <= 1.0 and quality["pool"]["3"]["frechet"] >= 0
    assert quality["picks"]["n_fake"] == 10  # the budget


def test_a_failed_selection_is_listed_as_failed_and_not_offered(api, selected: dict) -> None:
    """Issue 20.4: a select that fails after its row exists (budget over the pool) is marked, not usable."""
    from backend.jobs import queue
    from backend.ui.tabs.benchmark import usable_selections

    params = {"dataset_id": 1, "imbalance": {"minority": "3", "keep": 8, "seed": 0}}
    # Through the queue as an experiment stage is: POST /api/jobs now refuses the budget at submit.
    queue.submit(api.db, "select", params | {"pool_ids": [selected["pool_id"]], "budget": 500, "per_round": 50})
    (done,) = api.run_jobs()
    assert done["status"] == "failed" and done["error"].startswith("budget: 500 exceeds the 40 images"), done
    listing = {s["id"]: s for s in api.client.get("/api/selections").json()}
    failed = [s for s in listing.values() if s["job_id"] == done["id"]]
    assert len(failed) == 1 and failed[0]["status"] == "failed" and failed[0]["picks"] == 0
    assert listing[selected["selection_id"]]["status"] == "succeeded"
    offered = [i for _, i in usable_selections(list(listing.values()))]
    assert offered == [selected["selection_id"]]


# -- the closed loop: next round -------------------------------------------------------------------
TINY_SD = {"model": "tiny", "resolution": 32, "steps": 1, "batch_size": 16, "chunk_size": 64, "review_size": 32}


@pytest.fixture
def one_thread():
    # Several test processes share two cores; spinning OpenMP threads would slow tiny convs 10x.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


BREEDS = {"template": "{breed} cat on the {place}", "slots": {"breed": ["tabby", "siamese", "persian"],
                                                             "place": ["sofa", "floor"]}}  # fmt: skip


def _plant(api, pool_id: int) -> dict[int, bool]:
    """Overwrite the generated images of an SD pool: breed=tabby images become real test-split "3"s, every
    other image a real digit of another class. Returns {image id: is a planted three}."""
    from backend.db.models import PoolImage
    from backend.store import FileStore

    digits = load_digits()
    threes = iter(digits.test_x[digits.test_y == 3])
    others = iter(digits.test_x[digits.test_y != 3])
    store, planted = FileStore(api.settings.workspace_dir), {}
    with api.db.session() as s:
        for row in s.query(PoolImage).filter(PoolImage.pool_id == pool_id).order_by(PoolImage.idx):
            three = row.meta["slots"]["breed"] == "tabby"
            Image.fromarray(next(threes) if three else next(others)).save(store.path(row.file), format="PNG")
            planted[row.id] = three
    return planted


def test_next_round_draws_the_slot_value_whose_images_were_real_minority_images(api, one_thread) -> None:
    """The closed loop through the API on a planted SD pool: tiny-SD generates 60 images from a breed x place
    vocabulary, the tabby ones are replaced by real "3"s and the rest by other digits; the selection picks
    threes, so POST next_round queues a generate_sd whose saved vocabulary weights tabby most, and running
    that job gives a pool where tabby is drawn most. Unfinished selections answer 409, non-SD pools 422."""
    dataset_id = _prepare(api)
    api.submit("generate_sd", TINY_SD | {"count": 60, "seed": 1, "vocabulary": BREEDS | {"negative_prompt": "text"}})
    (gen,) = api.run_jobs()
    assert gen["status"] == "succeeded", gen.get("error")
    pool_id = gen["result"]["pool_id"]
    planted = _plant(api, pool_id)
    assert 10 <= sum(planted.values()) <= 30  # about a third of the prompts are tabby
    select = {"dataset_id": dataset_id, "imbalance": {"minority": "3", "keep": 8, "seed": 0}, "pool_ids": [pool_id],
              "budget": 16, "per_round": 8, "acquisition": "target_prob", "mc_samples": 4, "epochs": 4,
              "batch_size": 64, "lr": 0.2}  # fmt: skip
    api.submit("select", select)
    (done,) = api.run_jobs()
    assert done["status"] == "succeeded", done.get("error")
    sid = done["result"]["selection_id"]
    picks = api.client.get(f"/api/selections/{sid}").json()["picks"]
    share = sum(planted[p["image_id"]] for p in picks) / len(picks)
    assert share >= 0.5, f"the selection must find the threes ({share:.2f} of picks vs ~1/3 of the pool)"

    r = api.client.post(f"/api/selections/{sid}/next_round", json={"smoothing": 1.0, "count": 90})
    assert r.status_code == 201, r.text
    out = r.json()
    w = out["vocabulary"]["weights"]["breed"]
    assert max(w, key=w.get) == "tabby" and min(w.values()) > 0, w
    assert out["vocabulary"]["negative_prompt"] == "text" and out["negative_terms"] == []
    job = out["job"]
    assert job["kind"] == "generate_sd" and job["status"] == "queued"
    assert job["params"]["vocabulary"] == out["vocabulary_id"] and job["params"]["count"] == 90
    assert (
        job["params"]["seed"] != 1 and job["params"]["model"] == "tiny" and job["params"]["steps"] == TINY_SD["steps"]
    )
    again = api.client.post(f"/api/selections/{sid}/next_round", json={"smoothing": 1.0, "count": 90})
    assert again.status_code == 200 and again.json()["job"]["id"] == job["id"]  # a retried click

    (nxt,) = api.run_jobs()
    assert nxt["id"] == job["id"] and nxt["status"] == "succeeded", nxt.get("error")
    items = api.client.get(f"/api/pools/{nxt['result']['pool_id']}/images", params={"limit": 100}).json()["items"]
    drawn = [i["meta"]["slots"]["breed"] for i in items]
    counts = {b: drawn.count(b) for b in BREEDS["slots"]["breed"]}
    assert len(drawn) == 90 and max(counts, key=counts.get) == "tabby", counts
    assert counts["tabby"] > 40 and min(counts.values()) > 0, counts  # first round: a third each

    # Not finished: a select that failed after its row existed -> 409. Submitted through the queue as an
    # experiment stage is (POST /api/jobs would refuse the budget at once).
    from backend.jobs import queue

    queue.submit(api.db, "select", select | {"budget": 500, "per_round": 50})
    (failed,) = api.run_jobs()
    assert failed["status"] == "failed", failed
    bad = [s["id"] for s in api.client.get("/api/selections").json() if s["job_id"] == failed["id"]]
    r = api.client.post(f"/api/selections/{bad[0]}/next_round")
    assert r.status_code == 409 and "has not finished" in r.text, r.text
    assert api.client.post("/api/selections/999/next_round").status_code == 404
    assert api.client.post(f"/api/selections/{sid}/next_round", json={"smoothing": 0}).status_code == 422
    # With negative_classes, the classes the pool drifted to join the negative prompt.
    neg = api.client.post(f"/api/selections/{sid}/next_round", json={"negative_classes": 2}).json()
    assert 1 <= len(neg["negative_terms"]) <= 2 and "3" not in neg["negative_terms"]
    assert neg["vocabulary"]["negative_prompt"] == ", ".join(["text", *neg["negative_terms"]])
    # Not an SD pool -> 422 naming pool_ids.
    from backend.db.models import Pool

    with api.db.session() as s:
        s.get(Pool, pool_id).kind = "imported"
        s.commit()
    r = api.client.post(f"/api/selections/{sid}/next_round")
    assert r.status_code == 422 and "pool_ids" in r.text and "SD pools" in r.text, r.text

    # The quality panel sits beside the benchmark's per-class accuracy: in the API and in table.html.
    variants = ["imbalanced", {"name": "sd_al", "selection_id": sid}]
    bench = {"dataset_id": dataset_id, "imbalance": select["imbalance"], "seeds": [0], "model": "small", "epochs": 1,
             "batch_size": 64, "variants": variants}  # fmt: skip
    api.submit("benchmark", bench)
    ran = [j for j in api.run_jobs() if j["kind"] == "benchmark"]
    assert ran and ran[0]["status"] == "succeeded", ran
    bid = ran[0]["result"]["benchmark_id"]
    quality = api.client.get(f"/api/benchmarks/{bid}").json()["quality"]
    assert list(quality) == ["sd_al"] and quality["sd_al"]["selection_id"] == sid
    assert quality["sd_al"]["picks"]["n_fake"] == 16 and quality["sd_al"]["target"] == "3"
    assert 0 <= quality["sd_al"]["pool"]["precision"] <= 1
    table = api.client.get(f"/api/benchmarks/{bid}/table.html").text
    assert 'class="results quality"' in table and "<td>sd_al</td>" in table
    assert "Quality of the synthetic images" in api.client.get(f"/api/benchmarks/{bid}/report.html").text
