"""Plotly figures of a benchmark: per-class bars, minority accuracy vs synthetic images, curves, confusion."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from backend.reports.tables import column_order, summarize

Rows = Sequence[dict[str, Any]]
MINORITY_COLOR = "rgba(255, 196, 0, 0.18)"


def _nan_to_none(values: Sequence[float]) -> list[float | None]:
    return [None if v is None or np.isnan(v) else float(v) for v in values]


def per_class_bars(rows: Rows, classes: Sequence[str], minority: Sequence[str]) -> go.Figure:
    """Grouped bars: x = overall + each class (minority first, shaded), one bar per variant, error bar = std."""
    cols = column_order(classes, minority)
    fig = go.Figure()
    for s in summarize(rows, classes):
        means = [s.overall[0], *[s.per_class[c][0] for c in cols]]
        stds = [s.overall[1], *[s.per_class[c][1] for c in cols]]
        fig.add_trace(
            go.Bar(
                name=s.variant,
                x=["overall", *cols],
                y=_nan_to_none(means),
                error_y={"type": "data", "array": _nan_to_none(stds), "visible": len(s.seeds) > 1},
                hovertemplate=f"{s.variant}<br>%{{x}}: %{{y:.2f}} %<extra></extra>",
            )
        )
    for i, c in enumerate(cols, start=1):
        if c in minority:
            fig.add_vrect(x0=i - 0.5, x1=i + 0.5, fillcolor=MINORITY_COLOR, line_width=0, layer="below")
    fig.update_layout(
        barmode="group",
        title="Test accuracy per class (shaded: minority)",
        yaxis={"title": "accuracy (%)", "range": [0, 100]},
        legend={"title": "variant"},
    )
    return fig


def _minority_acc(row: dict[str, Any], minority: Sequence[str]) -> float | None:
    """Mean accuracy over the minority classes of one run (None when none was measured)."""
    values = [v for c in minority if (v := (row.get("per_class") or {}).get(c)) is not None]
    return float(np.mean(values)) if values else None


# Where a point's label goes, in turn, when several points would put theirs in the same place.
LABEL_POSITIONS = (
    "top center", "bottom center", "middle right", "middle left", "top right", "bottom right", "top left", "bottom left"
)  # fmt: skip


def label_positions(points: Sequence[tuple[float, float]], x_tol: float, y_tol: float) -> list[str]:
    """A text position per (x, y) point such that points closer than (x_tol, y_tol) to an earlier point
    of their cluster get different positions (equal values used to print their labels on top of each
    other). Clusters are chains of close points; beyond 8 members positions repeat."""
    out = [LABEL_POSITIONS[0]] * len(points)
    taken: list[tuple[float, float, int]] = []  # (x, y, slot) of placed points
    for i, (x, y) in enumerate(points):
        if np.isnan(y):
            continue
        near = {slot for px, py, slot in taken if abs(px - x) <= x_tol and abs(py - y) <= y_tol}
        slot = next((k for k in range(len(LABEL_POSITIONS)) if k not in near), len(taken) % len(LABEL_POSITIONS))
        out[i] = LABEL_POSITIONS[slot]
        taken.append((x, y, slot))
    return out


def minority_vs_synthetic(rows: Rows, classes: Sequence[str], minority: Sequence[str]) -> go.Figure:
    """Minority-class accuracy (mean over minority classes) against the synthetic images each variant added.
    Variants at (nearly) the same point get their labels on different sides of it."""
    fig = go.Figure()
    points = []
    for s in summarize(rows, classes):
        runs = [r for r in rows if r["variant"] == s.variant]
        n_syn = int(np.mean([r.get("n_synthetic", 0) or 0 for r in runs]))
        accs = [a for a in (_minority_acc(r, minority) for r in runs) if a is not None]
        mean = float(np.mean(accs)) if accs else float("nan")
        std = float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0
        points.append((s.variant, n_syn, mean, std, len(accs)))
    xs = [p[1] for p in points]
    x_tol = 0.04 * max(max(xs, default=0) - min(xs, default=0), 1)  # ~ a label's width on the axis
    positions = label_positions([(p[1], p[2]) for p in points], x_tol, 4.0)  # 4 points of accuracy ~ a line
    for (variant, n_syn, mean, std, n_accs), position in zip(points, positions, strict=True):
        fig.add_trace(
            go.Scatter(
                name=variant,
                x=[n_syn],
                y=_nan_to_none([mean]),
                error_y={"type": "data", "array": [std], "visible": n_accs > 1},
                mode="markers+text",
                text=[variant],
                textposition=position,
                marker={"size": 11},
                hovertemplate=f"{variant}<br>%{{x}} synthetic images<br>minority %{{y:.2f}} %<extra></extra>",
            )
        )
    fig.update_layout(
        title=f"Minority-class accuracy ({', '.join(minority)}) vs synthetic images added",
        xaxis={"title": "synthetic images added"},
        yaxis={"title": "minority accuracy (%)", "range": [0, 100]},
        showlegend=False,
    )
    return fig


def training_curves(rows: Rows, classes: Sequence[str], minority: Sequence[str]) -> go.Figure:
    """Training loss and validation accuracy per epoch; one line per run, coloured by variant."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("training loss", "validation accuracy (%)"))
    palette = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880", "#ff97ff"]
    variants = [s.variant for s in summarize(rows, classes)]
    for row in rows:
        history = row.get("history") or []
        if not history:
            continue
        color = palette[variants.index(row["variant"]) % len(palette)]
        name = f"{row['variant']} (seed {row['seed']})"
        epochs = [h["epoch"] for h in history]
        common = {
            "legendgroup": row["variant"],
            "line": {"color": color},
            "mode": "lines+markers",
        }  # markers: a 1-epoch run still shows
        fig.add_trace(go.Scatter(x=epochs, y=[h["train_loss"] for h in history], name=name, **common), 1, 1)
        fig.add_trace(
            go.Scatter(
                x=epochs, y=_nan_to_none([h.get("val_acc") for h in history]), name=name, showlegend=False, **common
            ),
            1,
            2,
        )
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(title="Training curves")
    return fig


def confusion_heatmap(
    rows: Rows, classes: Sequence[str], minority: Sequence[str], variant: str | None = None
) -> go.Figure:
    """Row-normalised test confusion matrix (percent of each true class), summed over the variant's seeds."""
    runs = [r for r in rows if r.get("confusion") and (variant is None or r["variant"] == variant)]
    if not runs:
        raise ValueError(f"no confusion matrix for variant {variant!r}")
    variant = runs[0]["variant"]
    cm = np.sum([np.asarray(r["confusion"], dtype=np.float64) for r in runs if r["variant"] == variant], axis=0)
    support = cm.sum(1, keepdims=True)
    pct = np.divide(100.0 * cm, support, out=np.zeros_like(cm), where=support > 0)
    fig = go.Figure(
        go.Heatmap(
            z=pct.round(2).tolist(),
            x=list(classes),
            y=list(classes),
            colorscale="Blues",
            zmin=0,
            zmax=100,
            text=cm.astype(int).tolist(),
            texttemplate="%{z:.0f}",
            hovertemplate="true %{y}<br>predicted %{x}<br>%{z:.1f} % (%{text} images)<extra></extra>",
            colorbar={"title": "% of true class"},
        )
    )
    fig.update_layout(
        title=f"Confusion matrix: {variant}",
        xaxis={"title": "predicted", "side": "bottom"},
        yaxis={"title": "true", "autorange": "reversed"},
    )
    return fig


FIGURES: dict[str, Callable[..., go.Figure]] = {
    "per_class": per_class_bars,
    "minority_vs_synthetic": minority_vs_synthetic,
    "curves": training_curves,
    "confusion": confusion_heatmap,
}


def build_figure(name: str, rows: Rows, classes: Sequence[str], minority: Sequence[str], **kwargs: Any) -> go.Figure:
    """Build a figure by name (see FIGURES); unknown names raise ValueError listing the choices."""
    if name not in FIGURES:
        raise ValueError(f"unknown figure {name!r}; choose one of {sorted(FIGURES)}")
    return FIGURES[name](rows, classes, minority, **kwargs)
