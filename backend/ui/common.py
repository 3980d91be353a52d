"""Helpers every tab shares: the context object, job cards, inline messages, URLs, form persistence."""

from __future__ import annotations

import hashlib
import html
import inspect
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from backend.ui.client import ApiClient, ApiError, new_key

POLL_S = 2.0  # how often live panels (job cards, galleries) ask the API for news
LIST_POLL_S = 5.0  # how often dropdowns of datasets, pools, ... look for new entries
TERMINAL = ("succeeded", "failed", "cancelled")

logger = logging.getLogger(__name__)


SKIP = {"__type__": "update"}  # what gr.skip() returns: leave the output as it is
# A tick sends a plot, gallery or dropdown update again after this many ticks even when unchanged since its
# last one (Ticks.runner): another event may have drawn an older value over it since.
REFRESH_TICKS = 10


class Ticks:
    """The handlers of one tab's poll timer, run as ONE Gradio event per tick.

    Every event costs the browser far more than the handler costs the server: an idle studio page made
    Chromium use 0.2-0.34 of a core, about 0.3 CPU-seconds per event, with the Generate tab firing 6
    events every 2 s and 5 more every 5 s (``benchmarks/bench_idle_page.py``). Handlers register here with
    :meth:`tick` (the signature of ``gr.Timer.tick``); :meth:`wire` attaches one handler that calls them all
    and merges their outputs. A handler whose signature takes a ``gr.Request`` gets the tick's request.
    """

    def __init__(self) -> None:
        self._handlers: list[tuple[Callable[..., Any], list[Any], list[Any], bool]] = []

    def tick(self, fn: Callable[..., Any], inputs: Any = None, outputs: Any = None, **_: Any) -> None:
        """Register ``fn(inputs...) -> outputs`` (``show_progress`` and the like: always hidden here)."""
        wants = any(_is_request(p.annotation) for p in inspect.signature(fn).parameters.values())
        self._handlers.append((fn, _as_list(inputs), _as_list(outputs), wants))

    def wire(self, timer: gr.Timer) -> None:
        """Attach the registered handlers to ``timer`` as a single event (nothing when none registered).

        A value the page already shows is not sent again: the page would re-render it for nothing (see
        :meth:`runner` for how "already shows" is known)."""
        if not self._handlers:
            return
        # Output position -> fingerprint of the value this page's ticks last sent, and "ticks": how many ran.
        sent = gr.State({})
        run, inputs, outputs = self.runner()
        timer.tick(run, [sent, *inputs], [*outputs, sent], show_progress="hidden")

    def runner(self) -> tuple[Callable[..., list[Any]], list[Any], list[Any]]:
        """``(run, inputs, outputs)``: ``run(request, last_sent, *input values)`` calls every handler and
        returns the outputs' values, then the new ``last_sent``.

        Other events write some of the same outputs (a job id's change handler draws its card, a launch
        draws the stages), each with what it read when it ran. One that ran before a tick but answered after
        it leaves the page showing an older value than the tick sent, so "unchanged since the last tick" is
        not "shown": a card stayed "running" for good after its job had finished. Hence:

        - an HTML output's current value on the page comes up with the tick (an input), and the tick skips
          only the very value the page shows;
        - a State is always set (it is not drawn, so holding it back saves nothing);
        - any other output (plots, galleries, dropdown updates) is skipped while unchanged since this page's
          last tick, but sent again every ``REFRESH_TICKS`` ticks, so an overwritten one comes back.
        """
        inputs = _unique(c for _, ins, _, _ in self._handlers for c in ins)
        outputs = _unique(c for _, _, outs, _ in self._handlers for c in outs)
        shown = [c for c in outputs if isinstance(c, gr.HTML) and all(c is not i for i in inputs)]
        handlers = list(self._handlers)
        watched = [*inputs, *shown]

        def run(request: gr.Request, last: dict[Any, Any], *values: Any) -> list[Any]:
            given = {id(c): v for c, v in zip(watched, values, strict=True)}
            merged: dict[int, Any] = {id(c): SKIP for c in outputs}
            for fn, ins, outs, wants in handlers:
                args = [given[id(c)] for c in ins] + ([request] if wants else [])
                try:
                    out = fn(*args)
                except Exception:  # one panel's failure must not stop the others from refreshing
                    logger.exception("a studio poll handler failed: %s", getattr(fn, "__qualname__", fn))
                    continue
                for c, v in zip(outs, out if len(outs) > 1 else (out,), strict=True):
                    merged[id(c)] = _merge(merged[id(c)], v)
            now = dict(last or {})
            count = int(now.get("ticks", 0)) + 1
            now["ticks"] = count
            refresh = count % REFRESH_TICKS == 0
            result = []
            for i, c in enumerate(outputs):
                value = merged[id(c)]
                if value == SKIP or isinstance(c, gr.State):
                    pass
                elif isinstance(c, gr.HTML) and isinstance(value, str):
                    if given.get(id(c)) == value:
                        value = SKIP
                else:
                    mark = _fingerprint(value)
                    if now.get(i) == mark and not refresh:
                        value = SKIP
                    now[i] = mark
                result.append(value)
            return [*result, now]

        return run, watched, outputs


def _fingerprint(value: Any) -> str:
    """A short digest of an output value (HTML, an update dict, a gallery's items, a plotly figure)."""
    text = value.to_json() if hasattr(value, "to_json") else json.dumps(value, sort_keys=True, default=repr)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _is_request(annotation: Any) -> bool:
    return annotation is gr.Request or annotation in ("gr.Request", "Request")


def _as_list(components: Any) -> list[Any]:
    if components is None:
        return []
    return list(components) if isinstance(components, (list, tuple)) else [components]


def _unique(components: Any) -> list[Any]:
    seen: dict[int, Any] = {}
    for c in components:
        seen.setdefault(id(c), c)
    return list(seen.values())


def _merge(before: Any, after: Any) -> Any:
    """Two handlers' values for one output: a skip leaves the other; two updates combine, the later wins."""
    if after == SKIP:
        return before
    if (
        isinstance(before, dict)
        and isinstance(after, dict)
        and before.get("__type__") == after.get("__type__") == "update"
    ):
        return {**before, **after}
    return after


@dataclass
class Ctx:
    """What a tab builder needs: the API client, the tab's poll timers (handlers register with their
    ``tick``, as with a ``gr.Timer``), and the Dataset tab's controls (dataset + imbalance) that Generate,
    Select and Benchmark reuse as inputs."""

    api: ApiClient
    timer: Ticks
    list_timer: Ticks
    demo: gr.Blocks
    dataset: gr.Dropdown | None = None
    imbalance: list[gr.components.Component] = field(default_factory=list)
    browser_states: list[gr.BrowserState] = field(default_factory=list)  # rendered outside the tabs


# -- messages ---------------------------------------------------------------------------------------
def error_html(message: str, fields: Sequence[str] = ()) -> str:
    """An inline error; ``fields`` (the params a 422 names) go into ``data-fields`` so the form and its
    tests can tell which field it is about."""
    names = f' data-fields="{html.escape(" ".join(fields))}"' if fields else ""
    return f'<div class="rb-msg rb-error" role="alert"{names}>{html.escape(message)}</div>'


def ok_html(message: str) -> str:
    return f'<div class="rb-msg rb-ok">{html.escape(message)}</div>'


def note_html(message: str) -> str:
    return f'<div class="rb-msg rb-note">{html.escape(message)}</div>'


def fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


def result_summary(result: Any, limit: int = 6) -> str:
    """A finished job's result in one line: its scalar fields ("dataset id 2 · skipped count 1").

    Lists and nested objects are left out (the Jobs tab shows the whole result).
    """
    if not isinstance(result, dict):
        return ""
    parts = []
    for k, v in result.items():
        if isinstance(v, bool | int | float) or (isinstance(v, str) and len(v) <= 40):
            parts.append(f"{str(k).replace('_', ' ')} {v}")
    return " · ".join(parts[:limit])


PREVIEW_KINDS = ("generate_sd",)  # job kinds that draw their work in progress (GET /api/jobs/{id}/preview)


def job_card(job: dict[str, Any] | None) -> str:
    """One job as a progress card: kind #id, status badge, bar, message (images/s etc.), ETA, error,
    and for a finished job a one-line summary of its result."""
    if not job:
        return '<div class="rb-job rb-empty">No job yet.</div>'
    pct = max(0.0, min(1.0, float(job.get("progress") or 0.0))) * 100
    status = str(job.get("status", "?"))
    eta = "" if status in TERMINAL else f" · ETA {fmt_eta(job.get('eta_s'))}"
    msg = html.escape(str(job.get("message") or job.get("waiting") or ""))
    err = job.get("error")
    err_html = f'<div class="rb-job-error">{html.escape(str(err))}</div>' if err else ""
    summary = result_summary(job.get("result")) if status == "succeeded" else ""
    if summary:
        err_html += f'<div class="rb-job-result">{html.escape(summary)}</div>'
    if status == "running" and job.get("kind") in PREVIEW_KINDS and pct > 0:
        # Drawn with the progress that announced it, so it exists; the query string makes each poll fetch the
        # newest one. A relative URL, as the grids: it also works behind a proxy's path prefix.
        src = f"api/jobs/{int(job['id'])}/preview?at={pct:.1f}"
        err_html += f'<img class="rb-job-preview" alt="the batch being denoised" src="{html.escape(src)}">'

    return (
        f'<div class="rb-job rb-{status}" data-job-id="{job.get("id")}" data-status="{status}">'
        f'<div class="rb-job-head"><b>{html.escape(str(job.get("kind")))} #{job.get("id")}</b>'
        f'<span class="rb-badge rb-badge-{status}">{status}</span>'
        f'<span class="rb-job-pct">{pct:.0f}%{eta}</span></div>'
        f'<div class="rb-bar"><div class="rb-bar-fill" style="width:{pct:.1f}%"></div></div>'
        f'<div class="rb-job-msg">{msg}</div>{err_html}</div>'
    )


def fetch_job(api: ApiClient, job_id: int | None) -> dict[str, Any] | None:
    """The job, and for a queued one what it waits for (``waiting``, shown on its card)."""
    if not job_id:
        return None
    try:
        job = api.get(f"/jobs/{int(job_id)}")
    except ApiError:
        return None
    if job.get("status") == "queued":
        job["waiting"] = waiting_for(api, job)
    return job


def waiting_for(api: ApiClient, job: dict[str, Any]) -> str:
    """What a queued job waits for, in words: no worker at all, or the jobs running and queued before it
    (issue 30.17: a queued card did not say). Two reads, made only while a shown job is queued."""
    try:
        workers = int(api.get("/health").get("live_workers") or 0)
        running = api.get("/jobs", status="running", limit=50).get("items") or []
        queued = api.get("/jobs", status="queued", limit=500).get("items") or []
    except ApiError:
        return ""
    if workers == 0:
        return (
            "waiting for a worker: none is running (start the app with --workers 1 or more, "
            "or `python app.py worker` beside it)"
        )
    ahead = sum(1 for j in queued if int(j["id"]) < int(job["id"]))
    if len(running) >= workers:
        busy = ", ".join(f"{j.get('kind')} #{j.get('id')}" for j in running[:3]) + (" …" if len(running) > 3 else "")
        who = "the worker is" if workers == 1 else f"all {workers} workers are"
        text = f"waiting for a free worker: {who} busy with {busy}"
    else:
        text = "waiting for a worker to take it"
    return text + (f"; {ahead} queued before it" if ahead else "")


def show_card_now(api: ApiClient, job: gr.State, card: gr.HTML) -> None:
    """Whenever the ``job`` state changes (a submit, a restored form), draw its ``card`` at once, not at the
    next poll (issue 30.17: under load the card took 13-25 s to appear after the click)."""
    job.change(lambda jid: job_card(fetch_job(api, jid)), job, card, show_progress="hidden")


def result_tick(
    api: ApiClient, result_key: str, list_choices: Callable[[], Any], *, keep_current: bool = False
) -> Callable[[Any, Any, Any], tuple[str, Any, Any]]:
    """A gr.Timer handler for a tab's job card and result dropdown, wired as
    ``(job id, handled job id, dropdown) -> (card, dropdown, handled job id)``.

    While the job runs it only refreshes the card. When it succeeds, the dropdown is re-listed once per job
    (not every tick) and set to the job's ``result[result_key]``; with ``keep_current`` a choice the user
    already made (e.g. restored after a reload) is kept.
    """

    def tick(jid: Any, handled: Any, current: Any) -> tuple[str, Any, Any]:
        job = fetch_job(api, jid)
        if not job or job.get("status") != "succeeded" or handled == jid:
            return job_card(job), gr.skip(), gr.skip()
        new_id = (job.get("result") or {}).get(result_key)
        update: dict[str, Any] = {"choices": list_choices()}
        if new_id and not (keep_current and current):
            # Only set a value when there is one: gr.skip() is itself an update dict, and passed as
            # ``value`` it would become the dropdown's value ("[object Object]").
            update["value"] = int(new_id)
        return job_card(job), gr.update(**update), jid

    return tick


def empty_numbers(params: dict[str, Any], required: Sequence[str]) -> str | None:
    """An inline error naming every required number left empty, or None.

    Gradio hands an empty Number over as None; sent as is, the API would fill in its default while the box
    stays blank, so the job would run with a value the user never saw (issue 30.3)."""
    empty = [name for name in required if params.get(name) is None]
    if not empty:
        return None
    return error_html(f"{', '.join(empty)}: enter a number (the box is empty)", empty)


def submit(
    api: ApiClient,
    kind: str,
    params: dict[str, Any],
    key: str | None,
    required: Sequence[str] = (),
    omit_unset: bool = False,
) -> tuple[int | None, str]:
    """Submit a job; returns (job id, inline message html). A 422 (a param out of range, or one the
    server's submit-time checks refuse: a budget over the pools, an unfinished model...) shows the API's
    own message naming the field. ``required``: params whose box must not be empty (nothing is submitted
    while one is). ``omit_unset``: leave the other empty params out, so the API applies its default (a
    field the form marks optional, such as "the model's guidance"). The success note names the job but not
    its status, which the job card keeps current (a "queued" note would go stale)."""
    if refused := empty_numbers(params, required):
        return None, refused
    if omit_unset:
        params = {name: v for name, v in params.items() if v is not None}
    try:
        job = api.submit(kind, params, key)
    except ApiError as exc:
        return None, error_html(exc.message, exc.fields)
    return int(job["id"]), ok_html(f"submitted {kind} job #{job['id']}; its card shows its progress")


# -- URLs -------------------------------------------------------------------------------------------
def public_base(request: gr.Request | None) -> str:
    """The origin (plus proxy prefix) the browser used, so image URLs work behind a reverse proxy."""
    if request is None:
        return ""
    headers = {k.lower(): v for k, v in dict(request.headers).items()}
    host = (headers.get("x-forwarded-host") or headers.get("host") or "").split(",")[0].strip()
    proto = (headers.get("x-forwarded-proto") or "http").split(",")[0].strip()
    prefix = (headers.get("x-forwarded-prefix") or "").rstrip("/")
    return f"{proto}://{host}{prefix}" if host else ""


def review_url(base: str, image_id: int) -> str:
    """Images reach the browser by id through the API only."""
    return f"{base}/api/images/{int(image_id)}/review"


# -- choices ----------------------------------------------------------------------------------------
def when(row: dict[str, Any]) -> str:
    """A row's creation time for a label, e.g. ``11-29 23:41 UTC`` (the API stores UTC)."""
    text = str(row.get("created_at") or "")
    return f"{text[5:10]} {text[11:16]} UTC" if len(text) >= 16 else ""


def status_mark(row: dict[str, Any]) -> str:
    """`` · failed`` (or cancelled, running…) for a row whose job did not succeed; empty when it did."""
    status = row.get("status")
    return "" if status in (None, "succeeded") else f" · {status}"


def choices(rows: Sequence[dict[str, Any]], label: Callable[[dict[str, Any]], str]) -> list[tuple[str, int]]:
    return [(label(r), int(r["id"])) for r in rows]


def live_choices(ctx: Ctx, dropdown: gr.Dropdown, fetch: Callable[[], list[tuple[str, int]]]) -> None:
    """Keep ``dropdown``'s choices in step with the API (another tab, browser or worker may add rows);
    it is only re-rendered when the list really changed, so an open dropdown is not disturbed."""
    last = gr.State(None)

    def tick(prev: list[tuple[str, int]] | None) -> tuple[Any, Any]:
        new = fetch()
        if new == prev:
            return gr.skip(), gr.skip()
        return gr.update(choices=new), new

    ctx.list_timer.tick(tick, last, [dropdown, last], show_progress="hidden")


def safe_items(api: ApiClient, path: str, **params: Any) -> list[dict[str, Any]]:
    try:
        return api.items(path, **params)
    except ApiError:
        return []


# -- settings from the API ---------------------------------------------------------------------------
def param_specs(api: ApiClient, kind: str) -> dict[str, dict[str, Any]]:
    """The JSON-schema property of every param of job ``kind`` (``GET /api/jobs/kinds``): the one source
    of the studio's choices, defaults, limits and help texts."""
    for k in api.job_kinds():
        if k["name"] == kind:
            schema = k["params_schema"]
            return {name: _resolve(prop, schema) for name, prop in schema.get("properties", {}).items()}
    raise ApiError(404, f"the server has no job kind {kind!r}")


def _resolve(prop: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Flatten ``$ref`` and ``anyOf [X, null]`` so a widget sees one set of keys."""
    out = {k: v for k, v in prop.items() if k not in ("anyOf", "$ref", "allOf")}
    for part in prop.get("anyOf", []) + prop.get("allOf", []) + ([prop] if "$ref" in prop else []):
        if "$ref" in part:
            part = schema.get("$defs", {}).get(part["$ref"].rsplit("/", 1)[-1], {})
        for key in ("enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "type"):
            if key in part and key not in out:
                out[key] = part[key]
    return out


# Next to every model field: the default model is a stand-in, not Stable Diffusion.
TINY_HINT = (
    "'tiny' is randomly initialised and built here: it draws noise, for tests and offline wiring only. For real "
    "images type a Hugging Face id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5) or a local pipeline folder"
)


def _limit(value: float) -> str:
    """A bound as people write it: whole numbers exactly, with thousands separators (2,147,483,647, not
    2.14748e+09); others compactly (0.001)."""
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:g}"


def widget_update(prop: dict[str, Any], component: gr.components.Component, value: bool = True) -> Any:
    """A ``gr.update`` giving ``component`` the param's choices, default or device suggestion (unless
    ``value`` is False), and description with its limits."""
    kw: dict[str, Any] = {}
    # Limits go into the help text, not the widget: a Gradio Number's own minimum check shows a toast
    # that names no field and blocks the form, while the API's 422 names the field inline.
    low = prop.get("minimum", prop.get("exclusiveMinimum"))
    high = prop.get("maximum", prop.get("exclusiveMaximum"))
    limits = f"{_limit(low)} to {_limit(high)}" if low is not None and high is not None else None
    if limits and str(high) in (prop.get("description") or "").replace(",", ""):
        limits = None  # the description states them already ("a seed (0 to 2147483647)")
    if prop.get("description") or limits:
        kw["info"] = "; ".join(t for t in (prop.get("description"), limits) if t)
    # ``x-suggested``: where the API says a form should start on this server's device (e.g. a small GAN
    # on a CPU), over the param's own default.
    start = prop.get("x-suggested", prop.get("default"))
    if value and start is not None:
        kw["value"] = start
    if isinstance(component, gr.Dropdown | gr.Radio | gr.CheckboxGroup):
        examples = prop.get("examples") or []
        if examples and isinstance(examples[0], list):  # a list param: its example lists every value
            examples = examples[0]
        options = prop.get("enum") or examples
        current = {c[1] if isinstance(c, tuple) else c for c in getattr(component, "choices", None) or []}
        # Re-sent choices equal to the widget's own make a Radio keep its old selection over the new value.
        if options and set(options) != current:
            kw["choices"] = list(options)
    if isinstance(component, gr.Slider):  # a slider cannot show a value outside its range anyway
        if low is not None:
            kw["minimum"] = low
        if high is not None:
            kw["maximum"] = high
    return gr.update(**kw)


# -- form persistence -------------------------------------------------------------------------------
def persist(
    ctx: Ctx,
    name: str,
    fields: dict[str, gr.components.Component],
    key: gr.State,
    before: Callable[[], Any] | None = None,
    before_outputs: Sequence[gr.components.Component] = (),
    spec: dict[str, str] | None = None,
) -> gr.BrowserState:
    """Keep a form in the browser's localStorage: restored on load (after ``spec`` -- form field ->
    ``"<job kind>.<param>"``, or ``"<kind>.<param>:choices"`` to keep the form's own value -- sets those
    fields' choices, defaults, limits and help from the API, and
    ``before`` fills the dropdown choices), saved on every change. Every change also mints a fresh
    idempotency key."""
    # A fixed secret (not Gradio's per-process random one) so saved forms survive a server restart; the
    # values are the user's own form fields, the encryption only keeps them opaque in localStorage.
    secret = hashlib.sha256(f"rebalance-studio:{name}".encode()).hexdigest()[:32]
    # Rendered later at the top level (see ``Ctx.browser_states``): a component inside a tab that is not
    # shown is not mounted, and an unmounted BrowserState would hand the load event its default value.
    store = gr.BrowserState({}, storage_key=f"rebalance-{name}", secret=secret, render=False)
    ctx.browser_states.append(store)
    names = list(fields)
    comps = [fields[n] for n in names]
    # Saving waits for the restore: the defaults the spec step writes into the form fire change events
    # too, and a save of those landing before the restore reads the store would replace the saved form.
    restored = gr.State(False)

    def restore(saved: dict[str, Any] | None) -> list[Any]:
        saved = saved or {}
        values = [saved[n] if n in saved and saved[n] is not None else gr.skip() for n in names]
        return [*values, new_key(), True]

    def save(*values: Any) -> tuple[Any, Any]:
        *form, ready = values
        if not ready:
            return gr.skip(), gr.skip()
        return dict(zip(names, form, strict=True)), new_key()

    bound = [(fields[f], *target.removesuffix(":choices").split(".", 1), not target.endswith(":choices"))
             for f, target in (spec or {}).items()]  # fmt: skip

    def from_spec() -> list[Any]:
        try:
            props = {kind: param_specs(ctx.api, kind) for kind in {b[1] for b in bound}}
        except ApiError:
            return [gr.skip() for _ in bound]  # the form keeps its placeholders; submitting still validates
        return [widget_update(props[k][p], c, v) if p in props[k] else gr.skip() for c, k, p, v in bound]

    steps: list[tuple[Callable[..., Any], list[Any], list[Any]]] = []
    if bound:
        steps.append((from_spec, [], [b[0] for b in bound]))
    if before is not None:
        steps.append((before, [], list(before_outputs)))
    steps.append((restore, [store], [*comps, key, restored]))
    event = None
    for fn, inputs, outputs in steps:
        start = ctx.demo.load if event is None else event.then
        event = start(fn, inputs=inputs, outputs=outputs, show_progress="hidden")
    gr.on(
        [c.change for c in comps],
        save,
        inputs=[*comps, restored],
        outputs=[store, key],
        show_progress="hidden",
        trigger_mode="always_last",
    )
    return store


def parse_id(text: Any) -> int | None:
    """The id typed or clicked into an id box ("12", "#12"), or None when it holds no positive whole
    number. Id boxes are Textboxes, not Numbers: an empty Number shows 0, which reads as an id."""
    value = str(text or "").strip().lstrip("#")
    return int(value) if value.isascii() and value.isdigit() and int(value) > 0 else None


def int_or_none(value: Any) -> int | None:
    if value in (None, "", []):
        return None
    return int(value)
