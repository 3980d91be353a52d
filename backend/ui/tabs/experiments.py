"""Experiments tab: a whole study (dataset → generation → selection → benchmark → report) as one thing.

Start from a recipe (``GET /api/experiments/templates``), a past experiment, or an uploaded or pasted
YAML; edit it as YAML (the keys are the CLI's, listed in README.md); launch it, watch its stages, open
the report inline, and find past experiments with their headline minority accuracy. A reload returns
to the experiment.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import gradio as gr
import yaml

from backend.ui.client import ApiError
from backend.ui.common import Ctx, error_html, job_card, note_html, ok_html, parse_id, persist, public_base

COLUMNS = ["id", "name", "status", "progress", "answer: verdict; minority acc (best variant)", "created"]


VERDICT_WORDS = {"helps": "helps", "hurts": "hurts", "cant_tell": "can't tell"}


def _headline(exp: dict[str, Any]) -> str:
    """The study's answer: each synthetic variant's verdict against the strongest classical one with its
    interval; then the best variant's mean accuracy on the minority class."""
    parts = []
    for v in exp.get("verdicts") or []:
        word = VERDICT_WORDS.get(v["verdict"], v["verdict"])
        if v.get("minority_ci"):
            lo, hi = v["minority_ci"]
            word += f" ({v['minority_delta']:+.1f} pp [{lo:+.1f}, {hi:+.1f}] vs {v['baseline']})"
        parts.append(f"{v['variant']}: {word}")
    heads = exp.get("headline") or {}
    if heads:
        best = max(heads, key=heads.get)
        base = f"; imbalanced {heads['imbalanced']:.1f}%" if "imbalanced" in heads and best != "imbalanced" else ""
        parts.append(f"{heads[best]:.1f}% ({best}{base})")
    return "; ".join(parts)


def rows(items: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            e["id"],
            e["name"],
            e["status"],
            f"{float(e.get('progress') or 0) * 100:.0f}%",
            _headline(e),
            str(e.get("created_at", ""))[:19].replace("T", " "),
        ]
        for e in items
    ]


def stages_html(exp: dict[str, Any] | None) -> str:
    """Each stage as a card in dependency order, with the stages it waits for."""
    if not exp:
        return '<div class="rb-job rb-empty">No experiment yet.</div>'
    status = exp["status"]
    head = (
        f'<div class="rb-exp-head" data-status="{status}"><b>{html.escape(exp["name"])} #{exp["id"]}</b> '
        f'<span class="rb-badge rb-badge-{status}">{status}</span></div>'
    )
    if exp.get("error"):
        head += error_html(exp["error"])
    cards = []
    for s in exp["stages"]:
        needs = f" ← {', '.join(s['needs'])}" if s["needs"] else ""
        card = (
            job_card(
                {
                    "kind": s["kind"],
                    "id": s["job_id"],
                    **{k: s.get(k) for k in ("status", "progress", "message", "eta_s")},
                }
            )
            if s["job_id"]
            else note_html(f"{s['kind']}: waiting for {', '.join(s['needs'])}")
        )
        cards.append(
            f'<div class="rb-stage" data-stage="{s["name"]}" data-status="{s["status"]}">'
            f"<b>{html.escape(s['name'])}</b>{html.escape(needs)}{card}</div>"
        )
    return head + "".join(cards)


def report_html(base: str, exp: dict[str, Any] | None) -> str:
    if not exp or exp.get("status") != "succeeded":
        return ""
    url = f"{base}/api/experiments/{exp['id']}/report.html"
    return (
        f'<p><a href="{url}" target="_blank">Open the report</a> · '
        f'<a href="{base}/api/experiments/{exp["id"]}/results.csv">results.csv</a></p>'
        f'<iframe id="exp-report-frame" src="{url}" style="width:100%;height:720px;border:0"></iframe>'
    )


def build(ctx: Ctx) -> None:
    api = ctx.api
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, elem_classes="rb-card"):
            with gr.Row():
                template = gr.Dropdown([], label="Start from a recipe", elem_id="exp-template", scale=2)
                upload = gr.File(label="…or upload a YAML", file_types=[".yaml", ".yml"], elem_id="exp-upload", scale=1)
            text = gr.Textbox(
                label="Config (YAML; the keys of `python app.py experiment`, listed in README.md)",
                lines=18,
                max_lines=40,
                elem_id="exp-yaml",
            )
            with gr.Row():
                launch = gr.Button("Launch experiment", variant="primary", elem_id="exp-launch")
                cancel = gr.Button("Cancel", variant="stop", elem_id="exp-cancel")
                resume = gr.Button("Resume", elem_id="exp-resume")
                copy = gr.Button("Copy its config", elem_id="exp-copy")
            msg = gr.HTML(elem_id="exp-msg")
        with gr.Column(scale=2, elem_classes="rb-card"):
            exp_id = gr.Textbox(
                label="Experiment id", placeholder="launch one or click a row", max_lines=1, elem_id="exp-id"
            )
            stages = gr.HTML(stages_html(None), elem_id="exp-stages")
    report = gr.HTML(elem_id="exp-report")
    shown = gr.State(None)  # the experiment whose report the iframe shows, so ticks do not reload it
    table = gr.Dataframe(
        headers=COLUMNS, value=[], interactive=False, label="Experiments (click a row to open it)", elem_id="exp-table"
    )
    key = gr.State(None)

    recipes: dict[str, str] = {}

    def load_templates() -> Any:
        try:
            recipes.update({t["name"]: t["yaml"] for t in api.get("/experiments/templates")})
        except ApiError:
            pass
        return gr.update(choices=list(recipes))

    def from_template(name: str | None) -> Any:
        return recipes.get(name or "", gr.skip())

    def from_upload(path: str | None) -> Any:
        # Gradio saved the upload under the workspace's temp dir; the text goes to the API on launch.
        return Path(path).read_text("utf-8", errors="replace") if path else gr.skip()

    def do_launch(config: str) -> tuple[Any, str]:
        try:
            exp = api.post("/experiments", {"yaml": config or ""})
        except ApiError as exc:
            return gr.skip(), error_html(exc.message)
        return str(exp["id"]), ok_html(f"experiment #{exp['id']} launched: {len(exp['stages'])} stages")

    def copy_config(text: Any) -> tuple[Any, str]:
        """A past experiment's config (defaults filled in) as the starting point of a new one."""
        eid = parse_id(text)
        if eid is None:
            return gr.skip(), error_html("experiment: launch one or click a row first")
        try:
            exp = api.get(f"/experiments/{int(eid)}")
        except ApiError as exc:
            return gr.skip(), error_html(exc.message)
        return yaml.safe_dump(exp["config"], sort_keys=False), ok_html(f"config of experiment #{exp['id']} copied")

    def act(verb: str) -> Any:
        def run(text: Any) -> str:
            eid = parse_id(text)
            if eid is None:
                return error_html("experiment: launch one or click a row first")
            try:
                exp = api.post(f"/experiments/{int(eid)}/{verb}")
            except ApiError as exc:
                return error_html(exc.message)
            return ok_html(f"experiment #{exp['id']}: {verb} requested; its stages below follow it")

        return run

    def tick(text: Any, last: Any, request: gr.Request) -> tuple[str, Any, Any]:
        exp = None
        if (eid := parse_id(text)) is not None:
            try:
                exp = api.get(f"/experiments/{int(eid)}")
            except ApiError:
                exp = None
        done = exp["id"] if exp and exp["status"] == "succeeded" else None
        if done == last:
            return stages_html(exp), gr.skip(), gr.skip()
        return stages_html(exp), report_html(public_base(request), exp), done

    def listing() -> Any:
        try:
            return rows(api.items("/experiments", limit=50))
        except ApiError:
            return gr.skip()

    def on_row(evt: gr.SelectData, data: Any) -> Any:
        row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        try:
            return str(int(data.iloc[row, 0]) if hasattr(data, "iloc") else int(data[row][0]))
        except (IndexError, ValueError, TypeError, KeyError):
            return gr.skip()

    ctx.demo.load(load_templates, outputs=template, show_progress="hidden")
    ctx.demo.load(listing, outputs=table, show_progress="hidden")
    persist(ctx, "experiments", {"yaml": text, "experiment": exp_id}, key)
    template.input(from_template, template, text, show_progress="hidden")
    upload.upload(from_upload, upload, text, show_progress="hidden")
    launch.click(do_launch, text, [exp_id, msg]).then(listing, outputs=table, show_progress="hidden")
    cancel.click(act("cancel"), exp_id, msg)
    resume.click(act("resume"), exp_id, msg)
    copy.click(copy_config, exp_id, [text, msg])
    table.select(on_row, table, exp_id, show_progress="hidden")
    exp_id.change(tick, [exp_id, shown], [stages, report, shown], show_progress="hidden")
    ctx.timer.tick(tick, [exp_id, shown], [stages, report, shown])
    ctx.list_timer.tick(listing, outputs=table, show_progress="hidden")
