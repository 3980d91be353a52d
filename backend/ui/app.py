"""The studio: Gradio Blocks with one tab per workflow step, mounted on the FastAPI app at ``/``.

Every tab lives in ``backend/ui/tabs/<name>.py`` and talks to the backend only through
``backend/ui/client.py`` (HTTP against this server's own ``/api``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import gradio as gr
from fastapi import FastAPI

from backend.ui.client import ApiClient
from backend.ui.common import LIST_POLL_S, POLL_S, Ctx
from backend.ui.tabs import benchmark, dataset, experiments, generate, jobs, prompts, select

ASSETS = Path(__file__).resolve().parents[2] / "frontend_assets"
TABS = ("Dataset", "Prompts", "Generate", "Select", "Benchmark", "Experiments", "Jobs")

THEME = gr.themes.Soft(
    primary_hue="indigo",
    secondary_hue="rose",
    neutral_hue="slate",
    font=["Inter", "system-ui", "Segoe UI", "sans-serif"],  # no web-font fetch: the studio works offline
    font_mono=["ui-monospace", "SFMono-Regular", "monospace"],
)

# Gradio's status tracker announces a finished event with ``i18n("common.complete")``, a key its bundled
# English lacks: without this the raw key reaches the page (issue 20.8).
I18N = gr.I18n(en={"common.complete": "Done"})


def _header() -> str:
    logo = (ASSETS / "logo.svg").read_text()
    return (
        f'<div id="rb-header">{logo}<div><h1>Rebalance studio</h1>'
        "<p>Repair class imbalance with synthetic images: dataset → prompts → generate → select → benchmark."
        ' Everything here is also scriptable through the <a href="api/docs" target="_blank">REST API</a>.</p>'
        "</div></div>"
    )


def build_ui(api: ApiClient) -> gr.Blocks:
    """The whole studio, talking to the REST API through ``api``."""
    builders = {
        "Dataset": dataset.build,
        "Prompts": prompts.build,
        "Generate": lambda c: generate.build(c, vocab_inline),
        "Select": select.build,
        "Benchmark": benchmark.build,
        "Experiments": experiments.build,
        "Jobs": jobs.build,
    }
    vocab_inline: list[gr.components.Component] = []
    # delete_cache: Gradio's uploads and cached files (under <workspace>/tmp/gradio) older than an hour go, hourly.
    with gr.Blocks(title="Rebalance studio", delete_cache=(3600, 3600)) as demo:
        gr.HTML(_header())
        ctx: Ctx | None = None
        tabs: list[tuple[gr.Tab, list[gr.Timer]]] = []
        with gr.Tabs(elem_id="rb-tabs"):
            for i, name in enumerate(TABS):
                with gr.Tab(name, id=name.lower(), elem_id=f"tab-{name.lower()}") as tab:
                    # Each tab polls with its own timers, running only while the tab is shown,
                    # so a hidden tab costs the server nothing.
                    timers = {
                        "timer": gr.Timer(POLL_S, active=i == 0),
                        "list_timer": gr.Timer(LIST_POLL_S, active=i == 0),
                    }
                    # The Dataset tab's controls, set on the context by its builder, carry over to later tabs.
                    ctx = replace(ctx, **timers) if ctx else Ctx(api=api, demo=demo, **timers)
                    out = builders[name](ctx)
                    if name == "Prompts":
                        vocab_inline = out
                tabs.append((tab, list(timers.values())))
        for store in ctx.browser_states if ctx else []:
            store.render()
        every = [t for _, timers in tabs for t in timers]
        for tab, mine in tabs:
            tab.select(
                lambda mine=mine: [gr.Timer(active=any(t is m for m in mine)) for t in every],
                outputs=every,
                show_progress="hidden",
            )
    # The studio's event handlers are its own plumbing, not an API: hide them from Gradio's API page and
    # clients (the browser still calls them), so scripts use the documented REST API at /api/docs.
    for fn in demo.fns.values():
        fn.api_visibility = "private"
    return demo


def mount_ui(app: FastAPI, api: ApiClient, max_file_size: int) -> FastAPI:
    """Mount the studio at ``/``; theme, CSS and favicon go here (Gradio 6 moved them off Blocks).

    ``api``: a client for the REST API the studio drives; ``max_file_size``: the upload cap in bytes.
    """
    return gr.mount_gradio_app(
        app,
        build_ui(api),
        path="/",
        theme=THEME,
        css_paths=[ASSETS / "studio.css"],
        favicon_path=str(ASSETS / "favicon.png"),
        max_file_size=max_file_size,
        ssr_mode=False,
        footer_links=["gradio", "settings"],  # no "Use via API": the REST API is the API
        i18n=I18N,
    )
