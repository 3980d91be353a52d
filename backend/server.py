"""Composition at the top: the REST API, the studio mounted on it, and the embedded workers.

Nothing below imports this module: the API does not know the studio exists, and the studio only
knows the URL of the API it talks to.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading

from fastapi import FastAPI

from backend.api.app import create_api
from backend.config import Settings
from backend.db.session import Database

log = logging.getLogger("rebalance.server")

# Hosts that mean "every interface" when binding; the studio reaches its own server over loopback then.
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


def api_base_url(settings: Settings) -> str:
    """The URL the studio uses to reach this server's own API."""
    host = "127.0.0.1" if settings.host in _WILDCARD_HOSTS else settings.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # a bare IPv6 address needs brackets in a URL
    return f"http://{host}:{settings.port}/api"


def create_app(settings: Settings, db: Database, with_ui: bool = True) -> FastAPI:
    """The API, plus the Gradio studio at ``/`` unless ``with_ui`` is False."""
    app = create_api(settings, db)
    if with_ui:
        from backend.ui.app import mount_ui
        from backend.ui.client import ApiClient

        app = mount_ui(app, ApiClient(api_base_url(settings), settings.auth), int(settings.max_upload_mb * 1e6))
    return app


def join_ray(settings: Settings) -> Settings:
    """Join the Ray cluster in the server process (with ``local``, start it here) and return the settings
    the embedded workers get: with ``local`` they join this process's instance, not one each."""
    from backend.jobs import ray_executor

    ray_executor.connect(settings.ray_address)
    if settings.ray_address == ray_executor.LOCAL:
        return settings.model_copy(update={"ray_address": ray_executor.own_address()})
    return settings


def _worker_process(settings_json: str) -> None:
    from backend.jobs.worker import run_worker

    run_worker(Settings.model_validate_json(settings_json))


def start_workers(settings: Settings, n: int) -> list[mp.Process]:
    """Embedded workers are separate processes so training never blocks the web server."""
    ctx = mp.get_context("spawn")
    procs = []
    for i in range(n):
        p = ctx.Process(target=_worker_process, args=(settings.model_dump_json(),), name=f"worker-{i}", daemon=True)
        p.start()
        procs.append(p)
    return procs


def stop_workers(procs: list[mp.Process], timeout: float = 30.0) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()  # SIGTERM: the worker checkpoints and releases its job
    for p in procs:
        p.join(timeout)
        if p.is_alive():
            p.kill()


def start_experiment_driver(settings: Settings, db: Database, every_s: float = 2.0) -> threading.Event:
    """Advance running experiments in the background (submit each stage when its inputs are done), so a
    study launched from the browser runs to its report while nobody watches. Set the event to stop."""
    from backend import experiment_runs

    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            try:
                experiment_runs.advance_running(db, settings)
            except Exception:  # a transient DB error must not end the driver
                log.exception("advancing experiments failed")

    threading.Thread(target=loop, name="experiment-driver", daemon=True).start()
    return stop
