"""Long tails through the API (issue 31): the fill plan before anything runs, its refusals, and benchmark rows
that report balanced and shot-group accuracy with groups taken from the imbalanced training counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from backend.data.imbalance import kept_counts
from backend.data.longtail import shot_groups
from tests.conftest import ApiHarness

LT100 = {"profile": "longtail", "imbalance_factor": 100, "seed": 0}


@pytest.fixture
def digits(api: ApiHarness) -> dict[str, Any]:
    job = api.submit("prepare_dataset", {"source": "digits"})
    api.run_jobs()
    dataset_id = api.job(job["id"])["result"]["dataset_id"]
    return api.client.get(f"/api/datasets/{dataset_id}").json()


def test_fill_plan_before_anything_runs(api: ApiHarness, digits: dict[str, Any]) -> None:
    r = api.client.post(f"/api/datasets/{digits['id']}/fill_plan", json={"imbalance": LT100, "fill": "to_head"})
    assert r.status_code == 200, r.text
    plan = r.json()
    kept = kept_counts(LT100, digits["train_counts"], digits["classes"])
    assert plan["counts"] == kept
    assert plan["need"] == {c: plan["target"] - n for c, n in kept.items()} and plan["target"] == max(kept.values())
    assert len(plan["groups"]["few"]) == 6 and kept[digits["classes"][-1]] == 1
    assert api.client.get("/api/jobs").json()["total"] == 1  # only the dataset's job: a plan queues nothing


@pytest.mark.parametrize(
    ("fill", "loc", "words"),
    [
        ({"per_class": 10}, ["body", "fill", "per_class"], "below the"),
        ({"per_class": 0}, ["body", "fill", "PerClass", "per_class"], "greater than or equal to 1"),
        ({"per_class": 100_001}, ["body", "fill", "PerClass", "per_class"], "less than or equal to 100000"),
    ],
)
def test_bad_fill_targets_are_422_naming_the_field(
    api: ApiHarness, digits: dict[str, Any], fill: Any, loc: list[str], words: str
) -> None:
    r = api.client.post(f"/api/datasets/{digits['id']}/fill_plan", json={"imbalance": LT100, "fill": fill})
    assert r.status_code == 422, r.text
    assert loc in [e["loc"] for e in r.json()["detail"]], r.json()
    assert words in r.json()["message"]


def test_a_long_tail_over_one_class_is_422_naming_the_field(api: ApiHarness, tmp_path: Path) -> None:
    """A one-class folder cannot be registered at all, so the experiment that would fill its long tail is
    refused at launch naming dataset.path (the fill plan and the profile refuse one class too: test_longtail)."""
    root = tmp_path / "one"
    for split in ("train", "test"):
        (root / split / "only").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(root / split / "only" / f"{i}.png")
    config = {
        "dataset": {"source": "imagefolder", "path": str(root)},
        "imbalance": LT100,
        "sd": {"enabled": False},
        "gan": {"enabled": False},
        "diffusion": {"enabled": True, "fill": "to_head"},
    }
    r = api.client.post("/api/experiments", json=config)
    assert r.status_code == 422, r.text
    assert r.json()["message"].startswith("dataset.path") and "at least 2 class folders" in r.json()["message"]
    assert api.client.get("/api/jobs").json()["total"] == 0


def test_benchmark_rows_report_balanced_and_group_accuracy_on_training_counts(
    api: ApiHarness, digits: dict[str, Any]
) -> None:
    params = {
        "dataset_id": digits["id"],
        "imbalance": LT100,
        "variants": ["imbalanced", "logit_adjusted"],
        "model": "small",
        "steps": 40,
        "seeds": [0],
    }
    api.submit("benchmark", params)
    [done] = api.run_jobs()
    assert done["status"] == "succeeded", done["error"]
    bench = api.client.get(f"/api/benchmarks/{done['result']['benchmark_id']}").json()
    kept = kept_counts(LT100, digits["train_counts"], digits["classes"])
    assert bench["train_counts"] == kept  # the imbalanced training counts, not the test counts (all ~36)
    assert bench["groups"] == shot_groups(kept) and set(bench["groups"]) == {"many", "medium", "few"}
    for row in bench["rows"]:
        per_class = row["per_class"]
        assert row["balanced_acc"] == pytest.approx(np.mean(list(per_class.values())), abs=0.01)
        for group, classes in bench["groups"].items():
            assert row["groups"][group] == pytest.approx(np.mean([per_class[c] for c in classes]), abs=0.01)
    table = api.client.get(f"/api/benchmarks/{bench['id']}/table.html").text
    assert "few-shot (6)" in table and "balanced" in table


def _pool_of_digit(api: ApiHarness, root: Path, digit: int, n: int) -> int:
    """A pool of ``n`` test-split images of ``digit`` (stand-ins for one class's samples), imported from a folder."""
    from backend.data.sources import load_digits

    data = load_digits()
    folder = root / f"samples_{digit}"
    folder.mkdir(parents=True)
    for i, img in enumerate(data.test_x[data.test_y == digit][:n]):
        Image.fromarray(img).save(folder / f"{i:02d}.png")
    api.submit("import_pool", {"path": str(folder), "name": f"samples of {digit}"})
    (done,) = api.run_jobs()
    assert done["status"] == "succeeded", done["error"]
    return done["result"]["pool_id"]


def test_filtered_fill_adds_each_class_s_picks_under_its_own_label(
    api: ApiHarness, digits: dict[str, Any], tmp_path: Path
) -> None:
    """The filtered fill (issue 31.2) end to end below the experiment: a select job per tail class
    (``target_class``) picks from that class's pool, with its own quality panel, and a benchmark variant made of
    the selections adds each one's picks under its class: the per-class training counts say where they went."""
    budgets = {"9": 4, "8": 3}
    selections = {}
    for cls, budget in budgets.items():
        pool_id = _pool_of_digit(api, tmp_path, int(cls), 3 * budget)
        params = {"dataset_id": digits["id"], "imbalance": LT100, "pool_ids": [pool_id], "target_class": cls}
        params |= {"budget": budget, "per_round": budget, "mc_samples": 2, "epochs": 1}
        api.submit("select", params)
        (done,) = api.run_jobs()
        assert done["status"] == "succeeded", done["error"]
        selections[cls] = done["result"]["selection_id"]
        sel = api.client.get(f"/api/selections/{selections[cls]}").json()
        quality = sel["info"]["quality"]  # this selection's panel: its picks against its class's real images
        assert sel["info"]["target_class"] == quality["target"] == cls
        # the k-NN radii need 2 real images of the class: digit 9 keeps 1 (no panel), digit 8 keeps 2
        assert (quality["picks"] is None) == (cls == "9")
    variant = {"name": "diffusion_fill_al", "selection_id": selections["9"], "label": "9"}
    variant["others"] = [{"selection_id": selections["8"], "label": "8"}]
    params = {"dataset_id": digits["id"], "imbalance": LT100, "variants": ["imbalanced", variant]}
    api.submit("benchmark", params | {"model": "small", "steps": 10, "seeds": [0]})
    [done] = api.run_jobs()
    assert done["status"] == "succeeded", done["error"]
    rows = {r["variant"]: r for r in api.client.get(f"/api/benchmarks/{done['result']['benchmark_id']}").json()["rows"]}
    before, after = rows["imbalanced"]["variant_counts"], rows["diffusion_fill_al"]["variant_counts"]
    assert rows["diffusion_fill_al"]["n_synthetic"] == sum(budgets.values())
    assert after == {c: n + budgets.get(c, 0) for c, n in before.items()}
