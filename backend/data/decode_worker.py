"""One decode task of the cache build: read each file once, hash the bytes read, decode them, write the row;
and the worker processes that run such tasks (``python -m backend.data.decode_worker``).

Kept apart from ``cache.py`` and light on imports (numpy, Pillow, the image decoder): a worker process
starts by importing only this (about 0.3 s). Workers are plain subprocesses speaking pickle over their
stdin/stdout rather than a ``multiprocessing`` pool, because multiprocessing's spawn and forkserver
children re-import the parent's ``__main__`` script (``app.py``, a benchmark: torch, seconds per worker),
and fork is unsafe in a job process with live threads.
"""

from __future__ import annotations

import hashlib
import pickle
import queue
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.data.images import ImageDecodeError, decode_image, resize_rgb

VALUES = np.arange(256, dtype=np.int64)
SQUARES = VALUES**2


@dataclass
class TaskResult:
    """What a task of rows ``start .. start + len(digests)`` found: BLAKE2b-128 of each file's bytes (in
    order; b"" for unreadable files), the rows that failed ({row: reason}), integer channel sums and sums
    of squares over the rows that decoded, and whether an image of another size stopped the task."""

    start: int
    digests: list[bytes] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    sums: list[int] = field(default_factory=lambda: [0, 0, 0])
    squares: list[int] = field(default_factory=lambda: [0, 0, 0])
    pixels: int = 0  # pixels per channel the sums cover
    mixed: bool = False


def decode_rows(
    npy_path: str, files: list[str], start: int, size: tuple[int, int], resize: bool, stats: bool
) -> TaskResult:
    """Decode ``files`` into rows ``start ..`` of the ``.npy`` array at ``npy_path`` (opened read-write as a
    memory map, so tasks in other processes fill their own rows of the same file). With ``resize`` False an
    image of another size ends the task with ``mixed`` set (the caller decodes again, resized)."""
    res = TaskResult(start=start)
    h, w = size
    buf = np.zeros((len(files), h, w, 3), dtype=np.uint8)  # rows land here, then in the file in one write
    ok = np.zeros(len(files), dtype=bool)
    for j, name in enumerate(files):
        i = start + j
        try:
            with open(name, "rb") as fh:  # not Path(name): no path parsing per file
                data = fh.read()
        except OSError as exc:
            res.digests.append(b"")
            res.failed[i] = f"unreadable ({exc.strerror or exc})"
            continue
        res.digests.append(hashlib.blake2b(data, digest_size=16).digest())
        try:
            arr = decode_image(data)
        except ImageDecodeError as exc:
            res.failed[i] = str(exc).split(": ", 1)[-1]
            continue
        if arr.shape[:2] != tuple(size):
            if not resize:
                res.mixed = True
                return res
            arr = resize_rgb(arr, size)
        buf[j] = arr
        ok[j] = True
    out = np.load(npy_path, mmap_mode="r+")
    out[start : start + len(files)] = buf
    # No flush here: the rows sit in the page cache, shared with every process mapping the file, and the
    # build fsyncs the whole file once when all tasks are done (a flush per task cost 5 % of the build).
    del out
    if stats and ok.any():
        channels = buf[ok].reshape(-1, 3).T  # (3, pixels) view
        # A histogram per channel: exact integer sums and sums of squares in one pass over the pixels.
        hist = np.stack([np.bincount(channels[c], minlength=256) for c in range(3)]).astype(np.int64)
        res.sums = [int(v) for v in hist @ VALUES]
        res.squares = [int(v) for v in hist @ SQUARES]
        res.pixels = int(channels.shape[1])
    return res


class WorkerPool:
    """``n`` worker subprocesses behind a ``concurrent.futures``-style ``submit`` of ``decode_rows`` tasks.

    One parent thread per worker sends a task and waits for its result (the wait releases the GIL); a task
    not started when the pool closes or is cancelled never runs. A worker that dies fails its task with
    ``RuntimeError`` (the build is abandoned, nothing is kept). Use as a context manager.
    """

    def __init__(self, n: int) -> None:
        root = str(Path(__file__).resolve().parents[2])
        self._procs = [
            subprocess.Popen(
                [sys.executable, "-m", "backend.data.decode_worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=root,  # the package is importable from the repository root whatever the caller's cwd
            )
            for _ in range(n)
        ]
        self._idle: queue.SimpleQueue[subprocess.Popen] = queue.SimpleQueue()
        for proc in self._procs:
            self._idle.put(proc)
        self._threads = ThreadPoolExecutor(max_workers=n)

    def submit(self, fn: Any, *args: Any) -> Future:
        if fn is not decode_rows:
            raise ValueError("WorkerPool runs decode_rows tasks only")
        return self._threads.submit(self._run, args)

    def _run(self, args: tuple) -> TaskResult:
        proc = self._idle.get()
        try:
            pickle.dump(args, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            proc.stdin.flush()
            ok, value = pickle.load(proc.stdout)
        except (EOFError, OSError, pickle.UnpicklingError) as exc:
            raise RuntimeError(f"a decode worker process died (exit code {proc.poll()})") from exc
        finally:
            self._idle.put(proc)
        if not ok:
            raise value
        return value

    def close(self) -> None:
        self._threads.shutdown(wait=True, cancel_futures=True)
        for proc in self._procs:
            try:
                proc.stdin.close()  # end of tasks: the worker's loop ends
            except OSError:
                pass
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve() -> None:
    """A worker's loop: read a pickled task from stdin, write ``(ok, result or exception)`` to stdout."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            args = pickle.load(stdin)
        except EOFError:
            return
        try:
            out: tuple[bool, Any] = (True, decode_rows(*args))
        except Exception as exc:  # sent back and raised in the parent, where the job reports it
            out = (False, exc)
        pickle.dump(out, stdout, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.flush()


if __name__ == "__main__":
    # Serve from the module under its package name, so results pickle as backend.data.decode_worker.TaskResult
    # (as __main__.TaskResult the parent could not unpickle them).
    from backend.data import decode_worker

    decode_worker._serve()
