"""What an open studio page costs while it only polls: one Gradio event per timer tick (``Ticks``) against
one event per handler (what ``timer.tick(fn, ...)`` per panel gives, the studio's wiring before).

Part A is the mechanism alone: a page with one 2 s timer and N panels whose handlers return ``gr.skip()``
(nothing changes: the idle case), wired both ways, each opened in headless Chromium for the same time.
Part A2 is where an event's hidden progress lands: Gradio keeps a loading status for every component any event
targeted (by default its outputs) and, at every status change of any event, pushes all of them through a search
of the component tree. A page whose load event filled F fields, then one idle timer, both ways (the studio
targets the header alone).
Part B is the real studio, idle on a tab (no job): the browser's and the server's CPU over the same time.

    python benchmarks/bench_idle_page.py                 # ~3 min on 2 CPU cores
    python benchmarks/bench_idle_page.py --panels 6 --seconds 20 --tab generate

Prints CPU-seconds of Chromium (all its processes) and of the server per window, and the ratio
separate / combined. Run it alone: other load on the machine inflates both sides.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend.ui.common import POLL_S, Ticks  # noqa: E402
from benchmarks.bench_jobs import free_port  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _wait_up(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not come up")


def measure_page(url: str, seconds: float, server: list[psutil.Process]) -> tuple[float, float]:
    """(Chromium CPU-s, server CPU-s) over ``seconds`` with ``url`` open and left alone."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url)
        page.wait_for_timeout(6000)  # loaded, first ticks done
        chrome = [c for c in psutil.Process().children(recursive=True) if "chrom" in c.name()]
        c0, s0 = _cpu(chrome), _cpu(server)
        page.wait_for_timeout(seconds * 1000)
        out = _cpu(chrome) - c0, _cpu(server) - s0
        browser.close()
    return out


def synthetic_page(panels: int, combined: bool):  # noqa: ANN201 - a gr.Blocks, imported lazily
    """One timer, ``panels`` HTML panels whose poll handlers find nothing new."""
    import gradio as gr

    with gr.Blocks() as demo:
        timer = gr.Timer(POLL_S)
        ticks = Ticks() if combined else timer
        for i in range(panels):
            box = gr.HTML(f"panel {i}")
            state = gr.State(i)
            ticks.tick(lambda s: gr.skip(), state, box, show_progress="hidden")
        if combined:
            ticks.wire(timer)
    return demo


def compare(pages: dict[str, Any], seconds: float, ratio: str) -> None:
    """Open each synthetic page (name -> gr.Blocks, the peer first) alone for ``seconds``; print both sides'
    CPU and the peer's Chromium CPU over the second's."""
    got = []
    for name, demo in pages.items():
        port = free_port()
        demo.launch(server_port=port, prevent_thread_lock=True, quiet=True)
        try:
            got.append(measure_page(f"http://127.0.0.1:{port}/", seconds, [psutil.Process()]))
        finally:
            demo.close()
        print(f"   {name:28s} Chromium {got[-1][0]:6.2f} CPU-s   server {got[-1][1]:5.2f} CPU-s")
    print(f"   ratio ({ratio}): Chromium {got[0][0] / max(got[1][0], 1e-6):.2f}x")


def part_a(panels: int, seconds: float) -> None:
    print(f"A. one page, one {POLL_S:g} s timer, {panels} idle panels, {seconds:g} s each way")
    pages = {
        "one event per handler": synthetic_page(panels, False),
        "one event per tick (Ticks)": synthetic_page(panels, True),
    }
    compare(pages, seconds, "per handler / Ticks")


def progress_page(components: int, one_target: bool):  # noqa: ANN201 - a gr.Blocks, imported lazily
    """``components`` text boxes that a load event fills, then one 2 s timer whose handler finds nothing new;
    every event's hidden progress targets either its outputs (Gradio's default) or the first component only."""
    import gradio as gr

    with gr.Blocks() as demo:
        first = gr.HTML("header")
        boxes = [gr.Textbox(label=f"field {i}") for i in range(components)]
        target = first if one_target else None
        demo.load(lambda: [str(i) for i in range(components)], None, boxes, show_progress="hidden",
                  show_progress_on=target)  # fmt: skip
        timer = gr.Timer(POLL_S)
        timer.tick(lambda: gr.skip(), None, boxes[-1], show_progress="hidden", show_progress_on=target)
    return demo


def part_progress(components: int, seconds: float) -> None:
    print(f"A2. one page, {components} fields a load event fills, one idle {POLL_S:g} s timer, {seconds:g} s each way")
    pages = {
        "progress on every output": progress_page(components, False),
        "progress on the first field": progress_page(components, True),
    }
    compare(pages, seconds, "every output / first field")


def part_b(tab: str, seconds: float) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as ws:
        cmd = [sys.executable, "app.py", "--workspace", ws, "--port", str(port), "--workers", "1"]
        server = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            _wait_up(f"http://127.0.0.1:{port}/api/health")
            procs = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
            chrome, srv = measure_page(f"http://127.0.0.1:{port}/?tab={tab}", seconds, procs)
        finally:
            server.terminate()
            server.wait(30)
    print(f"B. the studio idle on its {tab} tab for {seconds:g} s: Chromium {chrome:.2f} CPU-s "
          f"({chrome / seconds:.2f} core), server {srv:.2f} CPU-s ({srv / seconds:.2f} core)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--panels", type=int, default=6, help="poll handlers on the synthetic page (Generate has 6)")
    ap.add_argument("--fields", type=int, default=200, help="fields on the progress-target page (A2)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measuring window per page")
    ap.add_argument("--tab", default="generate", help="the studio tab left open in part B")
    args = ap.parse_args()
    part_a(args.panels, args.seconds)
    part_progress(args.fields, args.seconds)
    part_b(args.tab, args.seconds)


if __name__ == "__main__":
    main()
