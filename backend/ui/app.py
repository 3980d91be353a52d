"""Gradio Blocks shell with the studio's tabs, mounted on the FastAPI app at ``/``."""

from __future__ import annotations

import gradio as gr
from fastapi import FastAPI

from backend.config import Settings

TABS = ("Dataset", "Prompts", "Generate", "Select", "Benchmark", "Jobs")


def build_ui(settings: Settings) -> gr.Blocks:
    with gr.Blocks(title="Rebalance") as demo:
        gr.Markdown("# Rebalance\nRepair class imbalance with synthetic images.")
        with gr.Tabs():
            for name in TABS:
                with gr.Tab(name):
                    gr.Markdown(f"{name}")
    return demo


def mount_ui(app: FastAPI, settings: Settings) -> FastAPI:
    return gr.mount_gradio_app(app, build_ui(settings), path="/")
