"""Prompts tab: the vocabulary editor (template, one list per slot, negative prompt) with a live count
of distinct prompts, sample prompts, and save/load."""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote

import gradio as gr

from backend.ui.client import ApiError
from backend.ui.common import Ctx, choices, error_html, live_choices, note_html, ok_html, persist, safe_items

EXAMPLE_TEMPLATE = "a photo of a {breed} cat {preposition} the {furniture}"
EXAMPLE_SLOTS = (
    "breed: persian, siamese, maine coon, bengal\npreposition: on, under, next to\nfurniture: sofa, bed, table"
)


def parse_slots(text: str) -> tuple[dict[str, list[str]], str | None]:
    """``name: a, b, c`` per line -> {name: [a, b, c]}; returns an error naming the bad line."""
    slots: dict[str, list[str]] = {}
    for n, raw in enumerate((text or "").splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        name, sep, values = line.partition(":")
        if not sep or not name.strip():
            return {}, f"slots line {n}: write it as 'name: value, value, …'"
        slots[name.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    return slots, None


def format_slots(slots: dict[str, list[str]]) -> str:
    return "\n".join(f"{k}: {', '.join(str(v) for v in vals)}" for k, vals in slots.items())


def vocabulary_body(name: str, template: str, slots_text: str, negative: str) -> tuple[dict[str, Any] | None, str]:
    slots, err = parse_slots(slots_text)
    if err:
        return None, err
    body: dict[str, Any] = {"template": template or "", "slots": slots, "negative_prompt": (negative or "").strip()}
    if name and name.strip():
        body["name"] = name.strip()
    return body, ""


def _label(v: dict[str, Any]) -> str:
    return f"#{v['id']} {v.get('name')}"


def build(ctx: Ctx) -> list[gr.components.Component]:
    """Returns the editor's template, slots and negative prompt (Generate submits them inline)."""
    api = ctx.api
    key = gr.State("")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, elem_classes="rb-card"):
            gr.Markdown("### Vocabulary editor")
            with gr.Row():
                saved = gr.Dropdown(
                    label="Saved vocabularies", choices=[], scale=3, allow_custom_value=True, elem_id="pr-saved"
                )
                load = gr.Button("Load", scale=1, elem_id="pr-load")
            name = gr.Textbox(label="Name", placeholder="cat-indoor", elem_id="pr-name")
            template = gr.Textbox(
                EXAMPLE_TEMPLATE, label="Template ({slot} marks a slot)", lines=2, elem_id="pr-template"
            )
            slots = gr.Textbox(
                EXAMPLE_SLOTS, label="Slots: one per line, 'name: value, value, …'", lines=6, elem_id="pr-slots"
            )
            negative = gr.Textbox(
                "blurry, deformed, text, watermark", label="Negative prompt", lines=1, elem_id="pr-negative"
            )
            with gr.Row():
                default = gr.Button("Built-in for the minority class", elem_id="pr-default")
                save = gr.Button("Save vocabulary", variant="primary", elem_id="pr-save")
            msg = gr.HTML(elem_id="pr-msg")
        with gr.Column(scale=2, elem_classes="rb-card"):
            gr.Markdown("### Preview")
            count = gr.HTML(elem_id="pr-count")
            samples = gr.HTML(elem_id="pr-samples")

    def list_saved() -> list[tuple[str, int]]:
        return choices(safe_items(api, "/vocabularies"), _label)

    def refresh() -> Any:
        return gr.update(choices=list_saved())

    def preview(tpl: str, sl: str, neg: str) -> tuple[str, str]:
        body, err = vocabulary_body("", tpl, sl, neg)
        if body is None:
            return error_html(err), ""
        try:
            out = api.post("/vocabularies/preview", {"vocabulary": body, "n": 8})
        except ApiError as exc:
            return error_html(exc.message), ""
        lis = "".join(f"<li>{html.escape(str(p))}</li>" for p in out.get("prompts") or [])
        return ok_html(f"{out['distinct_count']} distinct prompts"), f'<ol class="rb-samples">{lis}</ol>'

    def do_default(minority: Any) -> tuple[Any, Any, Any, str]:
        names = [minority] if isinstance(minority, str) else list(minority or [])
        cls = names[0] if names else "cat"
        try:
            v = api.get(f"/vocabularies/defaults/{quote(str(cls), safe='')}")
        except ApiError as exc:
            return gr.skip(), gr.skip(), gr.skip(), error_html(exc.message)
        return (
            v.get("template") or "",
            format_slots(v.get("slots") or {}),
            v.get("negative_prompt") or "",
            ok_html(f"built-in vocabulary for class {cls!r}"),
        )

    def do_save(nm: str, tpl: str, sl: str, neg: str) -> tuple[str, Any]:
        body, err = vocabulary_body(nm, tpl, sl, neg)
        if body is None:
            return error_html(err), gr.skip()
        if not body.get("name"):
            return error_html("name: give the vocabulary a name"), gr.skip()
        rows = safe_items(api, "/vocabularies")
        same = next((r for r in rows if r.get("name") == body["name"]), None)
        try:
            if same is not None:
                out = api.put(f"/vocabularies/{same['id']}", body)
                verb = "updated"
            else:
                out = api.post("/vocabularies", body)
                verb = "saved"
        except ApiError as exc:
            return error_html(exc.message), gr.skip()
        return ok_html(f"vocabulary #{out['id']} {out.get('name')} {verb}"), gr.update(
            choices=list_saved(), value=int(out["id"])
        )

    def do_load(vid: Any) -> tuple[Any, Any, Any, Any, str]:
        if not vid:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), note_html("Choose a saved vocabulary.")
        try:
            v = api.get(f"/vocabularies/{int(vid)}")
        except ApiError as exc:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), error_html(exc.message)
        return (
            v.get("name") or "",
            v.get("template") or "",
            format_slots(v.get("slots") or {}),
            v.get("negative_prompt") or "",
            ok_html(f"loaded vocabulary #{v['id']}"),
        )

    fields = {"saved": saved, "name": name, "template": template, "slots": slots, "negative": negative}
    persist(ctx, "prompts", fields, key, before=refresh, before_outputs=[saved])
    gr.on(
        [template.change, slots.change, negative.change],
        preview,
        [template, slots, negative],
        [count, samples],
        show_progress="hidden",
        trigger_mode="always_last",
    )
    live_choices(ctx, saved, list_saved)
    save.click(do_save, [name, template, slots, negative], [msg, saved], concurrency_limit=1)
    load.click(do_load, saved, [name, template, slots, negative, msg])
    minority = ctx.imbalance[1] if ctx.imbalance else None
    default.click(do_default, minority, [template, slots, negative, msg])
    return [template, slots, negative]
