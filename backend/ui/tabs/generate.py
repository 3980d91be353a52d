"""Generate tab: Stable Diffusion jobs (txt2img / img2img) and DCGAN training + sampling, with live
progress, the latest images of the running pool, GAN loss curves and per-epoch sample grids."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from backend.ui.client import ApiError, new_key
from backend.ui.common import (
    Ctx,
    choices,
    error_html,
    fetch_job,
    int_or_none,
    job_card,
    live_choices,
    note_html,
    persist,
    public_base,
    review_url,
    safe_items,
    submit,
)
from backend.ui.tabs import personalize
from backend.ui.tabs.dataset import imbalance_spec
from backend.ui.tabs.prompts import vocabulary_body

# form field -> job param whose choices, default, limits and description the API supplies
SD_PARAMS = {
    "model": "model:choices",
    "batch": "batch_size",
    "steps": "steps",
    "guidance": "guidance",
    "scheduler": "scheduler",
    "resolution": "resolution",
    "seed": "seed",
    "mode": "mode",
    "strength": "strength",
    "safety": "safety_checker",
}
GAN_PARAMS = {
    "size": "image_size",
    "epochs": "epochs",
    "batch": "batch_size",
    "width": "width",
    "lr": "lr",
    "seed": "seed",
}
INLINE = "(the editor's current vocabulary)"
LATEST = 12  # images shown from the pool being filled


def _pool_of_job(api: Any, job: dict[str, Any] | None) -> int | None:
    """The pool a generation job writes: from its result when done, else the pool row it created."""
    if not job:
        return None
    pid = (job.get("result") or {}).get("pool_id")
    if pid:
        return int(pid)
    for pool in safe_items(api, "/pools"):
        if pool.get("job_id") == job.get("id"):
            return int(pool["id"])
    return None


def latest_images(api: Any, pool_id: int | None, base: str) -> list[tuple[str, str]]:
    if not pool_id:
        return []
    try:
        pool = api.get(f"/pools/{pool_id}")
        offset = max(0, int(pool.get("count") or 0) - LATEST)
        rows = api.items(f"/pools/{pool_id}/images", offset=offset, limit=LATEST)
    except ApiError:
        return []
    return [(review_url(base, r["id"]), str(r.get("prompt") or f"seed {r.get('seed')}")) for r in rows]


def loss_figure(history: list[dict[str, Any]]) -> go.Figure:
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    fig = go.Figure()
    fig.add_scatter(x=epochs, y=[h.get("d_loss") for h in history], name="discriminator", mode="lines+markers")
    fig.add_scatter(x=epochs, y=[h.get("g_loss") for h in history], name="generator", mode="lines+markers")
    fig.update_layout(
        height=260,
        margin=dict(l=40, r=10, t=30, b=40),
        title="GAN losses per epoch",
        xaxis=dict(title="epoch", dtick=1 if len(epochs) <= 20 else None),
        template="plotly_white",
        legend=dict(orientation="h", y=1.15, x=1, xanchor="right"),
    )
    return fig


def _gan_label(g: dict[str, Any]) -> str:
    return f"#{g['id']} {g.get('name') or 'gan'} ({g.get('epochs_done', '?')} epochs)"


def _sd_panel(ctx: Ctx, vocab_inline: list[gr.components.Component]) -> None:
    api = ctx.api
    key = gr.State("")
    job_id = gr.State(None)
    shown = gr.State(None)  # the gallery's current items
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, elem_classes="rb-card"):
            with gr.Row():
                # Offline demo default; the suggested models are the API's.
                model = gr.Dropdown(["tiny"], value="tiny", label="Model", allow_custom_value=True, elem_id="sd-model")
                vocab = gr.Dropdown(
                    [INLINE], value=INLINE, label="Vocabulary", allow_custom_value=True, elem_id="sd-vocab"
                )
            with gr.Row():
                count = gr.Number(16, label="Images", precision=0, minimum=1, elem_id="sd-count")
                batch = gr.Number(label="Batch", precision=0, elem_id="sd-batch")
                steps = gr.Number(label="Steps", precision=0, elem_id="sd-steps")
                guidance = gr.Number(label="Guidance", elem_id="sd-guidance")
            with gr.Row():
                scheduler = gr.Dropdown(label="Scheduler", elem_id="sd-scheduler")  # choices: the API's
                resolution = gr.Number(label="Resolution", precision=0, elem_id="sd-resolution")
                seed = gr.Number(0, label="Seed", precision=0, elem_id="sd-seed")
            with gr.Row():
                mode = gr.Radio(["txt2img", "img2img"], value="txt2img", label="Mode", elem_id="sd-mode")
                strength = gr.Slider(0.05, 1.0, 0.75, step=0.05, label="Strength (img2img)", elem_id="sd-strength")
                safety = gr.Checkbox(False, label="Safety checker", elem_id="sd-safety")
            concept = gr.Dropdown(
                [],
                value=None,
                label="Concept (from Personalise; prompts use its token)",
                allow_custom_value=True,
                elem_id="sd-concept",
            )
            go_btn = gr.Button("Generate", variant="primary", elem_id="sd-submit")
            msg = gr.HTML(elem_id="sd-msg")
        with gr.Column(scale=3, elem_classes="rb-card"):
            card = gr.HTML(job_card(None), elem_id="sd-job")
            gallery = gr.Gallery(
                label="Latest images", columns=6, height=330, object_fit="contain", elem_id="sd-gallery"
            )

    def list_vocabs() -> list[tuple[str, Any]]:
        rows = safe_items(api, "/vocabularies")
        return [(INLINE, INLINE), *choices(rows, lambda v: f"#{v['id']} {v.get('name')}")]

    def refresh() -> Any:
        return gr.update(choices=list_vocabs())

    def do_submit(*args: Any) -> tuple[Any, str]:
        (mdl, voc, n, bs, st, gd, sch, res, sd, md, strg, safe, cpt, k, tpl, sl, neg, ds, *imb) = args
        params: dict[str, Any] = {
            "model": (mdl or "").strip(),
            "count": int_or_none(n),
            "batch_size": int_or_none(bs),
            "steps": int_or_none(st),
            "guidance": gd,
            "scheduler": sch,
            "resolution": int_or_none(res),
            "seed": int_or_none(sd) or 0,
            "mode": md,
            "safety_checker": bool(safe),
            "concept_id": int(cpt) if cpt else None,
        }
        if voc in (None, INLINE):
            body, err = vocabulary_body("", tpl, sl, neg)
            if body is None:
                return gr.skip(), error_html(err)
            params["vocabulary"] = body
        else:
            params["vocabulary"] = int(voc)
        if ds:
            params["dataset_id"] = int(ds)
        if md == "img2img":
            if not ds:
                return gr.skip(), error_html("dataset_id: img2img starts from a dataset; choose one on the Dataset tab")
            params["strength"] = strg
            params["imbalance"] = imbalance_spec(*imb)
        jid, out = submit(api, "generate_sd", {k2: v for k2, v in params.items() if v is not None}, k)
        return (jid if jid is not None else gr.skip()), out

    def tick(jid: Any, shown: list[Any] | None, request: gr.Request) -> tuple[str, Any, Any]:
        job = fetch_job(api, jid)
        if not job:
            return job_card(None), gr.skip(), gr.skip()
        items = latest_images(api, _pool_of_job(api, job), public_base(request))
        if items == shown:  # unchanged: do not make the browser re-render the thumbnails
            return job_card(job), gr.skip(), gr.skip()
        return job_card(job), items, items

    fields = {
        "model": model,
        "vocab": vocab,
        "count": count,
        "batch": batch,
        "steps": steps,
        "guidance": guidance,
        "scheduler": scheduler,
        "resolution": resolution,
        "seed": seed,
        "mode": mode,
        "strength": strength,
        "safety": safety,
        "concept": concept,
        "job": job_id,
    }
    # Model (its suggestions only) and the rest from generate_sd; count keeps the studio's demo-sized 16.
    spec = {f: f"generate_sd.{p}" for f, p in SD_PARAMS.items()}
    persist(ctx, "generate-sd", fields, key, before=refresh, before_outputs=[vocab], spec=spec)
    live_choices(ctx, vocab, list_vocabs)
    live_choices(ctx, concept, lambda: personalize.list_concepts(api))
    inputs = [model, vocab, count, batch, steps, guidance, scheduler, resolution, seed, mode, strength, safety]
    inputs += [concept, key]
    go_btn.click(do_submit, [*inputs, *vocab_inline, ctx.dataset, *ctx.imbalance], [job_id, msg], concurrency_limit=1)
    ctx.timer.tick(tick, [job_id, shown], [card, gallery, shown], show_progress="hidden")


def _gan_panel(ctx: Ctx) -> None:
    api = ctx.api
    key = gr.State("")
    train_job = gr.State(None)
    sample_key = gr.State("")
    sample_job = gr.State(None)
    handled = gr.State(None)  # the finished training job whose GAN was already listed
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, elem_classes="rb-card"):
            gr.Markdown("### Train a DCGAN")
            source = gr.Radio(
                [("Minority images of the chosen dataset", "dataset"), ("Folder on the server", "path")],
                value="dataset",
                label="Source images",
                elem_id="gan-source",
            )
            path = gr.Textbox(label="Folder", visible=False, elem_id="gan-path")
            with gr.Row():
                size = gr.Radio([32, 64], value=64, label="Image size", elem_id="gan-size")
                epochs = gr.Number(label="Epochs", precision=0, elem_id="gan-epochs")
                batch = gr.Number(label="Batch", precision=0, elem_id="gan-batch")
            with gr.Row():
                width = gr.Number(label="Width (channel scale)", elem_id="gan-width")
                lr = gr.Number(5e-5, label="Learning rate", elem_id="gan-lr")
                seed = gr.Number(0, label="Seed", precision=0, elem_id="gan-seed")
            train = gr.Button("Train GAN", variant="primary", elem_id="gan-train")
            train_msg = gr.HTML(elem_id="gan-train-msg")
            train_card = gr.HTML(job_card(None), elem_id="gan-train-job")
        with gr.Column(scale=3, elem_classes="rb-card"):
            gr.Markdown("### Inspect and sample")
            gan = gr.Dropdown(label="GAN", choices=[], allow_custom_value=True, elem_id="gan-pick")
            losses = gr.Plot(label="Losses", elem_id="gan-losses")
            epoch = gr.Number(1, label="Epoch", precision=0, minimum=1, elem_id="gan-epoch")
            grid = gr.HTML(elem_id="gan-grid")
            with gr.Row():
                count = gr.Number(label="Images", precision=0, elem_id="gan-count")
                sample_seed = gr.Number(0, label="Seed", precision=0, elem_id="gan-sample-seed")
                sample = gr.Button("Sample into a pool", elem_id="gan-sample")
            sample_msg = gr.HTML(elem_id="gan-sample-msg")
            sample_card = gr.HTML(job_card(None), elem_id="gan-sample-job")

    def list_gans() -> list[tuple[str, int]]:
        return choices(safe_items(api, "/gans"), _gan_label)

    def refresh() -> Any:
        return gr.update(choices=list_gans())

    def do_train(*args: Any) -> tuple[Any, str]:
        src, pth, sz, ep, bs, wd, rate, sd, k, ds, *imb = args
        params: dict[str, Any] = {
            "image_size": int(sz),
            "epochs": int_or_none(ep),
            "batch_size": int_or_none(bs),
            "width": wd,
            "lr": rate,
            "seed": int_or_none(sd) or 0,
        }
        if src == "path":
            if not (pth or "").strip():
                return gr.skip(), error_html("source.path: give the folder of images")
            params["source"] = {"path": pth.strip()}
        else:
            if not ds:
                return gr.skip(), error_html("source.dataset_id: choose a dataset on the Dataset tab")
            params["source"] = {"dataset_id": int(ds), "imbalance": imbalance_spec(*imb)}
        jid, out = submit(api, "train_gan", params, k)
        return (jid if jid is not None else gr.skip()), out

    def do_sample(g: Any, ep: Any, n: Any, sd: Any, k: str) -> tuple[Any, str]:
        if not g:
            return gr.skip(), error_html("gan_id: choose a trained GAN")
        params = {"gan_id": int(g), "epoch": int(ep), "count": int_or_none(n), "seed": int_or_none(sd) or 0}
        jid, out = submit(api, "generate_gan", params, k)
        return (jid if jid is not None else gr.skip()), out

    def show_gan(g: Any) -> tuple[Any, Any, str]:
        if not g:
            return None, gr.update(value=1, maximum=None), ""
        try:
            info = api.get(f"/gans/{int(g)}")
        except ApiError as exc:
            return None, gr.skip(), error_html(exc.message)
        history = info.get("history") or []
        last = max(1, int(info.get("epochs_done") or len(history) or 1))
        # The grid is drawn here too: if the epoch number does not change, no epoch.change follows.
        return loss_figure(history), gr.update(value=last, maximum=last), show_grid(g, last)

    def show_grid(g: Any, ep: Any) -> str:
        if not g or not ep:
            return ""
        # A relative URL, so the grid also loads behind a reverse proxy's path prefix.
        src = f"api/gans/{int(g)}/samples/{int(ep)}"
        return f'<img class="rb-grid" alt="samples at epoch {int(ep)}" src="{html.escape(src)}">'

    def tick(tj: Any, sj: Any, handled: Any, g: Any) -> tuple[Any, ...]:
        """Job cards; while training, live loss curves and the newest epoch's grid; when done, list the GAN."""
        tjob, sjob = fetch_job(api, tj), fetch_job(api, sj)
        cards = (job_card(tjob), job_card(sjob))
        idle = (*cards, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip())
        status = (tjob or {}).get("status")
        if status == "running" or (status == "succeeded" and handled != tj):
            # The GAN row exists from the first epoch on; follow it unless another GAN is chosen.
            live = next((x for x in safe_items(api, "/gans") if x.get("job_id") == tj), None)
            if live is None or (g and int(g) != int(live["id"])):
                return (
                    idle if status == "running" else (*cards, gr.update(choices=list_gans()), tj, gr.skip(), gr.skip())
                )
            try:
                info = api.get(f"/gans/{int(live['id'])}")
            except ApiError:
                return idle
            done = int(info.get("epochs_done") or 0)
            pick = (
                gr.update(choices=list_gans(), value=int(live["id"])) if not g or status == "succeeded" else gr.skip()
            )
            epoch_update = gr.update(value=done, maximum=done) if done else gr.skip()
            grid_update = show_grid(live["id"], done) if done else gr.skip()
            marker = tj if status == "succeeded" else handled
            return *cards, pick, marker, loss_figure(info.get("history") or []), epoch_update, grid_update
        return idle

    fields = {
        "source": source,
        "path": path,
        "size": size,
        "epochs": epochs,
        "batch": batch,
        "width": width,
        "lr": lr,
        "seed": seed,
        "gan": gan,
        "count": count,
        "sample_seed": sample_seed,
        "train_job": train_job,
        "sample_job": sample_job,
    }
    spec = {f: f"train_gan.{p}" for f, p in GAN_PARAMS.items()}
    spec |= {"count": "generate_gan.count", "sample_seed": "generate_gan.seed"}
    persist(ctx, "generate-gan", fields, key, before=refresh, before_outputs=[gan], spec=spec)
    live_choices(ctx, gan, list_gans)
    gr.on([gan.change, count.change, sample_seed.change, epoch.change], new_key, outputs=sample_key,
          show_progress="hidden")  # fmt: skip
    source.change(lambda s: gr.update(visible=s == "path"), source, path, show_progress="hidden")
    train.click(
        do_train,
        [source, path, size, epochs, batch, width, lr, seed, key, ctx.dataset, *ctx.imbalance],
        [train_job, train_msg],
        concurrency_limit=1,
    )
    sample.click(do_sample, [gan, epoch, count, sample_seed, sample_key], [sample_job, sample_msg], concurrency_limit=1)
    gan.change(show_gan, gan, [losses, epoch, grid], show_progress="hidden")
    epoch.change(show_grid, [gan, epoch], grid, show_progress="hidden")
    ctx.timer.tick(
        tick,
        [train_job, sample_job, handled, gan],
        [train_card, sample_card, gan, handled, losses, epoch, grid],
        show_progress="hidden",
    )


def build(ctx: Ctx, vocab_inline: list[gr.components.Component]) -> None:
    with gr.Tabs():
        with gr.Tab("Stable Diffusion", elem_id="gen-sd"):
            _sd_panel(ctx, vocab_inline)
        with gr.Tab("Personalise", elem_id="gen-personalize"):
            personalize.panel(ctx)
        with gr.Tab("GAN", elem_id="gen-gan"):
            _gan_panel(ctx)
    gr.HTML(note_html("Images are made by jobs; follow every job on the Jobs tab."))
