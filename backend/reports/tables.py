"""Table-1 style summaries and the results.csv / results.json exports."""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from backend.training.metrics import mean_std


def results_columns(classes: Sequence[str]) -> list[str]:
    """The results.csv header: ``variant,seed,overall_acc,acc_<class>...``."""
    return ["variant", "seed", "overall_acc", *[f"acc_{c}" for c in classes]]


def _fmt(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def results_csv(rows: Sequence[dict[str, Any]], classes: Sequence[str]) -> str:
    """One line per (variant, seed); accuracies in percent with two decimals; empty for a missing class."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(results_columns(classes))
    for row in rows:
        per_class = row.get("per_class") or {}
        writer.writerow(
            [row["variant"], row["seed"], _fmt(row["overall_acc"]), *[_fmt(per_class.get(c)) for c in classes]]
        )
    return out.getvalue()


def read_results_csv(text: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Parse results.csv back into (classes, rows)."""
    reader = csv.DictReader(io.StringIO(text))
    fields = reader.fieldnames or []
    if fields[:3] != ["variant", "seed", "overall_acc"] or not all(f.startswith("acc_") for f in fields[3:]):
        raise ValueError(f"not a results.csv header: {fields}")
    classes = [f[len("acc_") :] for f in fields[3:]]
    rows = []
    for rec in reader:
        rows.append(
            {
                "variant": rec["variant"],
                "seed": int(rec["seed"]),
                "overall_acc": float(rec["overall_acc"]),
                "per_class": {c: float(rec[f"acc_{c}"]) if rec[f"acc_{c}"] else None for c in classes},
            }
        )
    return classes, rows


@dataclass
class SummaryRow:
    """One variant across its seeds: (mean, std) per column, percent."""

    variant: str
    seeds: list[int]
    overall: tuple[float, float]
    per_class: dict[str, tuple[float, float]]

    def minority_mean(self, minority: Sequence[str]) -> float:
        values = [self.per_class[c][0] for c in minority if c in self.per_class]
        return sum(values) / len(values) if values else float("nan")


def summarize(rows: Sequence[dict[str, Any]], classes: Sequence[str]) -> list[SummaryRow]:
    """Group rows by variant (in order of first appearance) and take mean ± std over seeds."""
    order: list[str] = []
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["variant"] not in groups:
            order.append(row["variant"])
            groups[row["variant"]] = []
        groups[row["variant"]].append(row)
    summary = []
    for variant in order:
        runs = groups[variant]
        summary.append(
            SummaryRow(
                variant=variant,
                seeds=[r["seed"] for r in runs],
                overall=mean_std(r["overall_acc"] for r in runs),
                per_class={c: mean_std((r.get("per_class") or {}).get(c) for r in runs) for c in classes},
            )
        )
    return summary


def column_order(classes: Sequence[str], minority: Sequence[str]) -> list[str]:
    """Minority classes first (the study's Table 1 leads with *cat*), then the rest in dataset order."""
    return [c for c in classes if c in minority] + [c for c in classes if c not in minority]


def _cell(mean: float, std: float, n: int) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def summary_csv(summary: Sequence[SummaryRow], classes: Sequence[str], minority: Sequence[str]) -> str:
    """Table 1 as CSV: variant, seeds, overall_mean, overall_std, then <class>_mean/<class>_std."""
    cols = column_order(classes, minority)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["variant", "seeds", "overall_mean", "overall_std", *[f"{c}_{s}" for c in cols for s in ("mean", "std")]]
    )
    for row in summary:
        values = [row.overall, *[row.per_class[c] for c in cols]]
        writer.writerow([row.variant, len(row.seeds), *[_fmt(v) for pair in values for v in pair]])
    return out.getvalue()


def summary_markdown(summary: Sequence[SummaryRow], classes: Sequence[str], minority: Sequence[str]) -> str:
    """Table 1 as Markdown; minority columns marked with a star."""
    cols = column_order(classes, minority)
    head = ["variant", "overall", *[f"{c} *" if c in minority else c for c in cols]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary:
        n = len(row.seeds)
        cells = [row.variant, _cell(*row.overall, n), *[_cell(*row.per_class[c], n) for c in cols]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_html(summary: Sequence[SummaryRow], classes: Sequence[str], minority: Sequence[str]) -> str:
    """Table 1 as an HTML ``<table class="results">``; minority header and cells carry class="minority"."""
    cols = column_order(classes, minority)
    esc = html.escape

    def th(text: str, cls: str = "") -> str:
        return f"<th{f' class={chr(34)}{cls}{chr(34)}' if cls else ''}>{esc(text)}</th>"

    head = (
        th("variant") + th("seeds") + th("overall") + "".join(th(c, "minority" if c in minority else "") for c in cols)
    )
    body = []
    for row in summary:
        n = len(row.seeds)
        cells = [f"<td>{esc(row.variant)}</td>", f"<td>{n}</td>", f"<td>{_cell(*row.overall, n)}</td>"]
        for c in cols:
            cls = ' class="minority"' if c in minority else ""
            cells.append(f"<td{cls}>{_cell(*row.per_class[c], n)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return _table("results", head, body)


def _table(css_class: str, head: str, body: list[str]) -> str:
    """An HTML ``<table>`` from its header cells and body rows."""
    return (
        f'<table class="{css_class}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
        + "\n".join(body)
        + "\n</tbody>\n</table>"
    )


def selection_note(rows: Sequence[dict[str, Any]], minority: Sequence[str]) -> str:
    """One sentence on how the tested weights were chosen and what the validation split holds, per seed."""
    rules = sorted({r["select_epoch"] for r in rows if r.get("select_epoch")})
    how = {"last": "the last epoch", "best_balanced": "the best mean per-class validation accuracy"}
    text = (
        f"Weights tested: {' / '.join(how.get(r, r) for r in rules) or 'not recorded'}; never chosen on the test set."
    )
    splits = {r["seed"]: r["validation"] for r in rows if r.get("validation")}
    for seed, split in sorted(splits.items()):
        held = sum(split["counts"].get(c, 0) for c in minority)
        text += f" Validation split of seed {seed}: {split['size']} real images, {held} of the minority class."
    return text


VERDICT_WORDS = {"helps": "helps", "hurts": "hurts", "cant_tell": "can't tell"}


def _ci(ci: Sequence[float] | None) -> str:
    return "–" if not ci else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def verdicts_html(verdicts: Sequence[dict[str, Any]]) -> str:
    """One line per synthetic variant: its verdict against the strongest classical variant, the mean paired
    differences (percentage points) with their 95 % intervals, the seeds compared and why."""
    esc = html.escape
    cols = ("variant", "verdict", "against", "minority Δ (pp)", "95 % interval", "overall Δ (pp)", "95 % interval",
            "seeds", "why")  # fmt: skip
    body = []
    for v in verdicts:
        why = v.get("reason", "")
        if v.get("verdict") == "cant_tell" and v.get("seeds_needed"):
            why += f"; about {v['seeds_needed']} seeds would resolve it at this spread"
        cells = [
            esc(v["variant"]),
            f'<b class="verdict-{esc(v["verdict"])}">{VERDICT_WORDS.get(v["verdict"], esc(v["verdict"]))}</b>',
            esc(str(v.get("baseline") or "–")),
            _num(v.get("minority_delta"), 2),
            _ci(v.get("minority_ci")),
            _num(v.get("overall_delta"), 2),
            _ci(v.get("overall_ci")),
            esc(", ".join(map(str, v.get("seeds") or [])) or "–"),
            esc(why),
        ]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{c}</th>" for c in cols)
    return f'<table class="results verdicts"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


VERDICT_NOTE = (
    "Each variant with synthetic images against the classical remedy with the best mean minority accuracy: the mean "
    "paired difference over seeds, its 95 % interval covering both the seed-to-seed spread and the test set's "
    "sampling noise (a bootstrap over test images). helps = minority interval above 0 and overall accuracy down "
    "by at most the margin; hurts = minority interval below 0 or overall clearly lower; can't tell = anything "
    "else, one seed, or an under-trained run."
)


ASSESS_NOTE = (
    "A two-sample test per pool: logistic regression on pixels trained to tell the pool's images from real images "
    "of the same class, scored on held-out halves (domain AUC; 0.5 = indistinguishable). A pool a classifier "
    "tells apart (AUC >= 0.9) teaches 'looks generated = this class' when only one class gets such images: use "
    "the every-class recipe (samples of every class, each labelled with it) on the oversampled set."
)


def assessments_html(assessments: dict[str, dict[str, Any]]) -> str:
    """One line per variant's pool: its domain AUC, how it was measured, the counts, and the flag."""
    esc = html.escape
    cols = ("variant", "pool", "domain AUC", "measured on", "real", "generated", "flag")
    body = []
    for variant, a in assessments.items():
        flag = a.get("flagged")
        cells = [
            esc(variant),
            esc(str(a.get("pool_id", ""))),
            _num(a.get("domain_auc"), 3),
            esc(str(a.get("method", ""))),
            _num(a.get("n_real")),
            _num(a.get("n_synthetic")),
            esc(a.get("reason") or ("flagged" if flag else "–" if flag is None else "ok")),
        ]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{c}</th>" for c in cols)
    return f'<table class="results assessments"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def results_json(
    rows: Sequence[dict[str, Any]],
    classes: Sequence[str],
    minority: Sequence[str],
    meta: dict[str, Any] | None = None,
    verdicts: Sequence[dict[str, Any]] | None = None,
    groups: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Everything in one JSON-ready dict: runs, the mean ± std summary, the verdicts and any metadata; with a
    long tail's ``groups``, each variant's balanced and shot-group accuracy too."""
    summary = summarize(rows, classes)
    longtail = {s["variant"]: s for s in longtail_summary(rows, groups or {})}

    def clean(v: float) -> float | None:
        return None if math.isnan(v) else v

    return {
        "classes": list(classes),
        "minority": list(minority),
        "meta": meta or {},
        "verdicts": [dict(v) for v in verdicts or []],
        "groups": dict(groups or {}),
        "rows": [{k: v for k, v in r.items() if k != "test_correct"} for r in rows],
        "summary": [
            {
                "variant": s.variant,
                "seeds": s.seeds,
                "overall": {"mean": clean(s.overall[0]), "std": clean(s.overall[1])},
                "per_class": {c: {"mean": clean(m), "std": clean(sd)} for c, (m, sd) in s.per_class.items()},
                "balanced": {
                    "mean": clean(longtail[s.variant]["balanced"][0]),
                    "std": clean(longtail[s.variant]["balanced"][1]),
                },
                "groups": {
                    g: {"mean": clean(m), "std": clean(sd)} for g, (m, sd) in longtail[s.variant]["groups"].items()
                },
            }  # fmt: skip
            for s in summary
        ],
    }


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def minority_accuracy(rows: Sequence[dict[str, Any]], minority: Sequence[str]) -> dict[str, float]:
    """Mean test accuracy over the minority classes and seeds, per variant (percent)."""
    out: dict[str, list[float]] = {}
    for r in rows:
        values = [v for c in minority if (v := (r.get("per_class") or {}).get(c)) is not None]
        if values:
            out.setdefault(r["variant"], []).append(sum(values) / len(values))
    return {v: sum(a) / len(a) for v, a in out.items()}


QUALITY_COLUMNS = ("precision", "recall", "density", "coverage", "frechet")


def quality_html(quality: dict[str, dict[str, Any]], rows: Sequence[dict[str, Any]], minority: Sequence[str]) -> str:
    """The quality panel of each selection-backed variant beside its minority accuracy, as a ``<table>``.

    ``quality``: variant -> {"selection_id", "target", "picks": panel | None, "pool": panel | None}
    (panels as ``selection/quality.py`` computes them: the picks and the whole pool, each against the
    kept real images of the target class, in the selection classifier's feature space).
    """
    acc = minority_accuracy(rows, minority)
    esc = html.escape
    head = "".join(f"<th>{c}</th>" for c in ("variant", "selection", "minority acc (%)", "set", *QUALITY_COLUMNS))
    body = []
    for variant, q in quality.items():
        for label, key in (("picks", "picks"), ("pool", "pool")):
            panel = q.get(key) or {}
            if not panel:
                continue
            cells = [esc(variant), esc(str(q.get("selection_id", ""))), _num(acc.get(variant), 2), label]
            cells += [_num(panel.get(c), 1 if c == "frechet" else 3) for c in QUALITY_COLUMNS]
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<table class="results quality"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def rounds_html(rounds: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], minority: Sequence[str]) -> str:
    """One line per generate -> select -> reweight round: its pool and selection, the picks (how many, mean
    minority posterior), their quality panel against the kept real minority, the minority accuracy of
    the round's benchmark variant, and the slot value the next round weights most."""
    acc = minority_accuracy(rows, minority)
    esc = html.escape
    cols = ("round", "variant", "pool", "selection", "picks", "mean p(minority)", "precision", "coverage",
            "frechet", "minority acc (%)", "next round's top value")  # fmt: skip
    body = []
    for r in rounds:
        panel = r.get("quality") or {}
        top = r.get("top_weight")
        cells = [
            str(r.get("round")),
            esc(str(r.get("variant", ""))),
            esc(str(r.get("pool_id", ""))),
            esc(str(r.get("selection_id", ""))),
            _num(r.get("picks")),
            _num(r.get("minority_prob"), 3),
            _num(panel.get("precision"), 3),
            _num(panel.get("coverage"), 3),
            _num(panel.get("frechet"), 1),
            _num(acc.get(r.get("variant", "")), 2),
            esc(f"{top['slot']}={top['value']} ({top['weight']:.2f})") if top else "–",
        ]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{c}</th>" for c in cols)
    return f'<table class="results rounds"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


LONGTAIL_NOTE = (
    "Long tail: balanced accuracy is the mean per-class accuracy; many-shot classes have more than 100 images "
    "in the imbalanced training set, medium-shot 20 to 100, few-shot fewer than 20 (counted before any "
    "synthetic image or copy is added). Mean ± std over seeds."
)


def longtail_summary(rows: Sequence[dict[str, Any]], groups: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Per variant (in order of first appearance): seeds, balanced accuracy and each shot group's accuracy as
    (mean, std) over seeds; rows carry ``balanced_acc`` and ``groups`` (``services.benchmarks.with_longtail``)."""
    order: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        order.setdefault(row["variant"], []).append(row)
    return [
        {
            "variant": variant,
            "seeds": [r["seed"] for r in runs],
            "balanced": mean_std(r.get("balanced_acc") for r in runs),
            "groups": {g: mean_std((r.get("groups") or {}).get(g) for r in runs) for g in groups},
        }
        for variant, runs in order.items()
    ]


def longtail_html(rows: Sequence[dict[str, Any]], groups: dict[str, list[str]]) -> str:
    """The long-tail table: variant, seeds, balanced accuracy, then many/medium/few-shot accuracy (the groups
    present), each header listing its classes."""
    esc = html.escape
    names = {"many": "many-shot", "medium": "medium-shot", "few": "few-shot"}
    head = "<th>variant</th><th>seeds</th><th>balanced</th>" + "".join(
        f'<th title="{esc(", ".join(groups[g]))}">{names[g]} ({len(groups[g])})</th>' for g in groups
    )
    body = []
    for s in longtail_summary(rows, groups):
        n = len(s["seeds"])
        cells = [f"<td>{esc(s['variant'])}</td>", f"<td>{n}</td>", f"<td>{_cell(*s['balanced'], n)}</td>"]
        cells += [f"<td>{_cell(*s['groups'][g], n)}</td>" for g in groups]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return _table("results longtail", head, body)
