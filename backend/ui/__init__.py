"""The Gradio studio (``backend.ui.app.mount_ui``). It talks to the backend only through the REST API.

Nothing is imported here: ``backend.ui.client`` and the pure helpers must stay importable without gradio."""
