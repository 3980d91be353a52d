"""The benchmark job and /api/benchmarks end to end on the digits demo: runs, rows, exports, resume, bad input."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

from backend.data.cache import DecodedDataset
from backend.data.imbalance import apply_imbalance
from backend.db.models import BenchmarkRun, Pool, PoolImage
from backend.generation.imagefiles import encode_png
from backend.jobs.context import JobContext
from backend.jobs.kinds.benchmark import validation_for
from backend.reports.tables import read_results_csv
from backend.services.datasets import open_dataset
from backend.store import FileStore
from backend.training.trainer import chosen_epoch, copies_of, validation_split

SPEC = {"minority": "3", "keep": 5, "seed": 0}
FAST = {"model": "small", "epochs": 2, "batch_size": 64}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny batches gain nothing from intra-op threads, and they thrash on a busy shared CI host.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _dataset(api) -> int:
    api.submit("prepare_dataset", {"source": "digits"})
    (done,) = api.run_jobs()
    assert done["status"] == "succeeded", done["error"]
    return done["result"]["dataset_id"]


def _store(api) -> FileStore:
    return FileStore(api.settings.workspace_dir)


def _open(api, dataset_id: int) -> DecodedDataset:
    with api.db.session() as s:
        return open_dataset(s, _store(api), dataset_id)


def _pool_of_removed_minority(api, dataset_id: int, count: int) -> int:
    """A pool holding real '3's that the imbalance removed: stand-ins for good synthetic images."""
    ds = _open(api, dataset_id)
    removed = apply_imbalance(ds.train_y, ds.classes, SPEC).removed_idx
    return _pool_of(api, ds, removed[ds.train_y[removed] == ds.classes.index("3")][:count])


def _pool_of(api, ds: DecodedDataset, removed: np.ndarray) -> int:
    """An imported pool of the training images ``removed`` (indices into ``ds.train_x``)."""
    with api.db.session() as s:
        pool = Pool(name="oracle", kind="imported", params={}, count=len(removed), info={})
        s.add(pool)
        s.flush()
        for idx, i in enumerate(removed):
            rel = f"pools/{pool.id}/{idx}.png"
            _store(api).write_bytes(rel, encode_png(np.asarray(ds.train_x[i])))
            s.add(PoolImage(pool_id=pool.id, idx=idx, file=rel, width=32, height=32, seed=idx, meta={}))
        return pool.id


@pytest.mark.slow
def test_benchmark_job_rows_and_exports(api) -> None:
    ds_id = _dataset(api)
    pool_id = _pool_of_removed_minority(api, ds_id, 40)
    oracle = {"name": "oracle", "pool_id": pool_id, "count": 40}
    names = ["imbalanced", "oversample_aug", "full", "logit_adjusted", "oracle"]
    variants = [*names[:-1], oracle]
    params = {"dataset_id": ds_id, "imbalance": SPEC, "variants": variants, "seeds": [0, 1], **FAST}
    job = api.submit("benchmark", params)
    (done,) = api.run_jobs()
    assert done["status"] == "succeeded", done["error"]
    bid = done["result"]["benchmark_id"]
    assert done["id"] == job["id"] and done["result"]["runs"] == 10

    assert [b["id"] for b in api.client.get("/api/benchmarks").json()] == [bid]
    body = api.client.get(f"/api/benchmarks/{bid}").json()
    assert body["classes"] == [str(i) for i in range(10)] and body["minority"] == ["3"]
    assert body["runs_done"] == body["runs_total"] == 10 and body["model"] == "small"
    rows = body["rows"]
    assert [(r["variant"], r["seed"]) for r in rows] == [(v, s) for v in names for s in (0, 1)]
    n_test = sum(api.client.get(f"/api/datasets/{ds_id}").json()["test_counts"].values())
    # Every variant trains for the same number of optimiser steps (epochs are passes over the dataset's training
    # images, turned into steps), whatever its size: full and oracle hold more images than imbalanced.
    ds = _open(api, ds_id)
    steps = 2 * (len(ds.train_y) // FAST["batch_size"])
    for r in rows:
        cm = np.asarray(r["confusion"])
        assert cm.shape == (10, 10) and cm.sum() == n_test
        # The stored accuracies are the confusion matrix's: overall = trace / total, per class = recall.
        assert r["overall_acc"] == pytest.approx(100 * np.trace(cm) / cm.sum())
        assert [r["per_class"][c] for c in body["classes"]] == pytest.approx(list(100 * np.diag(cm) / cm.sum(1)))
        assert r["steps"] == steps and r["curves"][-1]["steps"] == steps and r["batch_size"] == FAST["batch_size"]
        assert r["epochs"] == len(r["curves"]) >= 2
        assert r["select_epoch"] == "last" and r["best_epoch"] == len(r["curves"])  # the default: the end
        assert r["val_acc"] == r["curves"][-1]["val_acc"]
        assert isinstance(r["under_trained"], bool) and 0 <= r["train_balanced"] <= 100
        assert r["n_synthetic"] == (40 if r["variant"] == "oracle" else 0)
    by = {(r["variant"], r["seed"]): r for r in rows}
    assert by[("imbalanced", 0)]["curves"] != by[("imbalanced", 1)]["curves"]  # seeds really differ

    # The verdict of the one synthetic variant, against the classical remedy with the best minority accuracy.
    (verdict,) = body["verdicts"]
    minority_mean = {v: np.mean([r["per_class"]["3"] for r in rows if r["variant"] == v]) for v in names}
    assert verdict["variant"] == "oracle" and verdict["seeds"] == [0, 1]
    assert verdict["baseline"] == max(("oversample_aug", "logit_adjusted"), key=minority_mean.get)
    assert verdict["verdict"] in ("helps", "hurts", "cant_tell") and len(verdict["minority_ci"]) == 2
    assert verdict["minority_delta"] == pytest.approx(
        minority_mean["oracle"] - minority_mean[verdict["baseline"]], abs=0.01
    )
    # One validation split per seed, the same for every variant (full, oversample_aug and oracle included),
    # carved from the kept real images: its minority images are among the 5 the imbalance keeps.
    kept = apply_imbalance(ds.train_y, ds.classes, SPEC).kept_idx
    for seed in (0, 1):
        splits = [by[(v, seed)]["validation"] for v in names]
        assert all(split == splits[0] for split in splits), splits
        expected = np.bincount(ds.train_y[kept[validation_split(ds.train_y[kept], 0.1, seed)]], minlength=10)
        assert splits[0]["counts"] == {c: int(n) for c, n in zip(ds.classes, expected, strict=True)}
        assert splits[0]["size"] == expected.sum() and splits[0]["counts"]["3"] <= SPEC["keep"]
    assert by[("full", 0)]["validation"]["fingerprint"] != by[("full", 1)]["validation"]["fingerprint"]
    # ... and it is left out of every variant's training data, full included.
    with api.db.session() as s:
        info = {(r.variant, r.seed): r.info for r in s.query(BenchmarkRun).filter_by(benchmark_id=bid)}
    size = by[("full", 0)]["validation"]["size"]
    assert info[("full", 0)]["num_train"] == len(ds.train_y) - size
    assert info[("imbalanced", 0)]["num_train"] == len(kept) - size
    assert info[("oracle", 0)]["num_train"] == len(kept) - size + 40
    # The epoch is chosen on exactly that split: nothing else (the test set, synthetic images) joins it.
    for (v, seed), run in info.items():
        assert run["num_val"] == by[(v, seed)]["validation"]["size"], (v, seed)

    r = api.client.get(f"/api/benchmarks/{bid}/results.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    classes, csv_rows = read_results_csv(r.text)
    assert classes == body["classes"] and len(csv_rows) == 10
    assert csv_rows[0]["overall_acc"] == pytest.approx(rows[0]["overall_acc"], abs=0.01)

    r = api.client.get(f"/api/benchmarks/{bid}/report.html")
    assert r.status_code == 200 and r.text.startswith("<!DOCTYPE html>")
    parser = HTMLParser()
    parser.feed(r.text)
    assert '<th class="minority">3</th>' in r.text and r.text.count("plotly-graph-div") >= 4
    held = by[("full", 0)]["validation"]["counts"]["3"]
    assert f"Validation split of seed 0: {size} real images, {held} of the minority class" in r.text
    # Issue 30: the report shows what the synthetic variant trained on: its pool's first 8 images, inlined.
    block = r.text.split('<div class="samples" data-variant="oracle">')[1].split("</div>")[0]
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', block)
    store = _store(api)
    assert [base64.b64decode(u) for u in uris] == [
        store.path(f"pools/{pool_id}/{i}.png").read_bytes() for i in range(8)
    ]
    assert 'data-variant="full"' not in r.text  # a classical variant: real images only

    table = api.client.get(f"/api/benchmarks/{bid}/table.html")  # what the studio shows as Table 1
    assert table.status_code == 200 and '<th class="minority">3</th>' in table.text
    table1 = table.text.split("</table>")[0]
    assert table1.count("<tr>") == 1 + len({r["variant"] for r in rows})  # header + one per variant
    assert 'class="results verdicts"' in table.text and "oracle" in table.text.split("verdicts")[1]  # then the verdict

    for name in ("per_class", "minority_vs_synthetic", "curves", "confusion"):
        fig = api.client.get(f"/api/benchmarks/{bid}/figures/{name}.json")
        assert fig.status_code == 200, fig.text
        assert {"data", "layout"} <= set(json.loads(fig.text))
    heat = api.client.get(f"/api/benchmarks/{bid}/figures/confusion.json", params={"variant": "oracle"}).json()
    assert "oracle" in heat["layout"]["title"]["text"]
    assert api.client.get(f"/api/benchmarks/{bid}/figures/pie.json").status_code == 404
    assert api.client.get(f"/api/benchmarks/{bid}/figures/confusion.json", params={"variant": "x"}).status_code == 404
    assert api.client.get("/api/benchmarks/999").json() == {"detail": "benchmark 999 not found"}
    assert api.client.get("/api/benchmarks/999/results.csv").status_code == 404


@pytest.mark.slow
def test_synthetic_images_on_the_oversampled_set_with_other_classes(api) -> None:
    """``base: oversample`` adds a variant's synthetic images to the oversampled set; ``others`` adds pools of
    other classes, each image labelled with its class (the every-class recipe of bench_diffusion.py).
    Breakage caught: base ignored, others dropped or labelled as the minority, counts not recorded."""
    ds_id = _dataset(api)
    threes = _pool_of_removed_minority(api, ds_id, 20)
    ds = _open(api, ds_id)
    zeros = _pool_of(api, ds, np.flatnonzero(ds.train_y == ds.classes.index("0"))[:15])
    plain = {"name": "plain", "pool_id": threes, "count": 20}
    every = {**plain, "name": "every", "base": "oversample", "others": [{"pool_id": zeros, "count": 15, "label": "0"}]}
    params = {"dataset_id": ds_id, "imbalance": SPEC, "variants": ["imbalanced", "oversample", plain, every]}
    job = api.submit("benchmark", {**params, **FAST, "epochs": 1})
    (done,) = api.run_jobs()
    assert done["status"] == "succeeded" and done["id"] == job["id"], done["error"]
    with api.db.session() as s:
        runs = {r.variant: r for r in s.query(BenchmarkRun).filter_by(benchmark_id=done["result"]["benchmark_id"])}
    counts = {name: run.info["variant_counts"] for name, run in runs.items()}
    assert {name: run.n_synthetic for name, run in runs.items()} == {
        "imbalanced": 0, "oversample": 0, "plain": 20, "every": 35,
    }  # fmt: skip
    assert counts["plain"] == {**counts["imbalanced"], "3": counts["imbalanced"]["3"] + 20}
    assert counts["oversample"]["3"] > counts["imbalanced"]["3"]  # the minority was oversampled
    assert counts["every"] == {
        **counts["oversample"],
        "3": counts["oversample"]["3"] + 20,
        "0": counts["oversample"]["0"] + 15,
    }

    # Submit-time checks name the field: a label that is not a class, more images than the pool holds.
    for other, field, text in (
        ({"pool_id": zeros, "count": 15, "label": "cat"}, "others.0.label", "'cat' is not a class"),
        ({"pool_id": zeros, "count": 16, "label": "0"}, "others.0.count", f"pool {zeros} holds 15"),
        ({"pool_id": 999, "count": 1, "label": "0"}, "others.0.pool_id", "pool 999 does not exist"),
    ):
        bad = {**params, "variants": [{**every, "others": [other]}]}
        r = api.client.post("/api/jobs", json={"kind": "benchmark", "params": bad})
        assert r.status_code == 422 and r.json()["message"].startswith(f"params.variants.0.{field}: "), r.text
        assert text in r.json()["message"], r.text


def test_validation_split_holds_only_kept_real_images(api) -> None:
    ds = _open(api, _dataset(api))
    imb = apply_imbalance(ds.train_y, ds.classes, SPEC)
    val = validation_for(ds, imb, 0.3, seed=0)
    assert set(val.ids) <= set(imb.kept_idx) and (val.labels == ds.classes.index("3")).sum() >= 1
    # The removed minority images (the stand-ins for synthetic ones above) never enter it, not even as copies.
    assert not copies_of(val.images, np.asarray(ds.train_x[imb.removed_idx])).any()
    assert np.array_equal(val.ids, validation_for(ds, imb, 0.3, seed=0).ids)


def test_best_balanced_keeps_the_best_validation_epoch(api) -> None:
    ds_id = _dataset(api)
    params = {"dataset_id": ds_id, "imbalance": SPEC, "variants": ["imbalanced"], **FAST, "epochs": 3}
    api.submit("benchmark", {**params, "select_epoch": "best_balanced", "lr": 0.02})
    (done,) = api.run_jobs()
    assert done["status"] == "succeeded", done["error"]
    (row,) = api.client.get(f"/api/benchmarks/{done['result']['benchmark_id']}").json()["rows"]
    assert row["select_epoch"] == "best_balanced"
    assert row["best_epoch"] == chosen_epoch(row["curves"], "best_balanced")
    assert row["val_acc"] == row["curves"][row["best_epoch"] - 1]["val_acc"]
    with api.db.session() as s:
        (run,) = s.query(BenchmarkRun).filter_by(benchmark_id=done["result"]["benchmark_id"]).all()
        assert (
            run.info["config"]["select_epoch"] == "best_balanced"
        )  # the trainer got it (it honours it: see tests/training)


@pytest.mark.slow
def test_interrupted_benchmark_resumes_without_redoing_runs(api, monkeypatch) -> None:
    ds_id = _dataset(api)
    params = {"dataset_id": ds_id, "imbalance": SPEC, "variants": ["imbalanced", "full"], **FAST}

    original = JobContext.progress
    fired = []

    def progress(self, fraction, message=None):
        # Stop the worker (as SIGTERM would) once, during run 2 after its first period was saved (periods
        # are at least one pass of the run's training set, at most half of the 2 epochs' worth of steps).
        step = re.search(r"step (\d+)/(\d+)", message or "")
        if "run 2 of 2" in (message or "") and step and int(step[1]) > int(step[2]) // 2 + 1 and not fired:
            fired.append(message)
            self._stop_event.set()
        return original(self, fraction, message)

    monkeypatch.setattr(JobContext, "progress", progress)
    api.submit("benchmark", params)
    first = api.run_jobs(max_jobs=1)
    assert first[0]["status"] == "queued" and fired  # released, to resume from its checkpoint
    (listed,) = api.client.get("/api/benchmarks").json()
    bid = listed["id"]
    before = api.client.get(f"/api/benchmarks/{bid}").json()["rows"]
    assert [r["variant"] for r in before] == ["imbalanced"]

    (resumed,) = api.run_jobs()
    assert resumed["status"] == "succeeded", resumed["error"]
    logs = api.client.get(f"/api/jobs/{resumed['id']}/logs").json()
    assert any("resuming after epoch 1" in (line.get("message") or "") for line in logs)
    after = api.client.get(f"/api/benchmarks/{bid}").json()["rows"]
    assert after[0] == before[0]  # the finished run was not trained again

    # The resumed run equals an uninterrupted one, epoch for epoch.
    monkeypatch.setattr(JobContext, "progress", original)
    api.submit("benchmark", {**params, "variants": ["full"]})
    (ref,) = api.run_jobs()
    (ref_row,) = api.client.get(f"/api/benchmarks/{ref['result']['benchmark_id']}").json()["rows"]

    def strip(row):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in row["curves"]], row["per_class"]

    assert after[1]["variant"] == "full" and strip(after[1]) == strip(ref_row)


@pytest.mark.slow
def test_precision_param_reaches_the_trainer(api) -> None:
    ds_id = _dataset(api)
    base = {"dataset_id": ds_id, "imbalance": SPEC, "variants": ["imbalanced"], **FAST, "epochs": 1}
    curves = {}
    for precision in ("fp32", "bf16"):
        api.submit("benchmark", {**base, "precision": precision})
        (done,) = api.run_jobs()
        assert done["status"] == "succeeded", done["error"]
        (row,) = api.client.get(f"/api/benchmarks/{done['result']['benchmark_id']}").json()["rows"]
        curves[precision] = [h["train_loss"] for h in row["curves"]]
    # bf16 rounding moves the training loss: the two runs really trained at different precisions.
    assert curves["fp32"] != curves["bf16"]


@pytest.mark.parametrize(
    ("params", "field", "text"),
    [
        ({"variants": ["imbalanced", "smote"]}, "variants", "unknown variant 'smote'"),
        ({"variants": [{"name": "gan", "pool_id": 1}]}, "variants", "count is required"),
        ({"variants": [{"name": "gan", "pool_id": 1, "selection_id": 2, "count": 3}]}, "variants", "exactly one"),
        ({"variants": ["full", "full"]}, "variants", "repeated"),
        ({"variants": [{"name": "s", "pool_id": 1, "count": 3, "base": "smote"}]}, "variants", ""),
        (
            {"variants": [{"name": "s", "pool_id": 1, "count": 3, "others": [{"pool_id": 2, "count": 1}]}]},
            "variants",
            "",
        ),
        ({"model": "vgg"}, "model", "Input should be 'resnet18_cifar' or 'small'"),
        ({"precision": "fp16"}, "precision", ""),
        ({"seeds": []}, "seeds", ""),
        ({"epochs": 0}, "epochs", ""),
        ({"imbalance": None}, "", "imbalance is required"),
        ({"select_epoch": "best_test"}, "select_epoch", ""),
        ({"select_epoch": "best_balanced", "val_fraction": 0}, "", "needs a validation split"),
        ({"bogus": 1}, "bogus", ""),
    ],
)
def test_bad_params_answer_422(api, params: dict, field: str, text: str) -> None:
    base = {"dataset_id": 1, "imbalance": SPEC, "variants": ["imbalanced"]}
    r = api.client.post("/api/jobs", json={"kind": "benchmark", "params": {**base, **params}})
    assert r.status_code == 422, r.text
    assert r.json()["message"].startswith(f"params.{field}" if field else "params:") and text in r.json()["message"]


def test_unknown_dataset_or_pool_is_refused_at_submit_and_fails_a_queued_job_clearly(api) -> None:
    """The API refuses both at submit (issue 20.3); queued past it, as an experiment stage is, the job
    fails with the same fact."""
    from backend.jobs import queue
    from backend.jobs.kinds.benchmark import BenchmarkParams

    def queued(params: dict) -> dict:
        queue.submit(api.db, "benchmark", BenchmarkParams.model_validate(params).model_dump(mode="json"))
        (done,) = api.run_jobs()
        return done

    params = {"dataset_id": 42, "imbalance": SPEC, "variants": ["imbalanced"]}
    r = api.client.post("/api/jobs", json={"kind": "benchmark", "params": params})
    assert r.status_code == 422 and r.json()["message"] == "params.dataset_id: dataset 42 does not exist"
    done = queued(params)
    assert done["status"] == "failed" and done["error"] == "dataset 42 not found"
    ds_id = _dataset(api)
    params = {"dataset_id": ds_id, "imbalance": SPEC, "variants": [{"name": "gan", "pool_id": 77, "count": 5}], **FAST}
    r = api.client.post("/api/jobs", json={"kind": "benchmark", "params": params})
    assert r.status_code == 422 and r.json()["message"] == "params.variants.0.pool_id: pool 77 does not exist"
    done = queued(params)
    assert done["status"] == "failed" and done["error"] == "pool 77 not found"


@pytest.mark.slow
def test_schedule_before_submit_is_the_jobs_own(api) -> None:
    """GET /api/benchmarks/schedule says what a benchmark will do before it runs: the default steps sized to
    the dataset (the same for every variant), epochs turned into steps, and the time at the measured rate."""
    from backend.training.trainer import STEPS_PER_SECOND, auto_steps

    ds_id = _dataset(api)
    n_train = len(_open(api, ds_id).train_y)
    plan = api.client.get(f"/api/benchmarks/schedule?dataset_id={ds_id}&variants=3&seeds=2").json()
    assert plan["steps"] == auto_steps(n_train, 64, "cpu") and plan["batch_size"] == 64 and plan["runs"] == 6
    assert plan["model"] == "small" and plan["seconds"] == pytest.approx(
        plan["steps"] * 6 / STEPS_PER_SECOND[("cpu", "small")]
    )
    given = api.client.get(f"/api/benchmarks/schedule?dataset_id={ds_id}&epochs=2&batch_size=32").json()
    assert given["steps"] == 2 * (n_train // 32) and given["batch_size"] == 32
    # The job takes the steps the plan said, whatever each variant's size.
    api.submit("benchmark", {"dataset_id": ds_id, "imbalance": SPEC, "variants": ["imbalanced", "full"], "epochs": 2,
                             "batch_size": 32, "model": "small"})  # fmt: skip
    (done,) = api.run_jobs()
    rows = api.client.get(f"/api/benchmarks/{done['result']['benchmark_id']}").json()["rows"]
    assert {r["steps"] for r in rows} == {given["steps"]}
    both = api.client.get(f"/api/benchmarks/schedule?dataset_id={ds_id}&epochs=2&steps=10")
    assert both.status_code == 422 and "steps" in both.text
    assert api.client.get("/api/benchmarks/schedule?dataset_id=999").status_code == 404
