"""Rebalance entry point.

    python app.py                         serve UI + API on 127.0.0.1:7860 with one embedded worker
    python app.py worker                  run one more worker against the same database
    python app.py experiment CONFIG.yaml --out DIR    run a whole study headless

Every flag also exists as a REBALANCE_* environment variable (see README.md).
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from backend.config import Settings
from backend.runtime import StartupError, prepare


def _common(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("settings (also REBALANCE_* environment variables)")
    g.add_argument("--workspace", help="workspace directory for the database and files (default ./workspace)")
    g.add_argument(
        "--db-url", help="SQLAlchemy URL (default: SQLite in the workspace; postgresql+psycopg://… for many hosts)"
    )
    g.add_argument(
        "--allow-dir",
        action="append",
        dest="allow_dirs",
        metavar="DIR",
        help="a directory users may read datasets/images from (repeatable)",
    )
    g.add_argument("--device", help="compute device for jobs: cuda or cpu (default: cuda when available)")
    g.add_argument("--plugins", help="comma-separated modules that register extra job kinds")
    g.add_argument(
        "--ray",
        dest="ray_address",
        metavar="ADDRESS",
        help="run generation shards and benchmark runs on a Ray cluster: auto, local (start one here), or host:port",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="app.py", description="Rebalance: repair class imbalance with synthetic images."
    )
    _common(parser)
    parser.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 7860)")
    parser.add_argument("--workers", type=int, help="embedded worker processes (default 1; 0 = none)")
    parser.add_argument("--auth", help="user:password protecting UI and API")
    sub = parser.add_subparsers(dest="command")
    w = sub.add_parser("worker", help="run one worker against the database")
    _common(w)
    e = sub.add_parser("experiment", help="run a whole study from a YAML config, headless")
    _common(e)
    e.add_argument("config", type=Path, help="experiment config (YAML); keys documented in README.md")
    e.add_argument(
        "--out", type=Path, required=True, help="output directory for results.csv and report.html (new or empty)"
    )
    e.add_argument(
        "--overwrite", action="store_true", help="write into --out even when it already holds files (replacing them)"
    )
    e.add_argument("--workers", type=int, help="embedded workers for this run (default 1; 0 = use existing workers)")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in ("host", "port", "workspace", "db_url", "workers", "auth", "device", "ray_address"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "allow_dirs", None):
        env = [p for p in os.environ.get("REBALANCE_ALLOW_DIRS", "").split(os.pathsep) if p]
        overrides["allow_dirs"] = env + args.allow_dirs
    if getattr(args, "plugins", None):
        overrides["plugins"] = args.plugins
    return Settings(**overrides)


def serve(settings: Settings) -> None:
    import uvicorn

    from backend.server import create_app, start_experiment_driver, start_workers, stop_workers

    db = prepare(settings)
    if settings.ray_address:
        from backend.server import join_ray

        try:
            settings = join_ray(settings)  # before the workers start: they join the same cluster
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError, …
            raise StartupError(f"cannot join the Ray cluster at {settings.ray_address}: {exc}") from exc
    app = create_app(settings, db)
    procs = start_workers(settings, settings.workers)
    driver = start_experiment_driver(settings, db)  # studies launched from the browser move on unwatched
    print(
        f"Rebalance on http://{settings.host}:{settings.port}  (API docs: /api/docs; "
        f"workspace {settings.workspace_dir}; {settings.workers} worker(s); device {settings.device}; "
        f"executor {'ray at ' + settings.ray_address if settings.ray_address else 'local'})",
        flush=True,
    )
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    finally:
        driver.set()
        stop_workers(procs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        first = exc.errors()[0]
        print(f"rebalance: error: {'.'.join(map(str, first['loc']))}: {first['msg']}", file=sys.stderr)
        return 2
    try:
        if args.command == "worker":
            prepare(settings)
            from backend.jobs.worker import run_worker

            run_worker(settings)
        elif args.command == "experiment":
            from backend.experiment_cli import run_experiment_cli

            return run_experiment_cli(args.config, args.out, settings, overwrite=args.overwrite)
        else:
            serve(settings)
    except StartupError as exc:
        print(f"rebalance: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 <pid>`: every thread's stack to stderr, for a server that hangs
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    sys.exit(main())
