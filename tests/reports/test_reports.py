"""Reports: results.csv round trip, Table 1 summary, plotly figures, self-contained report.html."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import plotly.offline
import pytest

from backend.reports.figures import FIGURES, build_figure
from backend.reports.html import render_report
from backend.reports.tables import (
    read_results_csv,
    results_columns,
    results_csv,
    results_json,
    selection_note,
    summarize,
    summary_csv,
    summary_html,
    summary_markdown,
)

CLASSES = ["airplane", "cat", "dog"]
MINORITY = ["cat"]


def _row(variant: str, seed: int, overall: float, accs: list[float], n_synthetic: int = 0) -> dict:
    return {
        "variant": variant,
        "seed": seed,
        "overall_acc": overall,
        "per_class": dict(zip(CLASSES, accs, strict=True)),
        "val_acc": overall + 1,
        "epochs": 2,
        "n_synthetic": n_synthetic,
        "history": [
            {"epoch": 1, "train_loss": 1.5, "train_acc": 40.0, "val_acc": 50.0, "lr": 0.1},
            {"epoch": 2, "train_loss": 1.0, "train_acc": 60.0, "val_acc": 70.0, "lr": 0.0},
        ],
        "confusion": [[90, 0, 10], [30, 60, 10], [5, 5, 90]],
    }


ROWS = [
    _row("imbalanced", 0, 60.0, [90.0, 0.0, 90.0]),
    _row("imbalanced", 1, 62.0, [92.0, 2.0, 92.0]),
    _row("sd_al", 0, 80.0, [90.0, 50.0, 100.0], n_synthetic=4950),
    _row("sd_al", 1, 84.0, [94.0, 60.0, 98.0], n_synthetic=4950),
]


class _Collector(HTMLParser):
    """Collects tags, attributes and text; HTMLParser raises nothing, so structure is checked explicitly."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self.cells: list[tuple[str, str | None, str]] = []  # (tag, class, text) of th/td
        self._in: tuple[str, str | None] | None = None

    def handle_starttag(self, tag, attrs):
        if tag not in ("meta", "br", "link"):
            self.stack.append(tag)
        self.tags.append((tag, dict(attrs)))
        if tag in ("th", "td"):
            self._in = (tag, dict(attrs).get("class"))
            self.cells.append((tag, dict(attrs).get("class"), ""))

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> after {self.stack[-3:]}"
        self.stack.pop()
        self._in = None

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "script":
            self.scripts.append(data)
        if self._in is not None:
            tag, cls, text = self.cells[-1]
            self.cells[-1] = (tag, cls, text + data)


def _parse(text: str) -> _Collector:
    parser = _Collector()
    parser.feed(text)
    parser.close()
    assert parser.stack == [], f"unclosed tags: {parser.stack}"
    return parser


def test_results_csv_round_trip() -> None:
    rows = [*ROWS, {"variant": "full", "seed": 0, "overall_acc": 70.125, "per_class": {"airplane": 1.0}}]
    text = results_csv(rows, CLASSES)
    assert text.splitlines()[0] == "variant,seed,overall_acc,acc_airplane,acc_cat,acc_dog"
    assert results_columns(CLASSES)[3:] == ["acc_airplane", "acc_cat", "acc_dog"]
    classes, back = read_results_csv(text)
    assert classes == CLASSES and len(back) == 5
    assert back[2] == {
        "variant": "sd_al",
        "seed": 0,
        "overall_acc": 80.0,
        "per_class": {"airplane": 90.0, "cat": 50.0, "dog": 100.0},
    }
    assert back[4]["overall_acc"] == pytest.approx(70.12, abs=0.01) and back[4]["per_class"]["cat"] is None
    with pytest.raises(ValueError, match="results.csv"):
        read_results_csv("a,b\n1,2\n")


def test_summary_mean_std_and_table_formats() -> None:
    summary = summarize(ROWS, CLASSES)
    assert [s.variant for s in summary] == ["imbalanced", "sd_al"]
    cat_mean, cat_std = summary[1].per_class["cat"]
    assert cat_mean == pytest.approx(55.0) and cat_std == pytest.approx(np.std([50, 60], ddof=1))
    assert summary[0].overall == pytest.approx((61.0, np.sqrt(2.0)))

    md = summary_markdown(summary, CLASSES, MINORITY)
    assert md.splitlines()[0] == "| variant | overall | cat * | airplane | dog |"
    assert "55.00 ± 7.07" in md

    header, *lines = summary_csv(summary, CLASSES, MINORITY).splitlines()
    assert header.split(",")[:6] == ["variant", "seeds", "overall_mean", "overall_std", "cat_mean", "cat_std"]
    assert lines[1].split(",")[:6] == ["sd_al", "2", "82.00", "2.83", "55.00", "7.07"]

    parsed = _parse(summary_html(summary, CLASSES, MINORITY))
    heads = [(cls, text) for tag, cls, text in parsed.cells if tag == "th"]
    assert heads == [
        (None, "variant"),
        (None, "seeds"),
        (None, "overall"),
        ("minority", "cat"),
        (None, "airplane"),
        (None, "dog"),
    ]
    minority_cells = [text for tag, cls, text in parsed.cells if tag == "td" and cls == "minority"]
    assert minority_cells == ["1.00 ± 1.41", "55.00 ± 7.07"]


def test_results_json_is_serialisable() -> None:
    data = json.loads(json.dumps(results_json(ROWS, CLASSES, MINORITY, meta={"benchmark_id": 3})))
    assert data["summary"][1]["per_class"]["cat"]["mean"] == pytest.approx(55.0)
    assert data["meta"] == {"benchmark_id": 3} and len(data["rows"]) == 4


def test_figures() -> None:
    bars = json.loads(build_figure("per_class", ROWS, CLASSES, MINORITY).to_json())
    assert [t["name"] for t in bars["data"]] == ["imbalanced", "sd_al"]
    assert bars["data"][1]["x"] == ["overall", "cat", "airplane", "dog"]
    assert bars["data"][1]["y"] == pytest.approx([82.0, 55.0, 92.0, 99.0])
    assert bars["data"][1]["error_y"]["array"][1] == pytest.approx(np.std([50, 60], ddof=1))

    scatter = build_figure("minority_vs_synthetic", ROWS, CLASSES, MINORITY).to_dict()
    assert [(t["x"][0], t["y"][0]) for t in scatter["data"]] == [(0, pytest.approx(1.0)), (4950, pytest.approx(55.0))]

    curves = build_figure("curves", ROWS, CLASSES, MINORITY).to_dict()
    assert len(curves["data"]) == 2 * len(ROWS)

    heat = build_figure("confusion", ROWS, CLASSES, MINORITY, variant="sd_al").to_dict()
    z = np.asarray(heat["data"][0]["z"])
    assert np.allclose(z.sum(1), 100.0) and z[1, 1] == pytest.approx(60.0)
    with pytest.raises(ValueError, match="unknown figure"):
        build_figure("pie", ROWS, CLASSES, MINORITY)
    assert set(FIGURES) == {"per_class", "minority_vs_synthetic", "curves", "confusion"}


def test_report_html_is_self_contained_and_well_formed() -> None:
    text = render_report(ROWS, CLASSES, MINORITY, title="cat <study>", meta={"note": "a < b"})
    parsed = _parse(text)
    plotly_js = plotly.offline.get_plotlyjs()
    assert text.count(plotly_js[:200]) == 1  # the library is inlined exactly once
    assert not [a for tag, a in parsed.tags if tag == "script" and "src" in a]  # nothing fetched from a CDN
    graphs = [a for tag, a in parsed.tags if tag == "div" and a.get("class") == "plotly-graph-div"]
    assert len(graphs) == 3 + 2  # bars, minority scatter, curves, one confusion matrix per variant
    assert "<title>cat &lt;study&gt;</title>" in text and "a &lt; b" in text
    assert [cls for tag, cls, _ in parsed.cells if tag == "th"].count("minority") == 1


def test_report_says_how_the_weights_were_chosen_and_what_validation_holds() -> None:
    split = {"size": 40, "counts": {"airplane": 20, "cat": 3, "dog": 17}, "fingerprint": "abc"}
    other = {"size": 41, "counts": {"airplane": 20, "cat": 4, "dog": 17}, "fingerprint": "def"}
    rows = [{**r, "select_epoch": "best_balanced", "validation": split if r["seed"] == 0 else other} for r in ROWS]
    note = selection_note(rows, MINORITY)
    assert "best mean per-class validation accuracy" in note
    assert "seed 0: 40 real images, 3 of the minority class" in note
    assert "seed 1: 41 real images, 4 of the minority class" in note
    assert "seed 0: 40 real images, 3 of the minority class" in render_report(rows, CLASSES, MINORITY)
    assert "last epoch" in selection_note([{**ROWS[0], "select_epoch": "last"}], MINORITY)


def test_variants_at_the_same_point_get_their_labels_on_different_sides() -> None:
    """Issue 20.8: two variants with equal values printed their labels on top of each other."""
    rows = [*ROWS, {**ROWS[0], "variant": "oversample"}, {**ROWS[1], "variant": "oversample"}]
    rows += [{**r, "variant": "class_weighted"} for r in ROWS[:2]]
    scatter = build_figure("minority_vs_synthetic", rows, CLASSES, MINORITY).to_dict()
    at = {t["name"]: ((t["x"][0], round(t["y"][0], 6)), t["textposition"]) for t in scatter["data"]}
    same = [at[v] for v in ("imbalanced", "oversample", "class_weighted")]
    assert len({p for p, _ in same}) == 1  # the three sit on one point...
    assert len({pos for _, pos in same}) == 3  # ...and their labels go to three different sides
    assert at["sd_al"][1] == "top center"  # a point alone keeps the default


def test_label_positions_only_move_labels_of_close_points() -> None:
    from backend.reports.figures import label_positions

    assert label_positions([(0, 50.0), (0, 51.0), (0, 80.0), (100, 50.0)], 4, 4) == [
        "top center", "bottom center", "top center", "top center"
    ]  # fmt: skip
    assert len(set(label_positions([(0, 50.0)] * 8, 4, 4))) == 8


QUALITY = {
    "sd_al": {
        "selection_id": 7,
        "target": "cat",
        "picks": {"precision": 0.91, "recall": 0.4, "density": 1.02, "coverage": 0.83, "frechet": 12.5},
        "pool": {"precision": 0.55, "recall": 0.7, "density": 0.61, "coverage": 0.9, "frechet": 30.25},
    }
}


def test_report_shows_the_quality_panel_beside_minority_accuracy() -> None:
    text = render_report(ROWS, CLASSES, MINORITY, quality=QUALITY)
    parsed = _parse(text)
    table = text.split('class="results quality"')[1].split("</table>")[0]
    cells = [c for tag, _, c in parsed.cells if tag == "td"]
    i = cells.index("picks")
    # variant, selection, minority accuracy (mean of seeds 50 and 60), set, precision .. frechet
    assert cells[i - 3 : i + 6] == ["sd_al", "7", "55.00", "picks", "0.910", "0.400", "1.020", "0.830", "12.5"]
    assert "<td>pool</td>" in table and "30.2" in table
    assert "Quality of the synthetic images" not in render_report(ROWS, CLASSES, MINORITY)


def test_report_shows_one_line_per_round() -> None:
    rounds = [
        {"round": 1, "variant": "sd_al", "pool_id": 3, "selection_id": 7, "picks": 10, "minority_prob": 0.8,
         "quality": QUALITY["sd_al"]["picks"], "top_weight": {"slot": "breed", "value": "tabby", "weight": 0.61}},
        {"round": 2, "variant": "sd_al_r2", "pool_id": 5, "selection_id": 9, "picks": 10, "minority_prob": None},
    ]  # fmt: skip
    text = render_report(ROWS, CLASSES, MINORITY, rounds=rounds)
    _parse(text)
    table = text.split('class="results rounds"')[1].split("</table>")[0]
    assert table.count("<tr>") == 3 and "breed=tabby (0.61)" in table and "<td>55.00</td>" in table
    assert "<td>sd_al_r2</td>" in table and "<td>–</td>" in table  # no benchmark row, no quality yet
