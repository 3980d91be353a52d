"""The Gradio studio. It talks to the backend only through the REST API."""

from backend.ui.app import mount_ui

__all__ = ["mount_ui"]
