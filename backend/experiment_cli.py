"""The command line's experiment runner: ``python app.py experiment CONFIG.yaml --out DIR``.

A client of ``backend.experiment_runs`` like the API: the experiment is recorded in the database (the
studio lists it) and its jobs carry the same idempotency keys, so either reuses the other's work. The
jobs run on worker threads in this process (``--workers N``) or on workers already serving the database.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.config import Settings
from backend.experiment import ExperimentError, _dataset_folder, _resolve, load_config


@dataclass
class ExperimentResult:
    out_dir: Path
    benchmark_id: int
    jobs: dict[str, int]
    rows: list[dict[str, Any]]


class _Bar:
    """tqdm when available and attached to a terminal-ish stream; plain lines otherwise."""

    def __init__(self, total: int, quiet: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="job", disable=quiet, dynamic_ncols=True, file=sys.stderr)

    def update(self, done: float, text: str) -> None:
        self.bar.n = round(done, 2)
        self.bar.set_description_str(text[:80], refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def check_out_dir(out_dir: str | Path, overwrite: bool = False) -> Path:
    """``--out`` before any work starts: a directory that is new, empty, or given up with ``--overwrite``.

    Writing into a directory that already holds files would silently replace an earlier study's results.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExperimentError(f"--out {out} is a file, not a directory; name a directory for the results")
    if out.is_dir() and not overwrite:
        entries = sorted(p.name for p in out.iterdir())
        if entries:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise ExperimentError(
                f"--out {out} is not empty ({len(entries)} entries: {shown}); choose a new directory, "
                "or pass --overwrite to replace its results"
            )
    return out


def run_experiment(
    config_path: str | Path,
    out_dir: str | Path,
    settings: Settings,
    *,
    quiet: bool = False,
    poll_s: float = 0.5,
    overwrite: bool = False,
) -> ExperimentResult:
    """Run the study in ``config_path``; write results.csv, results.json, report.html and config.yaml to out_dir.

    A client of ``backend.experiment_runs`` like the API: the experiment is recorded in the database
    (the studio lists it) and its jobs carry the same idempotency keys, so either reuses the other's work.
    """
    from backend import experiment_runs as runs  # deferred: it loads every job kind (torch, diffusers)
    from backend.jobs.worker import JobWorker
    from backend.runtime import prepare
    from backend.services.errors import DomainError

    out = check_out_dir(out_dir, overwrite)
    config_path = Path(config_path).resolve()
    config = load_config(config_path)
    base_dir = config_path.parent
    if config.device is not None:
        settings = settings.model_copy(update={"device": config.device})
    try:
        prepared = runs.prepare(config.model_dump(mode="json"), settings, base_dir=base_dir, trusted=True)
    except DomainError as exc:
        raise ExperimentError(str(exc)) from None
    dataset_path = _dataset_folder(config, base_dir, settings)
    extra_dirs = [
        Path(p) for p in (dataset_path, config.gan.source_path and _resolve(base_dir, config.gan.source_path)) if p
    ]
    # The operator named these folders in the config, so the embedded workers may read them.
    settings = settings.model_copy(update={"allow_dirs": [*settings.allow_dirs, *extra_dirs]})
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExperimentError(f"--out {out}: cannot create it ({exc.strerror or exc})") from None

    db = prepare(settings)
    workers = [
        JobWorker(settings, db=db, worker_id=f"experiment-{uuid.uuid4().hex[:6]}") for _ in range(settings.workers)
    ]
    threads = [
        threading.Thread(target=w.run_forever, name=f"experiment-worker-{i}", daemon=True)
        for i, w in enumerate(workers)
    ]
    for t in threads:
        t.start()
    bar = _Bar(len(prepared.steps), quiet)
    try:
        experiment_id = runs.launch(db, settings, prepared)
        while True:
            runs.advance(db, settings, experiment_id)
            info = runs.describe(db, settings, experiment_id)
            active = [s for s in info["stages"] if s["status"] in ("running", "queued")]
            running = [s for s in active if s["status"] == "running"] or active  # show a running job first
            text = f"{running[0]['name']}: {running[0]['message'] or running[0]['status']}" if running else "done"
            bar.update(sum(s["progress"] for s in info["stages"]), text)
            if info["status"] != "running":
                break
            time.sleep(poll_s)
    finally:
        bar.close()
        for w in workers:
            w.request_shutdown()
        for t in threads:
            t.join(timeout=60)
    db.dispose()
    if info["status"] != "succeeded":
        raise ExperimentError(info["error"] or f"experiment {experiment_id} {info['status']}")
    for name in runs.OUTPUT_FILES:
        shutil.copyfile(runs.output_dir(settings, experiment_id) / name, out / name)
    jobs = {s["name"]: s["job_id"] for s in info["stages"]}
    return ExperimentResult(out, info["benchmark_id"], jobs, info["rows"])


def run_experiment_cli(config_path: Path, out_dir: Path, settings: Settings, overwrite: bool = False) -> int:
    """Entry point of ``python app.py experiment``: one clear line on errors, exit status 1."""
    try:
        result = run_experiment(config_path, out_dir, settings, overwrite=overwrite)
    except ExperimentError as exc:
        print(f"rebalance experiment: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {result.out_dir / 'results.csv'} and {result.out_dir / 'report.html'} (benchmark {result.benchmark_id})"
    )
    return 0


# ----------------------------------------------------------------------------------------------------
# Reference documentation
