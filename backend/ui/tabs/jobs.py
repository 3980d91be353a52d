"""Jobs tab: every job with kind, status, progress, ETA and message; a job's params, result, error and
logs; cancel and retry."""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

from backend.ui.client import ApiError
from backend.ui.common import Ctx, error_html, fetch_job, fmt_eta, job_card, ok_html, parse_id

STATUSES = ["all", "queued", "running", "succeeded", "failed", "cancelled"]
COLUMNS = ["id", "kind", "status", "progress", "ETA", "message", "created (UTC)"]  # the API stores UTC


def job_rows(jobs: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            j["id"],
            j["kind"],
            j["status"],
            f"{float(j.get('progress') or 0) * 100:.0f}%",
            "" if j["status"] in ("succeeded", "failed", "cancelled") else fmt_eta(j.get("eta_s")),
            (j.get("error") or j.get("message") or "")[:120],
            str(j.get("created_at", ""))[:19].replace("T", " "),
        ]
        for j in jobs
    ]


def build(ctx: Ctx) -> None:
    api = ctx.api
    with gr.Row():
        status = gr.Dropdown(STATUSES, value="all", label="Status", scale=1, elem_id="jobs-status")
        kind = gr.Dropdown(["all"], value="all", label="Kind", scale=1, elem_id="jobs-kind")
        health = gr.HTML(elem_id="jobs-health", elem_classes="rb-health")
    table = gr.Dataframe(
        headers=COLUMNS,
        value=[],
        interactive=False,
        wrap=True,
        max_height=300,
        column_widths=["6%", "14%", "10%", "8%", "8%", "40%", "14%"],
        label="Jobs (newest first; click a row for details)",
        elem_id="jobs-table",
    )
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, elem_classes="rb-card"):
            # No ``minimum``: an empty Number reaches the server as 0, and Gradio would reject it before
            # any handler runs -- which also broke the tab's timer (the table and health stayed empty).
            # A Textbox, not a Number: an empty Number shows 0, which reads as a job id.
            job_id = gr.Textbox(label="Job id", placeholder="click a row or type an id", max_lines=1, elem_id="jobs-id")
            with gr.Row():
                cancel = gr.Button("Cancel", variant="stop", min_width=80, elem_id="jobs-cancel")
                retry = gr.Button("Retry", min_width=80, elem_id="jobs-retry")
            action_msg = gr.HTML(elem_id="jobs-action-msg")
            card = gr.HTML(job_card(None), elem_id="jobs-card")
            # A JSON tree, not a code editor: long results scroll inside it instead of being cut off, and
            # there are no line numbers to fall out of step with wrapped lines.
            details = gr.JSON(
                label="Params and result", open=True, max_height=480, buttons=["copy"], elem_id="jobs-details"
            )
        with gr.Column(scale=3, elem_classes="rb-card"):
            logs = gr.Textbox(label="Logs (times in UTC)", lines=16, max_lines=16, autoscroll=True, elem_id="jobs-logs")

    def kinds() -> Any:
        try:
            names = [k["name"] for k in api.get("/jobs/kinds")]
        except ApiError:
            names = []
        return gr.update(choices=["all", *names])

    def listing(st: str, kd: str) -> Any:
        try:
            page = api.get("/jobs", status=None if st == "all" else st, kind=None if kd == "all" else kd, limit=100)
        except ApiError as exc:
            return gr.update(label=f"Jobs: {exc.message}")
        return job_rows(page.get("items", []))

    def health_html() -> str:
        try:
            h = api.get("/health")
        except ApiError as exc:
            return error_html(exc.message)
        ok = "ok" if h.get("status") == "ok" else "degraded"
        return (
            f'<span class="rb-badge rb-badge-{"succeeded" if ok == "ok" else "failed"}">{ok}</span> '
            f"{h.get('live_workers', 0)} worker(s) · device {h.get('device')} · v{h.get('version')}"
        )

    def detail(text: Any) -> tuple[str, Any, str]:
        jid = parse_id(text)
        job = fetch_job(api, jid)
        if not job:
            return job_card(None), None, ""
        shown = {k: job.get(k) for k in ("params", "result", "error", "attempts", "worker_id", "started_at")}
        try:
            lines = api.get(f"/jobs/{int(jid)}/logs", limit=500)
        except ApiError:
            lines = []
        text = "\n".join(f"{str(row['ts'])[11:19]} {row['level']:<7} {row['message']}" for row in lines)
        return job_card(job), json.loads(json.dumps(shown, default=str)), text

    def on_row(evt: gr.SelectData, rows: Any) -> Any:
        row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        try:
            return str(int(rows.iloc[row, 0]) if hasattr(rows, "iloc") else int(rows[row][0]))
        except (IndexError, ValueError, TypeError, KeyError):
            return gr.skip()

    def act(verb: str) -> Any:
        def run(text: Any) -> str:
            jid = parse_id(text)
            if jid is None:
                return error_html("job: enter or click a job first (a whole number such as 12)")
            try:
                job = api.post(f"/jobs/{int(jid)}/{verb}")
            except ApiError as exc:
                return error_html(exc.message)
            return ok_html(f"job #{job['id']}: {verb} requested; the card below follows it")

        return run

    def tick(st: str, kd: str, jid: Any) -> tuple[Any, str, str, str, str]:
        return (listing(st, kd), health_html(), *detail(jid))

    ctx.demo.load(kinds, outputs=kind, show_progress="hidden")
    outs = [table, health, card, details, logs]
    gr.on([status.change, kind.change], listing, [status, kind], table, show_progress="hidden")
    table.select(on_row, table, job_id, show_progress="hidden")
    job_id.change(detail, job_id, [card, details, logs], show_progress="hidden")
    cancel.click(act("cancel"), job_id, action_msg).then(detail, job_id, [card, details, logs])
    retry.click(act("retry"), job_id, action_msg).then(detail, job_id, [card, details, logs])
    ctx.timer.tick(tick, [status, kind, job_id], outs, show_progress="hidden")
