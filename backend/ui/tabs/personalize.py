"""Generate tab, Personalise panel: job `personalize_sd` (textual inversion or LoRA on the real minority
images), its loss curve and sample grids. The concepts it makes are offered in the Stable Diffusion form."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from backend.ui.client import ApiError
from backend.ui.common import (
    TINY_HINT,
    Ctx,
    choices,
    error_html,
    fetch_job,
    int_or_none,
    job_card,
    live_choices,
    persist,
    safe_items,
    show_card_now,
    submit,
)
from backend.ui.tabs.dataset import imbalance_spec

# form field -> job param whose choices, default, limits and description the API supplies
PARAMS = {
    "model": "model:choices",
    "method": "method",
    "token": "token",
    "steps": "steps",
    "resolution": "resolution",
    "batch": "batch_size",
    "every": "sample_every",
    "seed": "seed",
}


def concept_label(c: dict[str, Any]) -> str:
    return f"#{c['id']} {c.get('token')} ({c.get('method')}, {c.get('base_model')}, {c.get('steps_done')} steps)"


def list_concepts(api: Any) -> list[tuple[str, int]]:
    return choices(safe_items(api, "/concepts"), concept_label)


def curve(history: list[dict[str, Any]]) -> go.Figure:
    fig = go.Figure()
    fig.add_scatter(x=[h["step"] for h in history], y=[h.get("loss") for h in history], mode="lines+markers")
    fig.update_layout(
        height=240,
        margin=dict(l=40, r=10, t=30, b=40),
        title="noise-prediction loss",
        xaxis=dict(title="step"),
        template="plotly_white",
    )
    return fig


def grids(urls: list[str]) -> str:
    """The newest grids first; relative URLs so they also load behind a path prefix."""
    return "".join(
        f'<img class="rb-grid" alt="samples at {html.escape(u.rsplit("/", 1)[-1])} steps" src="{html.escape(u[1:])}">'
        for u in reversed(urls[-4:])
    )


def panel(ctx: Ctx) -> None:
    api = ctx.api
    key = gr.State("")
    job_id = gr.State(None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, elem_classes="rb-card"):
            gr.Markdown("### Learn the minority class (textual inversion or LoRA)")
            source = gr.Radio(
                [("Minority images of the chosen dataset", "dataset"), ("Folder on the server", "path")],
                value="dataset",
                label="Source images",
                elem_id="pz-source",
            )
            path = gr.Textbox(label="Folder", visible=False, elem_id="pz-path")
            with gr.Row():
                model = gr.Dropdown(
                    ["tiny"],
                    value="tiny",
                    label="Base model",
                    allow_custom_value=True,
                    elem_id="pz-model",
                    info=TINY_HINT,
                )
                method = gr.Radio(
                    ["textual_inversion", "lora"], value="textual_inversion", label="Method", elem_id="pz-method"
                )
            with gr.Row():
                token = gr.Textbox("<concept>", label="Token", elem_id="pz-token")
                steps = gr.Number(500, label="Steps", precision=0, minimum=1, elem_id="pz-steps")
                resolution = gr.Number(512, label="Resolution", precision=0, minimum=32, elem_id="pz-resolution")
            with gr.Row():
                batch = gr.Number(4, label="Batch", precision=0, minimum=1, elem_id="pz-batch")
                every = gr.Number(100, label="Grid every (steps)", precision=0, minimum=1, elem_id="pz-every")
                seed = gr.Number(0, label="Seed", precision=0, elem_id="pz-seed")
            train = gr.Button("Personalise", variant="primary", elem_id="pz-submit")
            msg = gr.HTML(elem_id="pz-msg")
            card = gr.HTML(job_card(None), elem_id="pz-job")
        with gr.Column(scale=3, elem_classes="rb-card"):
            concept = gr.Dropdown(label="Concept", choices=[], allow_custom_value=True, elem_id="pz-concept")
            loss = gr.Plot(label="Loss", elem_id="pz-loss")
            grid = gr.HTML(elem_id="pz-grid")

    def do_train(*args: Any) -> tuple[Any, str]:
        src, pth, mdl, mth, tok, st, res, bs, ev, sd, k, ds, *imb = args
        params: dict[str, Any] = {
            "model": (mdl or "").strip(),
            "method": mth,
            "token": (tok or "").strip(),
            "steps": int_or_none(st),
            "resolution": int_or_none(res),
            "batch_size": int_or_none(bs),
            "sample_every": int_or_none(ev),
            "seed": int_or_none(sd),
        }
        if src == "path":
            if not (pth or "").strip():
                return gr.skip(), error_html("source.path: give the folder of images")
            params["source"] = {"path": pth.strip()}
        else:
            if not ds:
                return gr.skip(), error_html("source.dataset_id: choose a dataset on the Dataset tab")
            params["source"] = {"dataset_id": int(ds), "imbalance": imbalance_spec(*imb)}
        required = ("steps", "resolution", "batch_size", "sample_every", "seed")
        jid, out = submit(api, "personalize_sd", {k2: v for k2, v in params.items() if v is not None}, k, required)
        return (jid if jid is not None else gr.skip()), out

    def show(c: Any) -> tuple[Any, str]:
        if not c:
            return None, ""
        try:
            info = api.get(f"/concepts/{int(c)}")
        except (ApiError, ValueError) as exc:
            return None, error_html(str(getattr(exc, "message", exc)))
        return curve(info.get("history") or []), grids(info.get("samples") or [])

    def tick(jid: Any, c: Any) -> tuple[Any, ...]:
        """The job card; while the job runs, its concept's live curve and newest grids."""
        job = fetch_job(api, jid)
        live = next((x for x in safe_items(api, "/concepts") if job and x.get("job_id") == job.get("id")), None)
        if (
            not job
            or live is None
            or (c and int(c) != int(live["id"]))
            or job.get("status") not in ("running", "succeeded")
        ):
            return job_card(job), gr.skip(), gr.skip(), gr.skip()
        figure, shown = show(live["id"])
        pick = gr.update(choices=list_concepts(api), value=int(live["id"])) if not c else gr.skip()
        return job_card(job), pick, figure, shown

    fields = {
        "source": source,
        "path": path,
        "model": model,
        "method": method,
        "token": token,
        "steps": steps,
        "resolution": resolution,
        "batch": batch,
        "every": every,
        "seed": seed,
        "concept": concept,
        "job": job_id,
    }
    spec = {f: f"personalize_sd.{p}" for f, p in PARAMS.items()}
    persist(ctx, "generate-personalize", fields, key, before=lambda: gr.update(choices=list_concepts(api)),
            before_outputs=[concept], spec=spec)  # fmt: skip
    live_choices(ctx, concept, lambda: list_concepts(api))
    source.change(lambda s: gr.update(visible=s == "path"), source, path, show_progress="hidden")
    inputs = [source, path, model, method, token, steps, resolution, batch, every, seed, key]
    train.click(do_train, [*inputs, ctx.dataset, *ctx.imbalance], [job_id, msg], concurrency_limit=1)
    show_card_now(api, job_id, card)
    concept.change(show, concept, [loss, grid], show_progress="hidden")
    ctx.timer.tick(tick, [job_id, concept], [card, concept, loss, grid], show_progress="hidden")
