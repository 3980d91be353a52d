"""The self-contained report.html: plotly.js inlined once, Table 1 with the minority column highlighted."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

import plotly.offline

from backend.reports.figures import confusion_heatmap, minority_vs_synthetic, per_class_bars, training_curves
from backend.reports.tables import (
    ASSESS_NOTE,
    LONGTAIL_NOTE,
    VERDICT_NOTE,
    assessments_html,
    longtail_html,
    quality_html,
    rounds_html,
    selection_note,
    summarize,
    summary_html,
    verdicts_html,
)

STYLE = """
.samples { display: flex; align-items: center; gap: 4px; margin: 4px 0; }
.samples b { width: 10rem; flex: none; }
.samples img { width: 64px; height: 64px; object-fit: contain; image-rendering: pixelated; border: 1px solid #e4e7eb; }
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #1f2933; }
table.results { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: 1rem 0;
  display: block; max-width: 100%; overflow-x: auto; }  /* 10+ classes scroll instead of overflowing */
table.results th, table.results td { border-bottom: 1px solid #d9e2ec; padding: 0.35rem 0.6rem; text-align: right; }
table.results th:first-child, table.results td:first-child { text-align: left; }
table.results .minority { background: #fff3c4; font-weight: 600; }
.figure { margin: 1.5rem 0; }
pre.meta { background: #f5f7fa; padding: 0.75rem; overflow-x: auto; font-size: 0.85rem; }
"""


def samples_html(samples: dict[str, list[str]]) -> str:
    """One row per variant: its name, then its images as small thumbnails."""
    rows = []
    for variant, uris in samples.items():
        thumbs = "".join(
            f'<img src="{html.escape(u)}" alt="{html.escape(variant)} image {i + 1}">' for i, u in enumerate(uris)
        )
        rows.append(
            f'<div class="samples" data-variant="{html.escape(variant)}"><b>{html.escape(variant)}</b>{thumbs}</div>'
        )
    return "\n".join(rows)


def render_report(
    rows: Sequence[dict[str, Any]],
    classes: Sequence[str],
    minority: Sequence[str],
    *,
    title: str = "Rebalance benchmark",
    meta: dict[str, Any] | None = None,
    quality: dict[str, dict[str, Any]] | None = None,
    rounds: Sequence[dict[str, Any]] | None = None,
    verdicts: Sequence[dict[str, Any]] | None = None,
    assessments: dict[str, dict[str, Any]] | None = None,
    groups: dict[str, list[str]] | None = None,
    samples: dict[str, list[str]] | None = None,
) -> str:
    """A complete HTML document that opens offline: table, figures (one confusion matrix per variant), metadata.

    ``quality`` (variant -> the quality panel of its selection, ``tables.quality_html``) adds a table of
    precision/recall/density/coverage/Fréchet beside each variant's minority accuracy; ``rounds`` (one
    dict per generate -> select -> reweight round, ``tables.rounds_html``) a table of the closed loop;
    ``groups`` (a long tail's shot groups) the balanced and many/medium/few-shot accuracy of each variant;
    ``samples`` (variant -> image URIs, data: URIs so the file stays self-contained) a row of the images each
    synthetic variant trained on.
    """
    esc = html.escape
    summary = summarize(rows, classes)
    figures = [per_class_bars(rows, classes, minority), minority_vs_synthetic(rows, classes, minority)]
    if any(r.get("history") for r in rows):
        figures.append(training_curves(rows, classes, minority))
    for s in summary:
        if any(r.get("confusion") for r in rows if r["variant"] == s.variant):
            figures.append(confusion_heatmap(rows, classes, minority, variant=s.variant))
    divs = [
        f'<div class="figure">{fig.to_html(full_html=False, include_plotlyjs=False, default_height="460px")}</div>'
        for fig in figures
    ]
    extra = []
    if groups:
        extra += ["<h2>Long tail: balanced and shot-group accuracy</h2>", f"<p>{esc(LONGTAIL_NOTE)}</p>",
                  longtail_html(rows, groups)]  # fmt: skip
    if verdicts:
        extra += ["<h2>Verdict: do the synthetic images help?</h2>", f"<p>{esc(VERDICT_NOTE)}</p>",
                  verdicts_html(verdicts)]  # fmt: skip
    if assessments:
        extra += ["<h2>Can a classifier tell the generated images from real ones?</h2>",
                  f"<p>{esc(ASSESS_NOTE)}</p>", assessments_html(assessments)]  # fmt: skip
    if quality:
        extra += [
            "<h2>Quality of the synthetic images</h2>",
            "<p>Each selection's picks and whole pool against the kept real images of the minority class, in the "
            "selection classifier's own feature space (no downloaded network): precision and recall "
            "(Kynkäänniemi 2019), density and coverage (Naeem 2020), Fréchet distance. Values compare "
            "variants of this study, not published FIDs.</p>",
            quality_html(quality, rows, minority),
        ]
    if samples:
        extra += ["<h2>What the synthetic variants trained on</h2>",
                  "<p>The first images of each synthetic variant (a selection's picks in the order picked, or "
                  "the pool's first images); the classical variants train on real images only.</p>",
                  samples_html(samples)]  # fmt: skip
    if rounds:
        extra += [
            "<h2>Rounds: generate → select → reweight</h2>",
            "<p>Each round generates a pool whose prompt-slot values are drawn in proportion to how well they "
            "did in the previous round's selection (additive smoothing, no value drops to zero), selects from "
            "it, and is benchmarked as its own variant with the same number of picks.</p>",
            rounds_html(rounds, rows, minority),
        ]
    meta_block = ""
    if meta:
        meta_block = f'<h2>Configuration</h2>\n<pre class="meta">{esc(json.dumps(meta, indent=2, default=str))}</pre>'
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f"<title>{esc(title)}</title>",
            f"<style>{STYLE}</style>",
            # Inlined once so the file works offline and every figure below shares it.
            f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>',
            "</head>",
            "<body>",
            f"<h1>{esc(title)}</h1>",
            f"<p>Test accuracy in percent, mean ± std over seeds. {'Few-shot' if groups else 'Minority'} "
            f"class{'es' if len(minority) > 1 else ''}: <b>{esc(', '.join(minority))}</b> "
            f"(highlighted). {esc(selection_note(rows, minority))}</p>",
            summary_html(summary, classes, minority),
            *extra,
            *divs,
            meta_block,
            "</body>",
            "</html>",
        ]
    )
