"""Generate tab: Stable Diffusion jobs (txt2img / img2img), and two generators trained here -- a DCGAN and
a class-conditional diffusion model -- with live progress, the latest images of the pool being filled,
loss curves and per-epoch sample grids. The two trained generators share one set of helpers
(source chooser, inspect panel, live training, sampled pool)."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from backend.ui.client import ApiError, new_key
from backend.ui.common import (
    TINY_HINT,
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
    show_card_now,
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
DIFF_PARAMS = {
    "size": "image_size",
    "epochs": "epochs",
    "batch": "batch_size",
    "width": "width",
    "layers": "layers_per_block",
    "attention": "attention",
    "lr": "lr",
    "balance": "class_balance",
    "seed": "seed",
    "grid_n": "grid_per_class",
    "grid_steps": "grid_steps",
}
DIFF_SAMPLE_PARAMS = {
    "count": "count",
    "sample_seed": "seed",
    "sampler": "sampler",
    "steps": "steps",
    "guidance": "guidance",
    "strength": "strength",
}
INLINE = "(the editor's current vocabulary)"  # the value (saved in forms); shown as INLINE_LABEL
INLINE_LABEL = "the Prompts editor's"  # short enough for the half-width dropdown
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
    return [(review_url(base, r["id"]), image_caption(r)) for r in rows]


def image_caption(row: dict[str, Any]) -> str:
    """What made a pool image: its prompt (Stable Diffusion), else generator, class and seed (GAN, diffusion)."""
    if row.get("prompt"):
        return str(row["prompt"])
    meta = row.get("meta") or {}
    bits = [str(meta.get("generator") or "image")]
    if meta.get("class") is not None:
        bits.append(f"class {meta['class']}")
    if row.get("seed") is not None:
        bits.append(f"seed {row['seed']}")
    return " · ".join(bits)


def _sd_panel(ctx: Ctx, vocab_inline: list[gr.components.Component]) -> None:
    api = ctx.api
    key = gr.State("")
    job_id = gr.State(None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, elem_classes="rb-card"):
            with gr.Row():
                # Offline demo default; the suggested models are the API's.
                model = gr.Dropdown(
                    ["tiny"], value="tiny", label="Model", allow_custom_value=True, elem_id="sd-model", info=TINY_HINT
                )
                vocab = gr.Dropdown(
                    [(INLINE_LABEL, INLINE)],
                    value=INLINE,
                    label="Vocabulary",
                    allow_custom_value=True,
                    elem_id="sd-vocab",
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
        return [(INLINE_LABEL, INLINE), *choices(rows, lambda v: f"#{v['id']} {v.get('name')}")]

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
            "seed": int_or_none(sd),
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
        required = ("count", "batch_size", "steps", "guidance", "resolution", "seed")
        jid, out = submit(api, "generate_sd", {k2: v for k2, v in params.items() if v is not None}, k, required)
        return (jid if jid is not None else gr.skip()), out

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
    wire_pool(ctx, job_id, card, gallery)


# -- generators trained here (GAN, diffusion): the parts both sections share ------------------------------
GAN_LOSSES = (("d_loss", "discriminator"), ("g_loss", "generator"))
DIFF_LOSSES = (("loss", "noise-prediction MSE"),)


@dataclass(frozen=True)
class Trained:
    """A kind of generator trained here: where the API lists it and how its section names things."""

    prefix: str  # elem_id prefix of the section's widgets
    route: str  # list/detail endpoint, e.g. "/gans"; grids at <route>/{id}/samples/{epoch}
    losses: tuple[tuple[str, str], ...]  # history key -> legend of the loss curve
    title: str  # the loss plot's title
    label: Callable[[dict[str, Any]], str]  # a dropdown label for one listed model


def loss_figure(
    history: list[dict[str, Any]], series: tuple[tuple[str, str], ...] = GAN_LOSSES, title: str = "GAN losses per epoch"
) -> go.Figure:
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    fig = go.Figure()
    for key, name in series:
        fig.add_scatter(x=epochs, y=[h.get(key) for h in history], name=name, mode="lines+markers")
    fig.update_layout(
        height=260,
        margin=dict(l=40, r=10, t=30, b=40),
        title=title,
        xaxis=dict(title="epoch", dtick=1 if len(epochs) <= 20 else None),
        template="plotly_white",
        legend=dict(orientation="h", y=1.15, x=1, xanchor="right"),
    )
    return fig


def _gan_label(g: dict[str, Any]) -> str:
    return f"#{g['id']} {g.get('name') or 'gan'} ({g.get('epochs_done', '?')} epochs)"


def _diffusion_label(d: dict[str, Any]) -> str:
    status = d.get("job_status")
    mark = "" if status in (None, "succeeded") else f" · {status}"
    classes = len(d.get("classes") or [])
    return f"#{d['id']} {d.get('name') or 'diffusion'} ({classes} classes, {d.get('epochs_done', '?')} epochs){mark}"


GAN = Trained("gan", "/gans", GAN_LOSSES, "GAN losses per epoch", _gan_label)
DIFFUSION = Trained("diff", "/diffusions", DIFF_LOSSES, "Diffusion loss per epoch", _diffusion_label)


def source_inputs(prefix: str, dataset_label: str) -> tuple[gr.Radio, gr.Textbox]:
    """The training-images chooser: the Dataset tab's dataset + imbalance, or a folder on the server."""
    source = gr.Radio(
        [(dataset_label, "dataset"), ("Folder on the server (<class>/ subfolders or images)", "path")],
        value="dataset",
        label="Source images",
        elem_id=f"{prefix}-source",
    )
    path = gr.Textbox(label="Folder", visible=False, elem_id=f"{prefix}-path")
    source.change(lambda s: gr.update(visible=s == "path"), source, path, show_progress="hidden")
    return source, path


def source_param(src: str, pth: str | None, ds: Any, imb: list[Any]) -> tuple[dict[str, Any] | None, str]:
    """The job's ``source`` param from the chooser, or (None, an inline error naming the field)."""
    if src == "path":
        if not (pth or "").strip():
            return None, error_html("source.path: give the folder of images")
        return {"path": pth.strip()}, ""
    if not ds:
        return None, error_html("source.dataset_id: choose a dataset on the Dataset tab")
    return {"dataset_id": int(ds), "imbalance": imbalance_spec(*imb)}, ""


GRID_ROWS = 16  # a diffusion grid has a row for each of the model's first 16 classes (backend.generation.ddpm)


def grid_html(
    t: Trained, model_id: Any, epoch: Any, epochs_done: int | None = None, classes: list[Any] | None = None
) -> str:
    """The sample grid of ``epoch``; a placeholder while that epoch has not finished (``epochs_done`` below it):
    its grid does not exist yet, and an <img> of it would show as a broken image (issue 30.6). ``classes``: a
    class-conditional model's classes, written beside the grid's rows (issue 30.10: rows without names)."""
    if not model_id or not epoch:
        return ""
    if epochs_done is not None and int(epoch) > epochs_done:
        return (
            f'<div class="rb-grid-wait" data-epoch="{int(epoch)}">Samples appear here when epoch {int(epoch)} '
            "ends.</div>"
        )
    # A relative URL, so the grid also loads behind a reverse proxy's path prefix.
    src = f"api{t.route}/{int(model_id)}/samples/{int(epoch)}"
    cls = f"rb-grid rb-grid-{t.prefix}"  # a diffusion grid (a row per class) is drawn taller
    img = f'<img class="{cls}" alt="samples at epoch {int(epoch)}" src="{html.escape(src)}">'
    if not classes:
        return img
    rows = "".join(f"<li>{html.escape(str(c))}</li>" for c in classes[:GRID_ROWS])
    # The labels column stretches to the image's height and splits it evenly: one label per row.
    labels = f'<ol class="rb-grid-rows" aria-label="class of each row">{rows}</ol>'
    return f'<div class="rb-grid-labelled">{labels}{img}</div>'


def inspect_widgets(t: Trained, noun: str) -> tuple[gr.Dropdown, gr.Plot, gr.Number, gr.HTML]:
    """Model picker, loss curve, epoch and that epoch's sample grid."""
    model = gr.Dropdown(label=noun, choices=[], allow_custom_value=True, elem_id=f"{t.prefix}-pick")
    losses = gr.Plot(label="Losses", elem_id=f"{t.prefix}-losses")
    epoch = gr.Number(1, label="Epoch", precision=0, minimum=1, elem_id=f"{t.prefix}-epoch")
    grid = gr.HTML(elem_id=f"{t.prefix}-grid")
    return model, losses, epoch, grid


def pool_widgets(prefix: str) -> tuple[gr.HTML, gr.Gallery]:
    """A sampling job's card and the newest images of the pool it fills."""
    card = gr.HTML(job_card(None), elem_id=f"{prefix}-sample-job")
    gallery = gr.Gallery(
        label="Sampled pool (newest images)",
        columns=6,
        height=220,
        object_fit="contain",
        elem_id=f"{prefix}-pool-gallery",
    )
    return card, gallery


def wire_pool(ctx: Ctx, job: gr.State, card: gr.HTML, gallery: gr.Gallery) -> None:
    """Poll a generation job: its card, and its pool's newest images whenever they change."""
    api = ctx.api
    shown = gr.State(None)  # the gallery's current items

    def tick(jid: Any, shown: list[Any] | None, request: gr.Request) -> tuple[str, Any, Any]:
        found = fetch_job(api, jid)
        if not found:
            return job_card(None), gr.skip(), gr.skip()
        items = latest_images(api, _pool_of_job(api, found), public_base(request))
        if items == shown:  # unchanged: do not make the browser re-render the thumbnails
            return job_card(found), gr.skip(), gr.skip()
        return job_card(found), items, items

    ctx.timer.tick(tick, [job, shown], [card, gallery, shown], show_progress="hidden")
    show_card_now(api, job, card)


def wire_trained(
    ctx: Ctx, t: Trained, train_job: gr.State, train_card: gr.HTML, widgets: tuple[Any, ...]
) -> Callable[[], list[tuple[str, int]]]:
    """Events of the inspect panel: choosing a model draws its losses and newest grid, the epoch field
    redraws the grid; while a training job runs the curve and grid follow it, and when it finishes its
    model is listed and chosen. Returns the dropdown's choice lister."""
    api = ctx.api
    model, losses, epoch, grid = widgets
    handled = gr.State(None)  # the finished training job whose model was already listed
    done_state = gr.State(None)  # the shown model's epochs done and classes: the grid's placeholder and labels

    def listed() -> list[tuple[str, int]]:
        return choices(safe_items(api, t.route), t.label)

    def figure(info: dict[str, Any]) -> go.Figure:
        return loss_figure(info.get("history") or [], t.losses, t.title)

    def show(m: Any) -> tuple[Any, Any, str, Any]:
        if not m:
            return None, gr.update(value=1, maximum=None), "", None
        try:
            info = api.get(f"{t.route}/{int(m)}")
        except ApiError as exc:
            return None, gr.skip(), error_html(exc.message), None
        done = int(info.get("epochs_done") or len(info.get("history") or []) or 0)
        last = max(1, done)
        # The grid is drawn here too: if the epoch number does not change, no epoch.change follows.
        shown = {"done": done, "classes": info.get("classes")}
        return figure(info), gr.update(value=last, maximum=last), grid_html(t, m, last, done, shown["classes"]), shown

    def tick(tj: Any, handled: Any, m: Any) -> tuple[Any, ...]:
        tjob = fetch_job(api, tj)
        card = job_card(tjob)
        idle = (card, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip())
        status = (tjob or {}).get("status")
        if not (status == "running" or (status == "succeeded" and handled != tj)):
            return idle
        # The model's row exists from the first epoch on; follow it unless another model is chosen.
        live = next((x for x in safe_items(api, t.route) if x.get("job_id") == tj), None)
        if live is None or (m and int(m) != int(live["id"])):
            if status == "running":
                return idle
            return card, gr.update(choices=listed()), tj, gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            info = api.get(f"{t.route}/{int(live['id'])}")
        except ApiError:
            return idle
        done = int(info.get("epochs_done") or 0)
        pick = gr.update(choices=listed(), value=int(live["id"])) if not m or status == "succeeded" else gr.skip()
        epoch_update = gr.update(value=done, maximum=done) if done else gr.skip()
        grid_update = grid_html(t, live["id"], done, classes=info.get("classes")) if done else gr.skip()
        marker = tj if status == "succeeded" else handled
        shown = {"done": done, "classes": info.get("classes")}
        return card, pick, marker, figure(info), epoch_update, grid_update, shown

    live_choices(ctx, model, listed)
    model.change(show, model, [losses, epoch, grid, done_state], show_progress="hidden")

    def epoch_grid(m: Any, e: Any, shown: dict[str, Any] | None) -> str:
        # The epochs done and classes come from the last show or tick: no API call per epoch change (one per
        # tick while a model trains, since the tick moves the epoch field along).
        shown = shown or {}
        done = shown.get("done")
        return grid_html(t, m, e, int(done) if done is not None else None, shown.get("classes"))

    epoch.change(epoch_grid, [model, epoch, done_state], grid, show_progress="hidden")
    outputs = [train_card, model, handled, losses, epoch, grid, done_state]
    ctx.timer.tick(tick, [train_job, handled, model], outputs, show_progress="hidden")
    show_card_now(api, train_job, train_card)
    return listed


def fresh_key_on(inputs: list[gr.components.Component], key: gr.State) -> None:
    """A new idempotency key whenever a sampling form changes (the training form's comes from persist)."""
    gr.on([c.change for c in inputs], new_key, outputs=key, show_progress="hidden")


def _gan_panel(ctx: Ctx) -> None:
    api = ctx.api
    key = gr.State("")
    train_job = gr.State(None)
    sample_key = gr.State("")
    sample_job = gr.State(None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, elem_classes="rb-card"):
            gr.Markdown("### Train a DCGAN")
            source, path = source_inputs("gan", "Minority images of the chosen dataset")
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
            widgets = inspect_widgets(GAN, "GAN")
            gan, _, epoch, _ = widgets
            with gr.Row():
                count = gr.Number(label="Images", precision=0, elem_id="gan-count")
                sample_seed = gr.Number(0, label="Seed", precision=0, elem_id="gan-sample-seed")
                sample = gr.Button("Sample into a pool", elem_id="gan-sample")
            sample_msg = gr.HTML(elem_id="gan-sample-msg")
            sample_card, pool_gallery = pool_widgets("gan")

    def do_train(*args: Any) -> tuple[Any, str]:
        src, pth, sz, ep, bs, wd, rate, sd, k, ds, *imb = args
        source_value, err = source_param(src, pth, ds, imb)
        if source_value is None:
            return gr.skip(), err
        params: dict[str, Any] = {
            "source": source_value,
            "image_size": int(sz),
            "epochs": int_or_none(ep),
            "batch_size": int_or_none(bs),
            "width": wd,
            "lr": rate,
            "seed": int_or_none(sd),
        }
        jid, out = submit(api, "train_gan", params, k, ("epochs", "batch_size", "width", "lr", "seed"))
        return (jid if jid is not None else gr.skip()), out

    def do_sample(g: Any, ep: Any, n: Any, sd: Any, k: str) -> tuple[Any, str]:
        if not g:
            return gr.skip(), error_html("gan_id: choose a trained GAN")
        params = {"gan_id": int(g), "epoch": int(ep), "count": int_or_none(n), "seed": int_or_none(sd)}
        jid, out = submit(api, "generate_gan", params, k, ("count", "seed"))
        return (jid if jid is not None else gr.skip()), out

    listed = wire_trained(ctx, GAN, train_job, train_card, widgets)
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
    persist(
        ctx, "generate-gan", fields, key, before=lambda: gr.update(choices=listed()), before_outputs=[gan], spec=spec
    )
    fresh_key_on([gan, count, sample_seed, epoch], sample_key)
    train.click(
        do_train,
        [source, path, size, epochs, batch, width, lr, seed, key, ctx.dataset, *ctx.imbalance],
        [train_job, train_msg],
        concurrency_limit=1,
    )
    sample.click(do_sample, [gan, epoch, count, sample_seed, sample_key], [sample_job, sample_msg], concurrency_limit=1)
    wire_pool(ctx, sample_job, sample_card, pool_gallery)


def default_class(info: dict[str, Any]) -> str | None:
    """The class to sample first: the training set's minority when the model knows it, else the first class."""
    classes = [str(c) for c in info.get("classes") or []]
    minority = (((info.get("info") or {}).get("source") or {}).get("imbalance") or {}).get("minority")
    minority = minority[0] if isinstance(minority, list) and minority else minority
    if minority is not None and str(minority) in classes:
        return str(minority)
    return classes[0] if classes else None


def _diffusion_panel(ctx: Ctx) -> None:
    api = ctx.api
    key = gr.State("")
    train_job = gr.State(None)
    sample_key = gr.State("")
    sample_job = gr.State(None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, elem_classes="rb-card"):
            gr.Markdown("### Train a class-conditional diffusion model")
            source, path = source_inputs("diff", "All classes of the chosen dataset, imbalanced as chosen")
            with gr.Row():
                size = gr.Radio([16, 32, 64], value=32, label="Image size", elem_id="diff-size")
                epochs = gr.Number(label="Epochs", precision=0, elem_id="diff-epochs")
                batch = gr.Number(label="Batch", precision=0, elem_id="diff-batch")
            with gr.Row():
                width = gr.Number(label="Width (channel scale)", elem_id="diff-width")
                layers = gr.Number(label="Layers per block", precision=0, elem_id="diff-layers")
                attention = gr.Checkbox(label="Attention", elem_id="diff-attention")
            with gr.Row():
                lr = gr.Number(label="Learning rate", elem_id="diff-lr")
                balance = gr.Number(label="Class balance", elem_id="diff-balance")
                seed = gr.Number(0, label="Seed", precision=0, elem_id="diff-seed")
            with gr.Row():
                grid_n = gr.Number(label="Grid images per class", precision=0, elem_id="diff-grid-n")
                grid_steps = gr.Number(label="Grid steps", precision=0, elem_id="diff-grid-steps")
            train = gr.Button("Train diffusion model", variant="primary", elem_id="diff-train")
            train_msg = gr.HTML(elem_id="diff-train-msg")
            train_card = gr.HTML(job_card(None), elem_id="diff-train-job")
        with gr.Column(scale=3, elem_classes="rb-card"):
            gr.Markdown("### Inspect and sample")
            widgets = inspect_widgets(DIFFUSION, "Diffusion model")
            model = widgets[0]
            with gr.Row():
                klass = gr.Dropdown(label="Class", choices=[], allow_custom_value=True, elem_id="diff-class")
                count = gr.Number(label="Images", precision=0, elem_id="diff-count")
                sample_seed = gr.Number(0, label="Seed", precision=0, elem_id="diff-sample-seed")
            with gr.Row():
                sampler = gr.Radio(["ddim", "dpmpp"], label="Sampler", elem_id="diff-sampler")
                steps = gr.Number(label="Steps", precision=0, elem_id="diff-steps")
                guidance = gr.Number(label="Guidance", elem_id="diff-guidance")
                strength = gr.Slider(0.01, 1.0, 1.0, step=0.01, label="Strength", elem_id="diff-strength")
            sample = gr.Button("Sample into a pool", elem_id="diff-sample")
            sample_msg = gr.HTML(elem_id="diff-sample-msg")
            sample_card, pool_gallery = pool_widgets("diff")

    train_inputs = [source, path, size, epochs, batch, width, layers, attention, lr, balance, seed, grid_n, grid_steps]

    def do_train(*args: Any) -> tuple[Any, str]:
        src, pth, sz, ep, bs, wd, ly, att, rate, bal, sd, gn, gs, k, ds, *imb = args
        source_value, err = source_param(src, pth, ds, imb)
        if source_value is None:
            return gr.skip(), err
        params: dict[str, Any] = {
            "source": source_value,
            "image_size": int(sz),
            "epochs": int_or_none(ep),
            "batch_size": int_or_none(bs),
            "width": wd,
            "layers_per_block": int_or_none(ly),
            "attention": att,
            "lr": rate,
            "class_balance": bal,
            "seed": int_or_none(sd),
            "grid_per_class": int_or_none(gn),
            "grid_steps": int_or_none(gs),
        }
        required = ("epochs", "batch_size", "width", "layers_per_block", "lr", "class_balance", "seed")
        required += ("grid_per_class", "grid_steps")
        jid, out = submit(api, "train_diffusion", params, k, required)
        return (jid if jid is not None else gr.skip()), out

    def do_sample(*args: Any) -> tuple[Any, str]:
        m, cls, n, sd, smp, st, gd, strg, k = args
        if not m:
            return gr.skip(), error_html("diffusion_id: choose a trained diffusion model")
        if not cls:
            return gr.skip(), error_html("class: choose a class of the model")
        params = {
            "diffusion_id": int(m),
            "class": str(cls),
            "count": int_or_none(n),
            "seed": int_or_none(sd),
            "sampler": smp,
            "steps": int_or_none(st),
            "guidance": gd,
            "strength": strg,
        }
        # An empty guidance or strength is the model's own; count, seed and steps must be filled in.
        jid, out = submit(api, "generate_diffusion", params, k, ("count", "seed", "steps"), omit_unset=True)
        return (jid if jid is not None else gr.skip()), out

    def class_choices(m: Any, current: Any) -> Any:
        """The chosen model's classes; a class restored after a reload is kept if the model has it."""
        if not m:
            return gr.update(choices=[])
        try:
            info = api.get(f"/diffusions/{int(m)}")
        except ApiError:
            return gr.skip()
        classes = [str(c) for c in info.get("classes") or []]
        value = str(current) if current is not None and str(current) in classes else default_class(info)
        return gr.update(choices=classes, value=value)

    listed = wire_trained(ctx, DIFFUSION, train_job, train_card, widgets)
    sample_inputs = [model, klass, count, sample_seed, sampler, steps, guidance, strength]
    fields = dict(zip(["source", "path", "size", "epochs", "batch", "width", "layers", "attention", "lr", "balance",
                       "seed", "grid_n", "grid_steps"], train_inputs, strict=True))  # fmt: skip
    fields |= dict(zip(["model", "class", "count", "sample_seed", "sampler", "steps", "guidance", "strength"],
                       sample_inputs, strict=True))  # fmt: skip
    fields |= {"train_job": train_job, "sample_job": sample_job}
    spec = {f: f"train_diffusion.{p}" for f, p in DIFF_PARAMS.items()}
    spec |= {f: f"generate_diffusion.{p}" for f, p in DIFF_SAMPLE_PARAMS.items()}
    persist(
        ctx,
        "generate-diffusion",
        fields,
        key,
        before=lambda: gr.update(choices=listed()),
        before_outputs=[model],
        spec=spec,
    )
    fresh_key_on(sample_inputs, sample_key)
    model.change(class_choices, [model, klass], klass, show_progress="hidden")
    train.click(
        do_train, [*train_inputs, key, ctx.dataset, *ctx.imbalance], [train_job, train_msg], concurrency_limit=1
    )
    sample.click(do_sample, [*sample_inputs, sample_key], [sample_job, sample_msg], concurrency_limit=1)
    wire_pool(ctx, sample_job, sample_card, pool_gallery)


def build(ctx: Ctx, vocab_inline: list[gr.components.Component]) -> None:
    with gr.Tabs():
        with gr.Tab("Stable Diffusion", elem_id="gen-sd"):
            _sd_panel(ctx, vocab_inline)
        with gr.Tab("Personalise", elem_id="gen-personalize"):
            personalize.panel(ctx)
        with gr.Tab("GAN", elem_id="gen-gan"):
            _gan_panel(ctx)
        with gr.Tab("Diffusion (trained here)", elem_id="gen-diffusion"):
            _diffusion_panel(ctx)
    gr.HTML(note_html("Images are made by jobs; follow every job on the Jobs tab."))
