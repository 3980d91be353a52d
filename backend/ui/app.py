"""The studio: Gradio Blocks with one tab per workflow step, mounted on the FastAPI app at ``/``.

Every tab lives in ``backend/ui/tabs/<name>.py`` and talks to the backend only through
``backend/ui/client.py`` (HTTP against this server's own ``/api``)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import gradio as gr
from fastapi import FastAPI

from backend.ui.client import ApiClient
from backend.ui.common import LIST_POLL_S, POLL_S, Ctx, Ticks, parse_id
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

# Deep links (issue 30.7): ``?tab=jobs&job=12`` or ``?tab=experiments&experiment=3`` opens that tab with that
# job or experiment chosen. Choosing a tab or an id keeps the address current (history.replaceState: no new
# history entries), so a reload or a copied link opens where the user was.
UI_THREADS = 48  # the studio's own handler threads (not 40: that is the shared default limiter, see build_ui)
LINKED_IDS = {"jobs-id": "job", "exp-id": "experiment"}  # elem_id of an id box -> its query parameter


def _url_param_js(key: str, value: str) -> str:
    """JS that sets (or, empty, removes) one query parameter of the page's address; ``value``: a JS expression."""
    return (
        f"(v) => {{ const u = new URL(window.location.href); const x = {value};"
        f" if (x === null || x === undefined || String(x).trim() === '') u.searchParams.delete('{key}');"
        f" else u.searchParams.set('{key}', String(x).trim());"
        " window.history.replaceState(window.history.state, '', u); return v; }"
    )


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
        header = gr.HTML(_header())
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
                    ticks = {key: Ticks() for key in timers}
                    # The Dataset tab's controls, set on the context by its builder, carry over to later tabs.
                    ctx = replace(ctx, **ticks) if ctx else Ctx(api=api, demo=demo, **ticks)
                    out = builders[name](ctx)
                    if name == "Prompts":
                        vocab_inline = out
                    for key, timer in timers.items():  # one event per timer tick, whatever the tab polls
                        ticks[key].wire(timer)
                tabs.append((tab, list(timers.values())))
        for store in ctx.browser_states if ctx else []:
            store.render()
        every = [t for _, timers in tabs for t in timers]
        for (tab, mine), name in zip(tabs, TABS, strict=True):
            tab.select(
                lambda mine=mine: [gr.Timer(active=any(t is m for m in mine)) for t in every],
                outputs=every,
                show_progress="hidden",
                trigger_mode="always_last",  # a quick A -> B -> A must end on A's timers, not skip the last A
            )
            # The address, and the mark the head script's tab guard compares with the tab on screen.
            mark = f"document.documentElement.dataset.rbTab = '{name.lower()}'"
            tab.select(None, js=_url_param_js("tab", f"({mark})"))
        _wire_deep_links(demo)
    # The studio's event handlers are its own plumbing, not an API: hide them from Gradio's API page and
    # clients (the browser still calls them), so scripts use the documented REST API at /api/docs.
    for fn in demo.fns.values():
        fn.api_visibility = "private"
        # Gradio's page keeps a loading status for every component any event targeted (its outputs by default)
        # and, at each status change of any event, pushes all of them through a search of the component tree:
        # hundreds of outputs made that the page's main cost (an idle page 0.35-0.45 of a core, a reload about
        # 13 CPU-s of Chromium). Hidden progress shows nowhere, so it targets the header, the tree's first node.
        if fn.show_progress == "hidden" and fn.show_progress_on is None:
            fn.show_progress_on = [header]
    # The handlers call this same server's REST API over HTTP. At Gradio's default of 40 threads they run on
    # anyio's default thread limiter, the one the API's sync routes need too: with 40 handlers waiting on API
    # calls (a page load restores every tab at once), the API had no thread left to answer them, and the page
    # froze until the client's 30 s timeouts (a browser test saw a card stuck for minutes). Any other count
    # gives the studio a limiter of its own (Blocks.create_limiter, run at start-up).
    demo.max_threads = UI_THREADS
    return demo


# In the page's <head>, so it runs before the studio mounts:
# - keeps the page on the tab it should show (see the guard's comment);
# - the review keys.
TAB_CLICK_HEAD = """<script>
// The tab guard. The page should show the tab the address names when it loads (?tab=), and after that the tab the
// person last clicked. Done in the browser, by clicking tabs as the person would (their select events start the
// tab's poll timers and write the address): a server round trip could land after the person's first click.
// On a loaded machine, in full test runs, pages ended on a tab nobody chose, or showed one whose timers did not run:
// - a reload of ?tab=select, and a copied link to ?tab=jobs, ended on Dataset. The old script clicked the
//   address's tab for only 30 s. What moved the page after that is not proven; Gradio 6's Tabs code shows two
//   ways: it falls back to its first tab, without a select event, when the selected tab item unregisters; and
//   the first tab fires its own select event when the page loads, which can complete after the address's tab
//   was clicked (then Dataset's timers run and the address says dataset);
// - a click showed its tab but its select event was lost: the poll timers (and the address) stayed with the tab
//   before, so the tab's panels never refreshed.
// So, every half second: while the chosen tab is not shown for 1 s, click it; while it is shown but the mark of
// the last select event (data-rb-tab on <html>, set by each tab's select event; the first tab's timers run from
// the start) names another tab for 2 s, click another tab and the chosen one again, which fires its select events
// anew. Buttons are looked up by name each time: Gradio can redraw them, and a click on a detached copy does
// nothing. A person's click (a trusted event) chooses the tab and resets the count; 60 clicks at most per choice.
// In a narrow window Gradio moves the tabs that do not fit into a "More tabs" menu of plain buttons (the one
// shown has the class "selected"): those count as tab buttons too, or the guard would undo a choice made there.
(() => {
  const names = __TAB_NAMES__;
  const nameOf = (b) => b.textContent.trim().toLowerCase();
  const tabButtons = '#rb-tabs [role=tab], #rb-tabs .overflow-dropdown button';
  const inMenu = (b) => !b.hasAttribute('role');
  const isShown = (b) => b.getAttribute('aria-selected') === 'true' || (inMenu(b) && b.classList.contains('selected'));
  // The tab bar's button for a tab when it has one, else the menu's.
  const pick = (buttons, test) => buttons.find((b) => test(b) && !inMenu(b)) || buttons.find(test);
  const fromAddress = (new URL(window.location.href).searchParams.get('tab') || '').toLowerCase();
  let chosen = names.includes(fromAddress) ? fromAddress : null;
  let clickedAt = 0;
  let clicks = 0;
  let wrongSince = null;  // when the chosen tab stopped being shown
  let staleSince = null;  // when the mark was first seen to differ from the chosen, shown tab
  let away = false;  // the guard itself clicked away: click the chosen tab at the next look, without waiting
  window.rbChosenTab = chosen;
  window.rbOpening = !!chosen;  // the address's tab is not shown yet (for a test's diagnostics)
  document.addEventListener('click', (e) => {
    const tab = e.isTrusted && e.target.closest && e.target.closest(tabButtons);
    if (tab && names.includes(nameOf(tab))) {
      window.rbChosenTab = nameOf(tab);
      window.rbTabClickedAt = performance.now();
    }
  }, true);
  const guard = () => {
    if ((window.rbTabClickedAt || 0) > clickedAt) {  // the person chose a tab: their click does the rest
      clickedAt = window.rbTabClickedAt;
      chosen = window.rbChosenTab;
      clicks = 0;
      wrongSince = staleSince = null;
      away = false;
      window.rbOpening = false;
      return;
    }
    const buttons = [...document.querySelectorAll(tabButtons)].filter((b) => names.includes(nameOf(b)));
    const shown = buttons.find(isShown);
    if (!shown) return;  // the studio has not mounted yet
    chosen = chosen ?? nameOf(shown);
    window.rbChosenTab = chosen;
    const now = performance.now();
    if (nameOf(shown) !== chosen) {
      staleSince = null;
      wrongSince = wrongSince ?? now;
      if ((away || now - wrongSince >= 1000) && clicks < 60) {
        const button = pick(buttons, (b) => nameOf(b) === chosen);
        if (button) { clicks += 1; button.click(); }
        away = false;
        wrongSince = null;
      }
      return;
    }
    wrongSince = null;
    window.rbOpening = false;
    const mark = document.documentElement.dataset.rbTab || names[0];
    if (mark === chosen) { staleSince = null; return; }
    staleSince = staleSince ?? now;
    if (now - staleSince < 2000 || clicks >= 60) return;
    staleSince = null;
    clicks += 1;
    away = true;
    pick(buttons, (b) => nameOf(b) !== chosen).click();
  };
  guard();
  setInterval(guard, 500);
})();
// Review from the keyboard: a / r accept / reject the pick shown large on the Select tab (then the next one is
// shown). Not while typing in a field, and only when that pick and its buttons are on screen.
document.addEventListener('keydown', (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
  const key = (e.key || '').toLowerCase();
  if (key !== 'a' && key !== 'r') return;
  const t = e.target;
  if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName || ''))) return;
  const pick = document.querySelector('#sel-chosen .rb-preview');
  const button = document.querySelector(key === 'a' ? '#sel-accept' : '#sel-reject');
  if (!pick || !pick.offsetParent || !button || !button.offsetParent) return;
  e.preventDefault();
  button.click();
});
</script>""".replace("__TAB_NAMES__", json.dumps([t.lower() for t in TABS]))


def _wire_deep_links(demo: gr.Blocks) -> None:
    """Open the tab (and job or experiment) the address names on load; keep the id boxes in the address."""
    boxes = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None) in LINKED_IDS}
    linked = [(boxes[elem], key) for elem, key in LINKED_IDS.items()]
    for box, key in linked:
        box.change(None, box, None, js=_url_param_js(key, "v"))
    search = gr.Textbox(visible=False)

    def open_linked(query: str) -> list[Any]:
        params = {k: v[-1] for k, v in parse_qs(str(query or "").lstrip("?")).items()}
        chosen = [parse_id(params.get(key)) for _, key in linked]
        return [str(c) if c is not None else gr.skip() for c in chosen]

    demo.load(open_linked, search, [box for box, _ in linked], js="(q) => [window.location.search]",
              show_progress="hidden")  # fmt: skip


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
        head=TAB_CLICK_HEAD,
    )
