"""Dataset tab: register a dataset (digits demo, CIFAR-10, folder, zip), pick the starved class and the
imbalance spec, and see the class histogram before and after."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from backend.ui.client import ApiError
from backend.ui.common import (
    Ctx,
    choices,
    error_html,
    int_or_none,
    job_card,
    live_choices,
    note_html,
    persist,
    result_tick,
    safe_items,
    show_card_now,
    submit,
    when,
)

SOURCES = [("Digits demo (offline)", "digits"), ("CIFAR-10", "cifar10"), ("Folder on the server", "imagefolder"),
           ("Upload a zip", "zip")]  # fmt: skip
MODES = [("Keep N minority images", "keep"), ("Remove a ratio", "remove_ratio"), ("Long-tail profile", "longtail")]


def imbalance_spec(
    mode: str, minority: list[str] | str | None, keep: Any, ratio: Any, factor: Any, seed: Any
) -> dict[str, Any]:
    """The one imbalance spec every job takes, from the Dataset tab's controls."""
    spec: dict[str, Any] = {"seed": int(seed or 0)}
    if mode == "longtail":
        spec.update(profile="longtail", imbalance_factor=factor)
        return spec
    names = [minority] if isinstance(minority, str) else list(minority or [])
    spec["minority"] = names[0] if len(names) == 1 else names
    if mode == "remove_ratio":
        spec["remove_ratio"] = ratio
    else:
        spec["keep"] = int_or_none(keep)
    return spec


def histogram(
    before: dict[str, int], after: dict[str, int] | None, minority: list[str], fill: dict[str, int] | None = None
) -> go.Figure:
    """Grouped bars of train images per class, before and after the imbalance (and, for a long tail, the
    synthetic images its fill plan adds to each class)."""
    classes = list(before)
    fig = go.Figure()
    fig.add_bar(name="before", x=classes, y=[before[c] for c in classes], marker_color="#a5b4fc")
    if after is not None:
        colors = ["#e11d48" if c in minority else "#4f46e5" for c in classes]
        fig.add_bar(name="after", x=classes, y=[after.get(c, 0) for c in classes], marker_color=colors)
    if fill is not None:
        fig.add_bar(name="fill (synthetic)", x=classes, y=[fill.get(c, 0) for c in classes], marker_color="#f59e0b")
    fig.update_layout(
        barmode="group",
        height=300,
        margin=dict(l=40, r=10, t=30, b=40),
        title="Training images per class",
        legend=dict(orientation="h", y=1.12, x=1, xanchor="right"),
        template="plotly_white",
    )
    return fig


GROUP_NAMES = {"many": "many-shot (> 100)", "medium": "medium-shot (20–100)", "few": "few-shot (< 20)"}


def fill_table(plan: dict[str, Any]) -> str:
    """The fill plan of a long tail as a table: each class's real images, shot group and synthetic images to
    reach the head's count (what ``diffusion.fill: to_head`` would generate)."""
    group_of = {c: g for g, classes in (plan.get("groups") or {}).items() for c in classes}
    rows = "".join(
        f"<tr><td>{html.escape(str(c))}</td><td>{n}</td><td>{GROUP_NAMES.get(group_of.get(c, ''), '')}</td>"
        f"<td>{plan['need'].get(c, 0)}</td></tr>"
        for c, n in (plan.get("counts") or {}).items()
    )
    return (
        f'<p class="rb-note">Fill plan to the head ({plan.get("target")} per class): '
        f"{plan.get('total')} synthetic images in all (experiment key <code>diffusion.fill: to_head</code>).</p>"
        '<table class="rb-fill" id="ds-fill"><thead><tr><th>class</th><th>real</th><th>group</th><th>fill</th>'
        f"</tr></thead><tbody>{rows}</tbody></table>"
    )


def dataset_label(d: dict[str, Any]) -> str:
    """What tells registered datasets apart (issue 30.13): ``#2 digits-demo · digits · 10 classes · 1,437 train ·
    32×32 · 11-29 23:41 UTC`` (the source only where the name is not already it)."""
    name = str(d.get("name") or d.get("source"))
    bits = [f"#{d['id']} {name}"]
    if d.get("source") and d["source"] != name:
        bits.append(str(d["source"]))
    bits.append(f"{len(d.get('classes') or [])} classes")
    if train := sum(int(n) for n in (d.get("train_counts") or {}).values()):
        bits.append(f"{train:,} train")
    if len(size := d.get("image_size") or []) == 2:
        bits.append(f"{size[0]}×{size[1]}")
    if stamp := when(d):
        bits.append(stamp)
    return " · ".join(bits)


def _preview_counts(body: Any) -> dict[str, int] | None:
    """The preview's per-class train counts after the imbalance."""
    if not isinstance(body, dict):
        return None
    after = body.get("after")
    return {str(k): int(v) for k, v in after.items()} if isinstance(after, dict) else None


def build(ctx: Ctx) -> None:
    api = ctx.api
    key = gr.State("")
    job_id = gr.State(None)
    handled = gr.State(None)  # the finished job whose dataset was already put in the list
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, elem_classes="rb-card"):
            gr.Markdown("### 1 · Register a dataset")
            source = gr.Radio(SOURCES, value="digits", label="Source", elem_id="ds-source")
            name = gr.Textbox(label="Name", placeholder="e.g. digits-demo", elem_id="ds-name")
            path = gr.Textbox(
                label="Folder (train/<class>/*, test/<class>/* or <class>/*)",
                placeholder="/data/my-images",
                visible=False,
                elem_id="ds-path",
            )
            upload = gr.File(label="Zip archive", file_types=[".zip"], visible=False, elem_id="ds-upload")
            register = gr.Button("Register dataset", variant="primary", elem_id="ds-register")
            msg = gr.HTML(elem_id="ds-msg")
            card = gr.HTML(job_card(None), elem_id="ds-job")
        with gr.Column(scale=3, elem_classes="rb-card"):
            gr.Markdown("### 2 · Pick the starved class")
            ctx.dataset = dataset = gr.Dropdown(
                label="Dataset", choices=[], allow_custom_value=True, elem_id="ds-dataset"
            )
            info = gr.Markdown(elem_id="ds-info")
            with gr.Row():
                mode = gr.Radio(MODES, value="keep", label="Imbalance", elem_id="ds-mode")
            with gr.Row():
                # Custom values allowed: a reload restores the saved classes before the dataset's classes load.
                minority = gr.Dropdown(
                    label="Minority class(es)",
                    choices=[],
                    multiselect=True,
                    allow_custom_value=True,
                    elem_id="ds-minority",
                )
                keep = gr.Number(50, label="Keep (images)", precision=0, minimum=0, elem_id="ds-keep")
                ratio = gr.Number(0.99, label="Remove ratio", visible=False, elem_id="ds-ratio")
                factor = gr.Number(100, label="Imbalance factor", visible=False, elem_id="ds-factor")
                seed = gr.Number(0, label="Seed", precision=0, elem_id="ds-seed")
            spec_msg = gr.HTML(elem_id="ds-spec-msg")
            plot = gr.Plot(label="Class histogram", elem_id="ds-plot")
    ctx.imbalance = [mode, minority, keep, ratio, factor, seed]

    def list_datasets() -> list[tuple[str, int]]:
        return choices(safe_items(api, "/datasets"), dataset_label)

    def refresh_list() -> Any:
        return gr.update(choices=list_datasets())

    def on_source(src: str) -> tuple[Any, Any, str]:
        # The last message was about the other source (issue 30.15: a folder's error stayed under the digits).
        return gr.update(visible=src == "imagefolder"), gr.update(visible=src == "zip"), ""

    def on_mode(m: str) -> tuple[Any, Any, Any, Any]:
        return (
            gr.update(visible=m != "longtail"),
            gr.update(visible=m == "keep"),
            gr.update(visible=m == "remove_ratio"),
            gr.update(visible=m == "longtail"),
        )

    def do_register(src: str, nm: str, pth: str, up: str | None, k: str) -> tuple[Any, str]:
        params: dict[str, Any] = {"source": src}
        if nm and nm.strip():
            params["name"] = nm.strip()
        if src == "imagefolder":
            if not (pth or "").strip():
                return gr.skip(), error_html("path: give the folder to read (on the server)")
            params["path"] = pth.strip()
        if src == "zip":
            if not up:
                return gr.skip(), error_html("upload: choose a .zip archive first")
            try:
                uploaded = api.upload("/datasets/upload", up)
            except ApiError as exc:
                return gr.skip(), error_html(exc.message)
            params["path"] = uploaded["upload_id"]  # prepare_dataset reads a zip by its upload id
        jid, html_msg = submit(api, "prepare_dataset", params, k)
        return (jid if jid is not None else gr.skip()), html_msg

    def on_dataset(ds_id: Any, current: list[str] | None) -> tuple[str, Any, Any]:
        if not ds_id:
            return "", gr.update(choices=[]), None
        try:
            d = api.get(f"/datasets/{int(ds_id)}")
        except ApiError as exc:
            return error_html(exc.message), gr.update(choices=[]), None
        classes = [str(c) for c in d.get("classes") or []]
        train = d.get("train_counts") or {}
        test = d.get("test_counts") or {}
        size = "×".join(str(s) for s in d.get("image_size") or [])
        text = (
            f"**{d.get('name')}** · source `{d.get('source')}` · {len(classes)} classes · {size} px · "
            f"{sum(train.values())} train / {sum(test.values())} test images"
        )
        keep_sel = [c for c in (current or []) if c in classes]
        return text, gr.update(choices=classes, value=keep_sel), histogram(train, None, [])

    def preview(ds_id: Any, m: str, mino: Any, kp: Any, rt: Any, fc: Any, sd: Any) -> tuple[str, Any]:
        if not ds_id:
            return note_html("Register or choose a dataset first."), gr.skip()
        try:
            d = api.get(f"/datasets/{int(ds_id)}")
        except ApiError as exc:
            return error_html(exc.message), gr.skip()
        before = {str(k): int(v) for k, v in (d.get("train_counts") or {}).items()}
        if m != "longtail" and not mino:
            return note_html("Pick the minority class."), histogram(before, None, [])
        spec = imbalance_spec(m, mino, kp, rt, fc, sd)
        try:
            body = api.post(f"/datasets/{int(ds_id)}/imbalance/preview", spec)
        except ApiError as exc:
            return error_html(exc.message), histogram(before, None, [])
        after = _preview_counts(body)
        names = [mino] if isinstance(mino, str) else list(mino or [])
        total = sum(after.values()) if after else None
        text = note_html(f"Imbalanced training set: {total} images") if total is not None else ""
        if m == "longtail":
            try:
                plan = api.post(f"/datasets/{int(ds_id)}/fill_plan", {"imbalance": spec, "fill": "to_head"})
            except ApiError as exc:
                return text + error_html(exc.message), histogram(before, after, names)
            return text + fill_table(plan), histogram(before, after, names, plan.get("need"))
        return text, histogram(before, after, names)

    tick = result_tick(api, "dataset_id", list_datasets, keep_current=True)

    fields = {
        "source": source,
        "name": name,
        "path": path,
        "dataset": dataset,
        "mode": mode,
        "minority": minority,
        "keep": keep,
        "ratio": ratio,
        "factor": factor,
        "seed": seed,
        "job": job_id,
    }
    persist(ctx, "dataset", fields, key, before=refresh_list, before_outputs=[dataset])
    live_choices(ctx, dataset, list_datasets)
    source.change(on_source, source, [path, upload, msg], show_progress="hidden")
    mode.change(on_mode, mode, [minority, keep, ratio, factor], show_progress="hidden")
    register.click(do_register, [source, name, path, upload, key], [job_id, msg], concurrency_limit=1)
    show_card_now(api, job_id, card)
    # Then the imbalance preview: after a reload the restored minority may already be set (its change
    # fired before the dataset's classes came back), so the histogram is drawn again from the whole spec.
    dataset.change(on_dataset, [dataset, minority], [info, minority, plot], show_progress="hidden").then(
        preview, [dataset, *ctx.imbalance], [spec_msg, plot], show_progress="hidden"
    )
    gr.on(
        [mode.change, minority.change, keep.change, ratio.change, factor.change, seed.change],
        preview,
        [dataset, *ctx.imbalance],
        [spec_msg, plot],
        show_progress="hidden",
        trigger_mode="always_last",
    )
    ctx.timer.tick(tick, [job_id, handled, dataset], [card, dataset, handled], show_progress="hidden")
