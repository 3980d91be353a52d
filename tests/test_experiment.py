"""Headless experiments: config validation, documented keys, examples, and a small study end to end."""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from backend.config import Settings
from backend.data.sources import CIFAR10_CLASSES
from backend.experiment import (
    ExperimentConfig,
    ExperimentError,
    check_plan,
    config_reference,
    load_config,
    parse_config,
    plan,
)
from backend.experiment_cli import run_experiment
from backend.reports.tables import read_results_csv

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny batches gain nothing from intra-op threads, and they thrash on a busy shared CI host.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_unknown_keys_are_named() -> None:
    with pytest.raises(ExperimentError) as err:
        parse_config({"nmae": "x", "sd": {"bogus": 2}, "benchmark": {"epochs": 3}})
    assert "unknown key 'nmae'" in str(err.value) and "unknown key 'sd.bogus'" in str(err.value)
    with pytest.raises(ExperimentError, match="benchmark.variants: unknown \\['smote'\\]"):
        parse_config({"benchmark": {"variants": ["full", "smote"]}})
    with pytest.raises(ExperimentError, match="top level must be a mapping"):
        parse_config(["a"])


def test_job_params_are_checked_before_any_work(tmp_path: Path) -> None:
    config = parse_config({"sd": {"job_params": {"stepz": 3}}})
    with pytest.raises(ExperimentError, match="sd \\(generate_sd params\\): unknown key 'stepz'"):
        check_plan(plan(config, tmp_path, None))
    # Section keys carry the job param's own type and limits, so a bad value fails while parsing.
    with pytest.raises(ExperimentError, match="selection.acquisition: Input should be 'max_entropy'"):
        parse_config({"selection": {"acquisition": "psychic"}})
    with pytest.raises(ExperimentError, match="gan.epochs: Input should be greater than or equal to 1"):
        parse_config({"gan": {"epochs": 0}})


@pytest.mark.parametrize("name", ["cifar10_cat.yaml", "cifar10_cat_cpu.yaml"])
def test_examples_are_valid(name: str) -> None:
    path = REPO / "examples" / name
    config = load_config(path)
    steps = plan(config, path.parent, "/data/cifar10")
    check_plan(steps)
    assert [s.kind for s in steps][-1] == "benchmark"
    assert config.dataset.path and (path.parent / config.dataset.path).name == "cifar10-jpg.tar.gz"
    bench = steps[-1].build({s.name: {"dataset_id": 1, "pool_id": 2, "selection_id": 3, "gan_id": 4} for s in steps})
    assert [v if isinstance(v, str) else v["name"] for v in bench["variants"]][-3:] == ["sd_random", "sd_al", "gan"]


@pytest.mark.parametrize(
    ("name", "variants"),
    [
        ("digits_longtail_cpu.yaml", ["diffusion_fill", "diffusion_fill_al"]),
        # the CIFAR-10 recipes list their classes from the real archive, extracted once per run (a minute)
        pytest.param("cifar10_longtail_cpu.yaml", ["diffusion_fill", "diffusion_fill_al"], marks=pytest.mark.slow),
        pytest.param("cifar10_longtail_gpu.yaml", ["diffusion_fill", "diffusion_fill_al"], marks=pytest.mark.slow),
    ],
)
def test_longtail_examples_fill_and_filter_every_class(
    name: str, variants: list[str], request: pytest.FixtureRequest
) -> None:
    path = REPO / "examples" / name
    config = load_config(path)
    folder = None if "digits" in name else str(request.getfixturevalue("cifar10_root"))
    steps = {s.name: s for s in plan(config, path.parent, folder)}
    check_plan(list(steps.values()))
    assert [f"fill_select_{i}" in steps for i in range(10)] == [True] * 10
    need = {str(c): 10 for c in range(10)} if "digits" in name else {c: 10 for c in CIFAR10_CLASSES}
    results = {s: {"dataset_id": 1, "pool_id": 2, "selection_id": 3, "diffusion_id": 4} for s in steps}
    bench = steps["benchmark"].build(results | {"fill": {"need": need}})
    assert [v["name"] for v in bench["variants"] if isinstance(v, dict)] == variants


def test_reference_doc_lists_every_key_and_is_current() -> None:
    text = config_reference()
    readme = (REPO / "README.md").read_text("utf-8")
    section = (
        readme.split("<!-- BEGIN experiment-config")[1].split("-->", 1)[1].split("<!-- END experiment-config -->")[0]
    )
    # The README carries the generated reference one heading level down.
    assert section.strip() == re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M).strip()
    for section, field in ExperimentConfig.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields") and section != "imbalance":
            for key in annotation.model_fields:
                assert f"| `{section}.{key}` |" in text
        else:
            assert f"| `{section}` |" in text


def _folder_archive(tmp_path: Path) -> Path:
    """A tiny ImageFolder (3 colour classes, 24 train + 10 test each) packed as .tar.gz."""
    rng = np.random.default_rng(0)
    root = tmp_path / "src" / "colours"
    colours = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
    for split, n in (("train", 24), ("test", 10)):
        for name, rgb in colours.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                img = np.clip(np.array(rgb) + rng.integers(-40, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / name / f"{i}.png")
    archive = tmp_path / "colours.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="colours")
    return archive


def test_small_study_end_to_end_and_rerun_reuses_jobs(tmp_path: Path) -> None:
    archive = _folder_archive(tmp_path)
    config = {
        "name": "colours",
        "device": "cpu",
        "dataset": {"source": "imagefolder", "path": "colours.tar.gz"},
        "imbalance": {"minority": "green", "keep": 4, "seed": 0},
        "sd": {"enabled": False},
        "gan": {"enabled": False},
        "benchmark": {"variants": ["imbalanced", "full"], "model": "small", "epochs": 2, "batch_size": 16},
    }
    path = archive.parent / "study.yaml"
    path.write_text(yaml.safe_dump(config), "utf-8")
    settings = Settings(workspace=tmp_path / "ws", workers=1, device="cpu", start_dir=tmp_path / "ws")
    out = tmp_path / "out"

    result = run_experiment(path, out, settings, quiet=True, poll_s=0.05)
    classes, rows = read_results_csv((out / "results.csv").read_text("utf-8"))
    assert classes == ["blue", "green", "red"]
    assert [(r["variant"], r["seed"]) for r in rows] == [("imbalanced", 0), ("full", 0)]
    runs = json.loads((out / "results.json").read_text("utf-8"))["rows"]
    for run, row in zip(runs, rows, strict=True):
        cm = np.asarray(run["confusion"])
        assert row["overall_acc"] == pytest.approx(100 * np.trace(cm) / cm.sum(), abs=0.01)
        # Both variants were selected on the same validation split, recorded with the row.
        assert run["select_epoch"] == "last" and run["validation"] == runs[0]["validation"]
    assert runs[0]["validation"]["size"] == sum(runs[0]["validation"]["counts"].values()) > 0
    assert '<th class="minority">green</th>' in (out / "report.html").read_text("utf-8")
    ran = parse_config(yaml.safe_load((out / "config.yaml").read_text("utf-8")))
    assert ran.benchmark.epochs == 2 and ran.selection.budget == 4950  # defaults filled in
    assert set(result.jobs) == {"dataset", "benchmark"}

    again = run_experiment(path, tmp_path / "out2", settings, quiet=True, poll_s=0.05)
    assert again.jobs == result.jobs and again.benchmark_id == result.benchmark_id
    assert (tmp_path / "out2" / "results.csv").read_text("utf-8") == (out / "results.csv").read_text("utf-8")


def test_missing_dataset_path_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"dataset": {"source": "imagefolder", "path": "nope.tar.gz"}}), "utf-8")
    with pytest.raises(ExperimentError, match="dataset.path: .*nope.tar.gz does not exist"):
        run_experiment(path, tmp_path / "out", Settings(workspace=tmp_path / "ws", workers=0), quiet=True)


def test_personalize_section_feeds_the_sd_stage(tmp_path: Path) -> None:
    config = parse_config({"sd": {"model": "tiny"}, "personalize": {"enabled": True, "method": "lora", "steps": 3}})
    steps = plan(config, tmp_path, None)
    check_plan(steps)  # the personalize_sd params pass the job's own validation
    names = [s.name for s in steps]
    assert names.index("dataset") < names.index("personalize") < names.index("sd")
    built = {s.name: s for s in steps}
    concept = built["personalize"].build({"dataset": {"dataset_id": 4}})
    assert (concept["model"], concept["method"], concept["steps"]) == ("tiny", "lora", 3)
    assert concept["source"]["dataset_id"] == 4
    assert built["sd"].build({"dataset": {"dataset_id": 4}, "personalize": {"concept_id": 9}})["concept_id"] == 9
    assert "concept_id" not in [s for s in plan(parse_config({}), tmp_path, None) if s.name == "sd"][0].build(
        {"dataset": {"dataset_id": 4}}
    )
    with pytest.raises(ExperimentError, match="personalize.enabled needs sd.enabled"):
        parse_config({"sd": {"enabled": False}, "personalize": {"enabled": True}})
    with pytest.raises(ExperimentError, match="personalize.rank"):
        parse_config({"personalize": {"rank": 0}})


def test_rounds_plan_chains_generate_select_reweight(tmp_path: Path) -> None:
    config = parse_config({"rounds": 3, "sd": {"model": "tiny"}, "gan": {"enabled": False}})
    steps = plan(config, tmp_path, None)
    check_plan(steps)
    by = {s.name: s for s in steps}
    names = [s.name for s in steps]
    assert names.index("select_al") < names.index("sd_r2") < names.index("select_al_r2") < names.index("sd_r3")
    assert by["sd_r2"].needs == ["select_al"] and by["sd_r3"].needs == ["select_al_r2"]
    assert by["sd_r2"].prepare is not None and by["sd"].prepare is None
    assert by["select_al_r3"].build({"dataset": {"dataset_id": 1}, "sd_r3": {"pool_id": 7}})["pool_ids"] == [7]
    fake = {s.name: {"dataset_id": 1, "pool_id": 2, "selection_id": 3} for s in steps}
    variants = [v if isinstance(v, str) else v["name"] for v in by["benchmark"].build(fake)["variants"]]
    assert variants[-3:] == ["sd_al", "sd_al_r2", "sd_al_r3"]
    assert {"select_al_r2", "select_al_r3"} <= set(by["benchmark"].needs)
    params = {"params": {"model": "tiny", "seed": 5, "vocabulary": 9}}
    assert by["sd_r2"].build({"next_r2": params})["vocabulary"] == 9  # what prepare saved
    with pytest.raises(ExperimentError, match="rounds > 1 needs sd.enabled"):
        parse_config({"rounds": 2, "sd": {"enabled": False}})
    with pytest.raises(ExperimentError, match="reweight.smoothing"):
        parse_config({"reweight": {"smoothing": 0}})


def test_configs_without_rounds_keep_their_job_keys() -> None:
    """Adding the rounds keys must not re-run studies launched before them (the key hashes the config)."""
    from backend.experiment import config_hash

    later = ("rounds", "reweight", "diffusion")  # sections added after studies were launched
    before = {k: v for k, v in ExperimentConfig().model_dump(mode="json").items() if k not in later}
    for key in ("synthetic_weight", "finetune_real_epochs"):  # benchmark keys added later
        before["benchmark"].pop(key)
    import hashlib

    old = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert config_hash(ExperimentConfig()) == old
    assert config_hash(parse_config({"rounds": 2})) != old
    assert config_hash(parse_config({"diffusion": {"enabled": True, "class_name": "cat"}})) != old
    assert config_hash(parse_config({"benchmark": {"synthetic_weight": 0.5}})) != old


def test_two_rounds_end_to_end_report_shows_each_round(tmp_path: Path) -> None:
    """generate (tiny SD) -> select -> reweight -> generate -> select -> benchmark on a 3-colour folder: the
    second round's SD job draws from a saved vocabulary with weights, each round is its own benchmark
    variant, and report.html carries the rounds table and the quality panel beside minority accuracy."""
    from backend.db.models import Job
    from backend.db.models import Vocabulary as VocabularyRow
    from backend.generation.prompts import Vocabulary
    from backend.runtime import prepare

    archive = _folder_archive(tmp_path)
    config = {
        "name": "colours-rounds",
        "device": "cpu",
        "dataset": {"source": "imagefolder", "path": "colours.tar.gz"},
        "imbalance": {"minority": "green", "keep": 4, "seed": 0},
        "sd": {"model": "tiny", "count": 24, "steps": 1, "resolution": 32, "batch_size": 24,
               "job_params": {"review_size": 32}},
        "gan": {"enabled": False},
        "selection": {"budget": 6, "per_round": 3, "mc_samples": 2, "model": "small", "epochs": 1,
                      "random_job": False},
        "rounds": 2,
        "benchmark": {"variants": ["imbalanced", "oversample"], "model": "small", "epochs": 1, "batch_size": 16},
    }  # fmt: skip
    path = archive.parent / "study.yaml"
    path.write_text(yaml.safe_dump(config), "utf-8")
    settings = Settings(workspace=tmp_path / "ws", workers=1, device="cpu", start_dir=tmp_path / "ws")
    out = tmp_path / "out"
    result = run_experiment(path, out, settings, quiet=True, poll_s=0.05)
    assert {"sd", "select_al", "sd_r2", "select_al_r2", "benchmark"} <= set(result.jobs)
    _, rows = read_results_csv((out / "results.csv").read_text("utf-8"))
    assert [r["variant"] for r in rows] == ["imbalanced", "oversample", "sd_random", "sd_al", "sd_al_r2"]
    # The answer: each synthetic variant's verdict against the classical remedy (one seed: can't tell), and
    # the two-sample test of the pools the selections drew from (4 real greens: too few to test).
    results = json.loads((out / "results.json").read_text("utf-8"))
    verdicts = {v["variant"]: v for v in results["verdicts"]}
    assert list(verdicts) == ["sd_random", "sd_al", "sd_al_r2"]
    assert all(v["baseline"] == "oversample" and v["verdict"] == "cant_tell" for v in verdicts.values())
    assert results["meta"]["assessments"]["sd_al"]["method"] == "untestable"

    db = prepare(settings)  # the study's database, opened again
    with db.read_session() as s:
        first, second = s.get(Job, result.jobs["sd"]), s.get(Job, result.jobs["sd_r2"])
        assert second.params["seed"] != first.params["seed"] and second.params["count"] == 24
        row = s.get(VocabularyRow, second.params["vocabulary"])
        vocab = Vocabulary(row.template, row.slots, row.negative_prompt or "")
    db.dispose()
    assert vocab.weights and all(abs(sum(w.values()) - 1) < 1e-9 for w in vocab.weights.values())
    assert all(w > 0 for ws in vocab.weights.values() for w in ws.values())  # smoothing: none dropped

    report = (out / "report.html").read_text("utf-8")
    assert "Rounds: generate → select → reweight" in report and "Quality of the synthetic images" in report
    assert "Verdict: do the synthetic images help?" in report and "Can a classifier tell" in report
    rounds_table = report.split('class="results rounds"')[1].split("</table>")[0]
    assert rounds_table.count("<tr>") == 3  # header + one line per round
    assert "sd_al_r2" in rounds_table


def test_diffusion_stage_plans_train_sample_select_and_its_variants(tmp_path: Path) -> None:
    path = REPO / "examples" / "digits_diffusion_cpu.yaml"
    config = load_config(path)
    steps = plan(config, path.parent, None)
    check_plan(steps)
    by = {s.name: s for s in steps}
    # The default recipe: every other class sampled too, the two-sample test before the benchmark.
    others = [f"diffusion_other_{i}" for i in range(10) if i != 3]
    assert [s.name for s in steps] == ["dataset", "diffusion_train", "diffusion", *others, "assess_diffusion",
                                       "benchmark"]  # fmt: skip
    assert set(by["assess_diffusion"].needs) == {"dataset", "diffusion", *others}
    assert "assess_diffusion" in by["benchmark"].needs
    train = by["diffusion_train"].build({"dataset": {"dataset_id": 1}})
    assert train["source"] == {"dataset_id": 1, "imbalance": {"minority": "3", "keep": 5, "seed": 0}}
    assert (train["image_size"], train["epochs"], train["class_balance"]) == (16, 40, 0.7)
    sample = by["diffusion"].build({"diffusion_train": {"diffusion_id": 4}})
    assert (sample["diffusion_id"], sample["class"], sample["count"], sample["guidance"]) == (4, "3", 140, 2.0)
    results = {s.name: {"dataset_id": 1, "pool_id": 100 + i} for i, s in enumerate(steps)}
    assess = by["assess_diffusion"].build(results)
    assert assess == {
        "pool_id": results["diffusion"]["pool_id"],
        "dataset_id": 1,
        "imbalance": train["source"]["imbalance"],
    }
    bench = by["benchmark"].build(results)
    (variant,) = [v for v in bench["variants"] if isinstance(v, dict)]
    assert variant["base"] == "oversample" and len(variant["others"]) == 9 and variant["count"] == 140
    # The schedule is the benchmark's default (steps sized to the data), the same for every variant.
    assert "epochs" not in {k for k, v in bench.items() if v is not None} and bench.get("steps") is None
    # Switched off, the minority's samples stand alone (and no other class is sampled).
    alone = parse_config(
        {"diffusion": {"enabled": True, "class_name": "3", "every_class": False, "base": "imbalanced"}}
    )
    names = [s.name for s in plan(alone, path.parent, None)]
    assert not [n for n in names if n.startswith("diffusion_other_")] and "assess_diffusion" in names
    # A folder from elsewhere (relative to the config) replaces the imbalanced set as the training source.
    folder = parse_config({"diffusion": {"enabled": True, "source_path": "threes", "class_name": "3"}})
    src = {s.name: s for s in plan(folder, tmp_path, None)}["diffusion_train"].build({"dataset": {"dataset_id": 1}})
    assert src["source"] == {"path": str((tmp_path / "threes").resolve())}
    with pytest.raises(ExperimentError, match="diffusion.class_name is required"):
        parse_config(
            {
                "imbalance": {"profile": "longtail", "imbalance_factor": 10},
                "sd": {"enabled": False},
                "gan": {"enabled": False},
                "diffusion": {"enabled": True},
            }
        )


def test_every_class_stage_samples_each_other_class_and_labels_it(tmp_path: Path) -> None:
    """diffusion.every_class: one generate_diffusion per other class of the dataset, the benchmark's diffusion
    variant on the oversampled set with each of those pools labelled with its class; with a source_path the
    other classes come from a second model of the imbalanced set."""
    from backend.experiment import config_hash

    base = {"dataset": {"source": "digits"}, "imbalance": {"minority": "3", "keep": 5}, "sd": {"enabled": False}}
    stage = {"enabled": True, "count": 30, "base": "oversample", "every_class": True, "every_class_count": 20}
    config = parse_config(base | {"diffusion": stage})
    steps = plan(config, tmp_path, None)
    check_plan(steps)
    by = {s.name: s for s in steps}
    others = [s for s in steps if s.name.startswith("diffusion_other_")]
    built = [s.build({"diffusion_train": {"diffusion_id": 7}}) for s in others]
    assert sorted(b["class"] for b in built) == [c for c in "012456789"]  # every digit but the minority
    assert {b["diffusion_id"] for b in built} == {7} and {b["count"] for b in built} == {20}
    assert (
        len({b["seed"] for b in built} | {by["diffusion"].build({"diffusion_train": {"diffusion_id": 7}})["seed"]})
        == 10
    )
    results = {s.name: {"dataset_id": 1, "pool_id": 100 + i} for i, s in enumerate(steps)}
    bench = by["benchmark"].build(results)
    assert set(by["benchmark"].needs) >= {s.name for s in others} | {"diffusion"}
    (variant,) = [v for v in bench["variants"] if isinstance(v, dict) and v["name"] == "diffusion"]
    assert (variant["pool_id"], variant["count"], variant["base"]) == (
        results["diffusion"]["pool_id"],
        30,
        "oversample",
    )
    labels = {o["label"]: o for o in variant["others"]}
    assert sorted(labels) == [c for c in "012456789"]
    assert all(
        o["count"] == 20 and o["pool_id"] == results[s.name]["pool_id"]
        for o, s in zip(variant["others"], others, strict=True)
    )
    # A one-class model from elsewhere: a second model, of the imbalanced set, samples the other classes.
    folder = parse_config(base | {"diffusion": stage | {"source_path": "threes"}})
    fsteps = {s.name: s for s in plan(folder, tmp_path, None)}
    assert fsteps["diffusion_train_all"].build({"dataset": {"dataset_id": 1}})["source"]["dataset_id"] == 1
    assert fsteps["diffusion_other_0"].needs == ["diffusion_train_all"]
    # The recipe's keys change the study's key only when set.
    plain = parse_config(base | {"diffusion": {"enabled": True}})
    data = plain.model_dump(mode="json")
    for key in ("base", "every_class", "every_class_count", "fill"):  # recipes added later
        data["diffusion"].pop(key)
    for key in ("synthetic_weight", "finetune_real_epochs"):  # defaults: not hashed either
        data["benchmark"].pop(key)
    data.pop("rounds"), data.pop("reweight")
    import hashlib

    assert config_hash(plain) == hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    assert config_hash(config) != config_hash(plain)
    example = REPO / "examples" / "digits_every_class_cpu.yaml"
    steps = plan(load_config(example), example.parent, None)
    check_plan(steps)
    assert len([s for s in steps if s.kind == "generate_diffusion"]) == 10


def test_cifar10_diffusion_gpu_example_is_valid(cifar10_root: Path) -> None:
    """The GPU recipe plans one generate_diffusion per non-cat class, read from the real CIFAR-10 folders."""
    gpu = REPO / "examples" / "cifar10_cat_diffusion_gpu.yaml"
    steps = plan(load_config(gpu), gpu.parent, str(cifar10_root))
    check_plan(steps)
    others = [
        s.build({"diffusion_train": {"diffusion_id": 1}})["class"] for s in steps if s.name.startswith("diffusion_o")
    ]
    assert sorted(others) == sorted(
        c for c in ("airplane", "automobile", "bird", "deer", "dog", "frog", "horse", "ship", "truck")
    )


def test_rounds_example_is_valid() -> None:
    path = REPO / "examples" / "cifar10_cat_rounds.yaml"
    config = load_config(path)
    steps = plan(config, path.parent, "/data/cifar10")
    check_plan(steps)
    assert config.rounds == 3 and config.reweight.negative_classes == 2
    bench = steps[-1].build({s.name: {"dataset_id": 1, "pool_id": 2, "selection_id": 3} for s in steps})
    assert [v if isinstance(v, str) else v["name"] for v in bench["variants"]][-3:] == ["sd_al", "sd_al_r2", "sd_al_r3"]


LONGTAIL = {
    "dataset": {"source": "digits"},
    "imbalance": {"profile": "longtail", "imbalance_factor": 100},
    "sd": {"enabled": False},
    "gan": {"enabled": False},
    "diffusion": {"enabled": True, "fill": "to_head"},
}


def test_fill_samples_each_class_shortfall_into_a_pool_labelled_with_that_class(tmp_path: Path) -> None:
    steps = {s.name: s for s in plan(parse_config(LONGTAIL), tmp_path, None)}
    classes = [str(i) for i in range(10)]
    need = {"0": 0, "1": 55, "2": 90, "3": 111, "4": 124, "5": 131, "6": 136, "7": 138, "8": 140, "9": 141}
    results = {"dataset": {"dataset_id": 1}, "diffusion_train": {"diffusion_id": 2}, "fill": {"need": need}}
    results |= {f"fill_{i}": {"pool_id": 100 + i} for i in range(10)}
    for i, cls in enumerate(classes):  # each sampling job draws its own class, as many as it lacks
        job = steps[f"fill_{i}"].build(results)
        assert (job["class"], job["count"]) == (cls, max(1, need[cls]))
    (spec,) = [v for v in steps["benchmark"].build(results)["variants"] if isinstance(v, dict)]
    parts = [(spec["pool_id"], spec["count"], spec["label"])] + [
        (o["pool_id"], o["count"], o["label"]) for o in spec["others"]
    ]
    assert spec["name"] == "diffusion_fill" and spec.get("base", "imbalanced") == "imbalanced"
    # every pool is labelled with the class its job sampled, takes exactly that class's shortfall, and a
    # class at the target (the head) adds nothing
    assert sorted(parts) == sorted((100 + i, need[c], c) for i, c in enumerate(classes) if need[c] > 0)
    check_plan(list(steps.values()))
    assert steps["benchmark"].prepare is not None and steps["fill_3"].prepare is not None


def test_filtered_fill_oversamples_each_class_and_keeps_its_shortfall_with_its_label(tmp_path: Path) -> None:
    """diffusion.select with fill (issue 31.2): each class samples fill_oversample x its shortfall, a select job
    per class (target_class = that class, on that class's pool) keeps the shortfall, and variant
    diffusion_fill_al adds each selection's picks labelled with the selection's class."""
    config = parse_config({**LONGTAIL, "diffusion": {"enabled": True, "fill": "to_head", "select": True}})
    steps = {s.name: s for s in plan(config, tmp_path, None)}
    classes = [str(i) for i in range(10)]
    need = {"0": 0, "1": 55, "2": 90, "3": 111, "4": 124, "5": 131, "6": 136, "7": 138, "8": 140, "9": 141}
    results = {"dataset": {"dataset_id": 1}, "diffusion_train": {"diffusion_id": 2}, "fill": {"need": need}}
    results |= {f"fill_{i}": {"pool_id": 100 + i} for i in range(10)}
    results |= {f"fill_select_{i}": {"selection_id": 200 + i} for i in range(10)}
    for i, cls in enumerate(classes):
        assert steps[f"fill_{i}"].build(results)["count"] == max(1, 2 * need[cls])  # fill_oversample 2
        job = steps[f"fill_select_{i}"].build(results)
        assert (job["target_class"], job["pool_ids"], job["budget"]) == (cls, [100 + i], max(1, need[cls]))
        assert job["per_round"] == min(50, max(1, need[cls])) and "fill_" + str(i) in steps[f"fill_select_{i}"].needs
    raw, picked = [v for v in steps["benchmark"].build(results)["variants"] if isinstance(v, dict)]
    assert (raw["name"], picked["name"]) == ("diffusion_fill", "diffusion_fill_al")
    # the unfiltered variant takes the first shortfall-many samples of the same (oversampled) pools
    assert raw["count"] == need["9"] and raw["pool_id"] == 109
    parts = [(picked["selection_id"], picked["label"])] + [(o["selection_id"], o["label"]) for o in picked["others"]]
    assert sorted(parts) == sorted((200 + i, c) for i, c in enumerate(classes) if need[c] > 0)
    assert "count" not in picked and all("count" not in o for o in picked["others"])  # every pick not rejected
    assert set(steps["benchmark"].needs) >= {f"fill_select_{i}" for i in range(10)}
    check_plan(list(steps.values()))
    with pytest.raises(ExperimentError, match="diffusion.fill_oversample"):
        parse_config({**LONGTAIL, "diffusion": {"enabled": True, "fill": "to_head", "fill_oversample": 0.5}})


def test_a_long_tail_refuses_single_minority_stages() -> None:
    with pytest.raises(ExperimentError, match="sd.enabled: a long tail has no single minority"):
        parse_config({**LONGTAIL, "sd": {"enabled": True}})
    with pytest.raises(ExperimentError, match="gan.enabled: a long tail"):
        parse_config({**LONGTAIL, "gan": {"enabled": True}})
    with pytest.raises(ExperimentError, match="remove diffusion.source_path"):
        parse_config({**LONGTAIL, "diffusion": {"enabled": True, "fill": "to_head", "source_path": "x"}})
    with pytest.raises(ExperimentError, match="diffusion.fill.PerClass.per_class"):
        parse_config({**LONGTAIL, "diffusion": {"enabled": True, "fill": {"per_class": 0}}})
