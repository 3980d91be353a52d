"""Select tab: launch active-learning selection, review the picks in a gallery (accept/reject one by
one or in bulk, near-copies flagged), the PCA feature map, the quality panel, prompt-slot analytics,
and export of the rebalanced dataset."""

from __future__ import annotations

import html
import json
from typing import Any
from urllib.parse import quote

import gradio as gr
import plotly.graph_objects as go

from backend.ui.client import ApiError
from backend.ui.common import (
    Ctx,
    choices,
    error_html,
    int_or_none,
    job_card,
    live_choices,
    note_html,
    ok_html,
    persist,
    public_base,
    result_tick,
    review_url,
    safe_items,
    show_card_now,
    status_mark,
    submit,
    when,
)
from backend.ui.tabs.dataset import imbalance_spec
from backend.ui.tabs.generate import image_caption

# form field -> select param whose choices, default, limits and description the API supplies
SELECT_PARAMS = {
    "acquisition": "acquisition",
    "budget": "budget",
    "per_round": "per_round",
    "mc": "mc_samples",
    "model": "model",
    "epochs": "epochs",
    "stochastic": "stochastic",
    "beta": "beta",
    "diversity": "diversity",
}
QUALITY_COLUMNS = ("precision", "recall", "density", "coverage", "frechet")
FILTERS = ["all", "pending", "accepted", "rejected", "near-copies"]
# gallery orders: label -> sort key of a pick (ties: the order picked)
SORTS = {
    "score (best first)": lambda p: -float(p.get("score") or 0.0),
    "p(minority) (highest first)": lambda p: -float(p.get("minority_prob") or 0.0),
    "order picked": lambda p: 0,
}
ALL_CLASSES = "all classes"
MARK = {"accepted": "✓", "rejected": "✗", "pending": "·"}
PAGE = 1000  # pool images per request when looking up the picks' prompts (the API's page limit)
MAX_LOOKUP = 50_000  # pool images read per pool at most for that lookup
POOL_PREVIEW = 12  # images shown of each chosen candidate pool


def _state(review: str) -> str:
    """``✓ accepted``, ``✗ rejected``, plain ``pending`` (a dot beside the caption's separators reads as one)."""
    return review if review == "pending" else f"{MARK.get(review, '')} {review}".strip()


def _ordinal(value: Any) -> str:
    """A 0-based rank or round as people count it (1-based); '?' when unknown."""
    return str(int(value) + 1) if isinstance(value, int) else "?"


def _pick_caption(p: dict[str, Any]) -> str:
    """A thumbnail's caption: when it was picked, score, review state, then what made the image (its prompt).
    The image id is not here: it is a database key, shown apart in the preview. "pick 1" is the first one
    picked (round 1), whatever order the gallery is sorted in (issue 30.9: "rank 40" led a best-first gallery)."""
    state = p.get("review", "pending")
    bits = [f"pick {_ordinal(p.get('rank'))}", f"score {float(p.get('score') or 0):.3f}", _state(state)]
    if p.get("near_copy"):
        bits.append("⚠ near-copy")
    if p.get("prompt"):
        bits.append(str(p["prompt"]))
    return " · ".join(bits)


def pick_images(api: Any, sel: dict[str, Any], known: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Pool-image rows (prompt, seed, generator metadata) of the selection's picks, by image id.

    The selection's picks carry no prompt, so the rows come from its pools' image pages, read until
    every pick is found (at most ``MAX_LOOKUP`` rows per pool); ``known`` rows are not asked again."""
    # A pick that already carries its prompt (a server whose picks include it) needs no lookup.
    wanted = {int(p["image_id"]) for p in sel.get("picks") or [] if not p.get("prompt")} - set(known)
    found = dict(known)
    for pool_id in (sel.get("params") or {}).get("pool_ids") or []:
        offset = 0
        while wanted and offset < MAX_LOOKUP:
            try:
                page = api.get(f"/pools/{int(pool_id)}/images", offset=offset, limit=PAGE)
            except ApiError:
                break
            rows = page.get("items") or []
            for row in rows:
                if int(row["id"]) in wanted:
                    found[int(row["id"])] = row
                    wanted.discard(int(row["id"]))
            offset += len(rows)
            if len(rows) < PAGE:
                break
    return found


def with_prompts(picks: list[dict[str, Any]], images: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Picks with their image's prompt (or generator, class and seed) and pool image row merged in."""
    out = []
    for p in picks:
        row = images.get(int(p["image_id"])) or {}
        out.append({**p, "prompt": p.get("prompt") or (image_caption(row) if row else None), "image": row})
    return out


def pick_class(p: dict[str, Any], target: Any) -> str:
    """The class a pick was generated as: its image's class (GAN, diffusion samples), else the selection's
    target class (a Stable Diffusion prompt's images are the class the selection fills)."""
    found = ((p.get("image") or {}).get("meta") or {}).get("class")
    return str(found if found is not None else target if target is not None else "?")


def preview_html(p: dict[str, Any] | None, base: str, rounds: int | None = None) -> str:
    """The clicked pick, large, with its review state, score, when it was picked and image id in labelled rows.
    ``rounds``: the selection's rounds, so "round 3 of 3" reads against the summary's "3 rounds"."""
    if not p:
        return note_html("Click a pick to see it large, then accept or reject it.")
    image_id = int(p["image_id"])
    state = p.get("review", "pending")
    row = p.get("image") or {}
    facts: list[tuple[str, str]] = [
        ("Review", f'<span class="rb-review rb-review-{state}">{_state(state)}</span>'),
        ("Score", f"{float(p.get('score') or 0):.4f}"),
        (
            "Picked",
            f"pick {_ordinal(p.get('rank'))}, in round {_ordinal(p.get('round'))}"
            + (f" of {int(rounds)}" if rounds else ""),
        ),
    ]
    if p.get("minority_prob") is not None:
        facts.append(("p(minority)", f"{float(p['minority_prob']):.3f}"))
    if p.get("nn_distance") is not None:
        near = " · ⚠ near-copy of a real image" if p.get("near_copy") else ""
        facts.append(("Nearest real", f"{float(p['nn_distance']):.3f}{html.escape(near)}"))
    facts.append(("Prompt", html.escape(str(p.get("prompt") or "–"))))
    if row.get("seed") is not None:
        facts.append(("Seed", str(row["seed"])))
    pool = f" · pool #{int(row['pool_id'])}" if row.get("pool_id") else ""
    facts.append(("Image id", f'{image_id}{pool} · <a class="rb-link" href="api/images/{image_id}" '
                              'target="_blank">full size</a>'))  # fmt: skip
    rows = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts)
    src = html.escape(review_url(base, image_id))
    return (
        f'<div class="rb-preview" data-image-id="{image_id}" data-review="{state}">'
        f'<img class="rb-preview-img" src="{src}" alt="pick {_ordinal(p.get("rank"))}">'
        f'<dl class="rb-preview-facts">{rows}</dl></div>'
    )


def filter_picks(
    picks: list[dict[str, Any]], which: str, order: str = "score (best first)", klass: str | None = None
) -> list[dict[str, Any]]:
    """The picks the gallery shows: sorted by ``order`` (a ``SORTS`` label), those of class ``klass`` (a
    ``pick_class`` value; None or ``ALL_CLASSES``: every class), filtered by review state ``which``."""
    key = SORTS.get(order, SORTS["score (best first)"])
    ordered = sorted(picks, key=lambda p: (key(p), p.get("rank", 0)))
    if klass and klass != ALL_CLASSES:
        ordered = [p for p in ordered if p.get("class") == klass]
    if which == "near-copies":
        return [p for p in ordered if p.get("near_copy")]
    if which in ("pending", "accepted", "rejected"):
        return [p for p in ordered if p.get("review", "pending") == which]
    return ordered


def feature_figure(fmap: dict[str, Any]) -> go.Figure | None:
    """The study's Figure 2: real training set (minority highlighted), the whole pool and the picks in
    one 2-D PCA plane (``points``: ``{x, y, group, label}``)."""
    points = (fmap or {}).get("points") or []
    if not points:
        return None
    minority = set((fmap or {}).get("minority") or [])
    groups: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        name = p.get("group", "?")
        if name == "real" and minority and p.get("label") in minority:
            name = "real minority"
        groups.setdefault(name, []).append(p)
    styles = {
        "real": ("#cbd5e1", 5),
        "real minority": ("#0f766e", 7),
        "pool": ("#a5b4fc", 5),
        "picks": ("#e11d48", 8),
    }
    fig = go.Figure()
    for name, (color, size) in styles.items():
        pts = groups.get(name) or []
        if pts:
            fig.add_scatter(
                x=[p["x"] for p in pts],
                y=[p["y"] for p in pts],
                mode="markers",
                name=f"{name} ({len(pts)})",
                marker=dict(color=color, size=size, opacity=0.75),
            )
    ratio = (fmap or {}).get("explained_variance_ratio") or [0, 0]
    fig.update_layout(
        height=320,
        margin=dict(l=30, r=10, t=30, b=30),
        title="Feature map (PCA of classifier features)",
        xaxis_title=f"PC1 ({100 * float(ratio[0]):.0f}%)",
        yaxis_title=f"PC2 ({100 * float(ratio[1]):.0f}%)",
        template="plotly_white",
        legend=dict(orientation="h", y=1.15, x=1, xanchor="right"),
    )
    return fig


def quality_html(info: dict[str, Any]) -> str:
    """The quality panel (``selection/quality.py``): the pool against each class's real images, and the
    picks against the kept real minority, in the round classifier's feature space."""
    q = (info or {}).get("quality") or {}
    rows = [(f"pool vs real {name}", panel) for name, panel in (q.get("pool") or {}).items()]
    if q.get("picks"):
        rows.append((f"picks vs kept real {q.get('target')}", q["picks"]))
    tests = assessments_html((info or {}).get("assessments") or {})
    if not rows:
        return tests
    head = "".join(f"<th>{c}</th>" for c in QUALITY_COLUMNS)
    body = "".join(
        f"<tr><td>{'<b>' + name + '</b>' if str(q.get('target')) in name else name}</td>"
        + "".join(f"<td>{float(panel.get(c, 0)):.3f}</td>" for c in QUALITY_COLUMNS)
        + "</tr>"
        for name, panel in rows
    )
    return (
        "<div><b>Quality panel</b> (classifier features; Fréchet: lower is closer)"
        f'<table class="rb-table"><tr><th></th>{head}</tr>{body}</table></div>' + tests
    )


def assessments_html(assessments: dict[str, dict[str, Any]]) -> str:
    """The two-sample test of each pool selected from: can a classifier tell its images from real ones?"""
    if not assessments:
        return ""
    lines = []
    for pool_id, a in assessments.items():
        auc = a.get("domain_auc")
        flag = " ⚠" if a.get("flagged") else ""
        value = "untestable" if auc is None else f"domain AUC {float(auc):.2f}{flag}"
        lines.append(
            f'<li class="rb-assess" data-flagged="{str(bool(a.get("flagged"))).lower()}">pool #{html.escape(pool_id)}: '
            f"{value} ({html.escape(str(a.get('method', '')))}) — {html.escape(str(a.get('reason', '')))}</li>"
        )
    return (
        "<div><b>Can a classifier tell these images from real ones?</b> (held-out AUC; 0.5 = no)"
        f'<ul class="rb-assessments">{"".join(lines)}</ul></div>'
    )


def slots_figure(data: dict[str, Any] | None) -> go.Figure | None:
    """Per prompt-slot value: share of its candidates picked, review acceptance rate, next-round weight."""
    slots = (data or {}).get("slots") or {}
    weights = (data or {}).get("weights") or {}
    rows = [
        (f"{name}: {r['value']}", r, weights.get(name, {}).get(r["value"])) for name, rs in slots.items() for r in rs
    ]
    if not rows:
        return None
    x = [label for label, _, _ in rows]
    fig = go.Figure()
    fig.add_bar(x=x, y=[r["pick_rate"] or 0 for _, r, _ in rows], name="picked / candidates")
    fig.add_bar(x=x, y=[r["acceptance_rate"] for _, r, _ in rows], name="accepted / reviewed")
    fig.add_scatter(x=x, y=[w for _, _, w in rows], mode="markers", name="next-round weight")
    fig.update_layout(
        height=300,
        margin=dict(l=30, r=10, t=30, b=80),
        title="Prompt slots",
        barmode="group",
        template="plotly_white",
        legend=dict(orientation="h", y=1.15, x=1, xanchor="right"),
    )
    return fig


def summary_html(sel: dict[str, Any]) -> str:
    picks = sel.get("picks") or []
    counts = {k: sum(1 for p in picks if p.get("review", "pending") == k) for k in ("pending", "accepted", "rejected")}
    near = sum(1 for p in picks if p.get("near_copy"))
    rounds = len(sel.get("rounds") or [])
    return (
        f'<div class="rb-stats"><span><b>{len(picks)}</b> picks</span><span><b>{rounds}</b> rounds</span>'
        f"<span>✓ <b>{counts['accepted']}</b> accepted</span><span>✗ <b>{counts['rejected']}</b> rejected</span>"
        f"<span>· <b>{counts['pending']}</b> pending</span><span>⚠ <b>{near}</b> near-copies</span></div>"
    )


def export_links(sel: dict[str, Any]) -> str:
    """Download links: the rebalanced dataset (real + accepted picks) and classical variants of the same imbalance."""
    ds, spec = sel.get("dataset_id"), (sel.get("params") or {}).get("imbalance")
    if not ds or not spec:
        return ""
    q = quote(json.dumps(spec, separators=(",", ":")))
    links = [f'<a class="rb-link" href="api/selections/{int(sel["id"])}/export" download>rebalanced.zip</a>'] + [
        f'<a class="rb-link" href="api/datasets/{int(ds)}/export?variant={v}&imbalance={q}" download>{v}.zip</a>'
        for v in ("imbalanced", "oversample_aug")
    ]
    return "<div>Export: " + "".join(links) + "</div>"


def next_round_text(out: dict[str, Any]) -> str:
    """One line about a queued next round: the job, its vocabulary and each slot's values by weight."""
    vocab = out.get("vocabulary") or {}
    parts = []
    for slot, weights in (vocab.get("weights") or {}).items():
        total = sum(weights.values()) or 1.0
        ranked = sorted(weights.items(), key=lambda kv: -kv[1])
        parts.append(f"{slot}: " + ", ".join(f"{v} {100 * w / total:.0f}%" for v, w in ranked))
    text = f"queued generate_sd job #{out['job']['id']} with vocabulary #{out['vocabulary_id']}"
    if parts:
        text += " — " + "; ".join(parts)
    if out.get("negative_terms"):
        text += " — negative prompt adds: " + ", ".join(out["negative_terms"])
    return text + " (follow it on the Jobs tab)"


def _sel_label(s: dict[str, Any]) -> str:
    acquisition = (s.get("params") or {}).get("acquisition", "selection")
    return f"#{s['id']} {acquisition} ({s.get('picks')} picks){status_mark(s)} · {when(s)}"


def build(ctx: Ctx) -> None:
    api = ctx.api
    key = gr.State("")
    job_id = gr.State(None)
    handled = gr.State(None)
    shown = gr.State([])  # the picks in gallery order, so a click maps back to a pick
    chosen = gr.State(None)  # image id of the clicked pick
    images = gr.State({})  # pool-image rows of picks already looked up (prompts), by image id
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, elem_classes="rb-card"):
            gr.Markdown("### Active learning")
            pools = gr.Dropdown(
                label="Candidate pools", choices=[], multiselect=True, allow_custom_value=True, elem_id="sel-pools"
            )
            pool_gallery = gr.Gallery(
                label=f"Candidates (first {POOL_PREVIEW} per pool)",
                columns=6,
                height=230,
                object_fit="contain",
                elem_id="sel-pool-gallery",
            )
            acquisition = gr.Dropdown(label="Acquisition", elem_id="sel-acq")  # choices: the API's
            with gr.Row():
                budget = gr.Number(
                    4950,
                    label="Budget (lowered to the chosen pools' total)",
                    precision=0,
                    minimum=1,
                    elem_id="sel-budget",
                )
                per_round = gr.Number(50, label="Per round", precision=0, minimum=1, elem_id="sel-per-round")
                mc = gr.Number(20, label="MC passes (T)", precision=0, minimum=1, elem_id="sel-mc")
            with gr.Row():
                model = gr.Radio(["small", "resnet18_cifar"], value="small", label="Classifier", elem_id="sel-model")
                epochs = gr.Number(5, label="Epochs per round", precision=0, minimum=1, elem_id="sel-epochs")
            with gr.Row():  # batch-aware picks; choices, defaults and limits: the API's
                stochastic = gr.Dropdown(label="Stochastic batch", elem_id="sel-stochastic")
                beta = gr.Number(1.0, label="beta", minimum=0, elem_id="sel-beta")
                diversity = gr.Dropdown(label="Diversity", elem_id="sel-diversity")
            run = gr.Button("Run selection", variant="primary", elem_id="sel-run")
            msg = gr.HTML(elem_id="sel-msg")
            card = gr.HTML(job_card(None), elem_id="sel-job")
            fmap = gr.Plot(label="Feature map", elem_id="sel-fmap")
            quality = gr.HTML(elem_id="sel-quality")
            slot_plot = gr.Plot(label="Prompt slots", elem_id="sel-slots")
        with gr.Column(scale=3, elem_classes="rb-card"):
            gr.Markdown("### Review the picks")
            with gr.Row():
                selection = gr.Dropdown(
                    label="Selection", choices=[], scale=3, allow_custom_value=True, elem_id="sel-pick"
                )
                which = gr.Radio(FILTERS, value="all", label="Show", scale=4, elem_id="sel-filter")
            with gr.Row():
                order = gr.Dropdown(list(SORTS), value="score (best first)", label="Sort", elem_id="sel-sort")
                klass = gr.Dropdown([ALL_CLASSES], value=ALL_CLASSES, label="Class", elem_id="sel-class")
            stats = gr.HTML(elem_id="sel-stats")
            gallery = gr.Gallery(
                label="Picks (click one to see it large; keys a / r accept / reject it and move to the next)",
                columns=6,  # 6 x 100 px minimum thumbnails fit the panel at 1280 px (8 did not)
                height=330,
                object_fit="contain",
                allow_preview=False,
                elem_id="sel-gallery",
            )
            chosen_info = gr.HTML(preview_html(None, ""), elem_id="sel-chosen")
            with gr.Row():
                accept = gr.Button("Accept", variant="primary", elem_id="sel-accept")
                reject = gr.Button("Reject", variant="stop", elem_id="sel-reject")
                accept_all = gr.Button("Accept all pending", elem_id="sel-accept-all")
                reject_near = gr.Button("Reject near-copies", elem_id="sel-reject-near")
            replace_box = gr.Checkbox(
                False, label="Replace rejected picks from the ranked remainder", elem_id="sel-replace"
            )
            review_msg = gr.HTML(elem_id="sel-review-msg")
            export = gr.HTML(elem_id="sel-export")
            nr_note = gr.HTML(elem_id="sel-nr-note")
            with gr.Column(visible=False, elem_id="sel-nr-box") as nr_box:
                gr.Markdown(
                    "**The next round** — a new Stable Diffusion job like this selection's pool, whose prompts draw "
                    "each slot value in proportion to how well its images did here (picked, accepted)."
                )
                with gr.Row():
                    nr_smoothing = gr.Number(
                        1.0, label="Smoothing (larger: flatter weights)", minimum=0, elem_id="sel-nr-smoothing"
                    )
                    nr_negative = gr.Number(
                        0,
                        label="Confused classes as negative prompt",
                        precision=0,
                        minimum=0,
                        maximum=10,
                        elem_id="sel-nr-negative",
                    )
                    nr_button = gr.Button("Generate the next round", elem_id="sel-next-round")
            nr_msg = gr.HTML(elem_id="sel-nr-msg")

    def list_pools() -> list[tuple[str, int]]:
        return choices(safe_items(api, "/pools"), lambda p: f"#{p['id']} {p.get('name')} ({p.get('count')})")

    def list_selections() -> list[tuple[str, int]]:
        return choices(safe_items(api, "/selections"), _sel_label)

    def refresh() -> tuple[Any, Any]:
        return gr.update(choices=list_pools()), gr.update(choices=list_selections())

    def do_run(*args: Any) -> tuple[Any, str]:
        pls, acq, bud, pr, t, mdl, ep, sto, bt, div, k, ds, *imb = args
        if not ds:
            return gr.skip(), error_html("dataset_id: choose a dataset on the Dataset tab")
        if not pls:
            return gr.skip(), error_html("pool_ids: choose at least one candidate pool")
        params = {
            "dataset_id": int(ds),
            "imbalance": imbalance_spec(*imb),
            "pool_ids": [int(p) for p in pls],
            "acquisition": acq,
            "budget": int_or_none(bud),
            "per_round": int_or_none(pr),
            "mc_samples": int_or_none(t),
            "model": mdl,
            "epochs": int_or_none(ep),
            "stochastic": sto or None,
            "beta": float(bt) if bt is not None else None,
            "diversity": div or None,
        }
        required = ("budget", "per_round", "mc_samples", "epochs")
        jid, out = submit(api, "select", params, k, required, omit_unset=True)
        return (jid if jid is not None else gr.skip()), out

    def show(  # each input its own argument: Gradio hands the request over by its type annotation
        sel_id: Any, flt: str, srt: str, kls: str, image_id: Any, known: dict[int, Any], request: gr.Request
    ) -> tuple[Any, ...]:
        """Gallery, stats, plots, export links, the class filter's choices and the chosen pick's preview
        (fresh after every review)."""
        base = public_base(request)
        nothing = ([], [], "", None, "", "", None, preview_html(None, base), gr.skip())
        if not sel_id:
            return *nothing, gr.update(choices=[ALL_CLASSES], value=ALL_CLASSES)
        try:
            sel = api.get(f"/selections/{int(sel_id)}")
        except ApiError as exc:
            return *nothing[:2], error_html(exc.message), *nothing[3:], gr.skip()
        try:
            slot_data = api.get(f"/selections/{int(sel_id)}/slots")
        except ApiError:
            slot_data = None  # analytics are optional: the picks still show
        known = pick_images(api, sel, known or {})
        target = (sel.get("info") or {}).get("target_class")
        every = [{**p, "class": pick_class(p, target)} for p in with_prompts(sel.get("picks") or [], known)]
        classes = sorted({p["class"] for p in every})
        kls = kls if kls in classes else ALL_CLASSES  # a class of another selection shows every class
        picks = filter_picks(every, flt, srt, kls)
        items = [(review_url(base, p["image_id"]), _pick_caption(p)) for p in picks]
        current = next((p for p in every if image_id and int(p["image_id"]) == int(image_id)), None)
        rounds = len(sel.get("rounds") or [])
        return (
            items,
            picks,
            summary_html(sel),
            feature_figure(
                {**(sel.get("feature_map") or {}), "minority": [(sel.get("info") or {}).get("target_class")]}
            ),
            export_links(sel),
            quality_html(sel.get("info") or {}),
            slots_figure(slot_data),
            preview_html(current, base, rounds),
            known,
            gr.update(choices=[ALL_CLASSES, *classes], value=kls),
        )

    def on_click(picks: list[dict[str, Any]], sel_id: Any, evt: gr.SelectData, request: gr.Request) -> tuple[Any, str]:
        if evt.index is None or evt.index >= len(picks):
            return None, preview_html(None, "")
        pick = picks[evt.index]
        try:
            rounds = len(api.get(f"/selections/{int(sel_id)}").get("rounds") or []) if sel_id else None
        except ApiError:
            rounds = None
        return int(pick["image_id"]), preview_html(pick, public_base(request), rounds)

    def pool_images(ids: list[Any] | None, request: gr.Request) -> list[tuple[str, str]]:
        """The first images of every chosen candidate pool, whatever made it (SD, GAN, diffusion, upload)."""
        base = public_base(request)
        out: list[tuple[str, str]] = []
        for pid in ids or []:
            rows = safe_items(api, f"/pools/{int(pid)}/images", limit=POOL_PREVIEW)
            # What made the image first: a thumbnail's caption shows only its start.
            out += [(review_url(base, r["id"]), f"{image_caption(r)} (pool #{int(pid)})") for r in rows]
        return out

    def fit_budget(ids: list[Any] | None, current: Any) -> Any:
        """A budget above what the chosen pools hold is lowered to their total (the API would refuse it)."""
        total = 0
        for pid in ids or []:
            try:
                total += int(api.get(f"/pools/{int(pid)}")["count"])
            except (ApiError, KeyError, TypeError, ValueError):
                return gr.update()
        if ids and total and (current is None or int(current) > total):
            return gr.update(value=total)
        return gr.update()

    def review(sel_id: Any, decisions: dict[int, str], replace: bool) -> str:
        if not sel_id:
            return error_html("choose a selection first")
        if not decisions:
            return note_html("nothing to change")
        body = {
            "accept": [i for i, r in decisions.items() if r == "accepted"],
            "reject": [i for i, r in decisions.items() if r == "rejected"],
            "replace_rejected": bool(replace),
        }
        try:
            out = api.post(f"/selections/{int(sel_id)}/review", body)
        except ApiError as exc:
            return error_html(exc.message)
        verbs = sorted(set(decisions.values()))
        text = f"{len(decisions)} pick(s) {' / '.join(verbs)}"
        if out.get("replaced"):
            text += f"; {len(out['replaced'])} replaced from the ranked remainder"
        if out.get("unreplaced"):
            text += f"; {len(out['unreplaced'])} left unreplaced (reserve exhausted)"
        return ok_html(text)

    def one(decision: str) -> Any:
        """Review the chosen pick, then choose the next one the gallery shows (as a reviewer pressing a / r
        through the picks expects); the last one stays chosen."""

        def act(sel_id: Any, image_id: Any, replace: bool, picks: list[dict[str, Any]] | None) -> tuple[Any, str]:
            if not image_id:
                return gr.skip(), error_html("click a pick in the gallery first")
            out = review(sel_id, {int(image_id): decision}, replace)
            ids = [int(p["image_id"]) for p in picks or []]
            at = ids.index(int(image_id)) if int(image_id) in ids else -1
            after = ids[at + 1] if 0 <= at < len(ids) - 1 else int(image_id)
            return (after if "rb-ok" in out else gr.skip()), out

        return act

    def bulk(kind: str) -> Any:
        def act(sel_id: Any, replace: bool) -> str:
            if not sel_id:
                return error_html("choose a selection first")
            try:
                picks = api.get(f"/selections/{int(sel_id)}").get("picks") or []
            except ApiError as exc:
                return error_html(exc.message)
            if kind == "accept_pending":
                decisions = {int(p["image_id"]): "accepted" for p in picks if p.get("review", "pending") == "pending"}
            else:
                decisions = {int(p["image_id"]): "rejected" for p in picks if p.get("near_copy")}
            return review(sel_id, decisions, replace)

        return act

    def next_round_offer(sel_id: Any) -> tuple[Any, str]:
        """The next round re-prompts Stable Diffusion: offered only for a selection whose pools are all SD
        pools; otherwise a note says why it is not there (issue 30.16: it failed only after the click)."""
        if not sel_id:
            return gr.update(visible=False), ""
        try:
            pool_ids = (api.get(f"/selections/{int(sel_id)}").get("params") or {}).get("pool_ids") or []
            kinds = {int(pid): api.get(f"/pools/{int(pid)}").get("kind") for pid in pool_ids}
        except ApiError:
            return gr.update(visible=False), ""
        other = {pid: kind for pid, kind in kinds.items() if kind != "sd"}
        if kinds and not other:
            return gr.update(visible=True), ""
        listed = ", ".join(f"#{pid} {kind}" for pid, kind in other.items())
        why = f"No next round here: it re-prompts Stable Diffusion, and this selection's pools are not SD ({listed})."
        return gr.update(visible=False), note_html(why)

    def do_next_round(sel_id: Any, smoothing: Any, negative: Any) -> str:
        """Queue the closed loop's next generate_sd job; say which job, vocabulary and weights it got."""
        if not sel_id:
            return error_html("choose a selection first")
        body: dict[str, Any] = {}
        if smoothing is not None:
            body["smoothing"] = float(smoothing)
        if negative is not None:
            body["negative_classes"] = int(negative)
        try:
            out = api.post(f"/selections/{int(sel_id)}/next_round", body)
        except ApiError as exc:
            return error_html(exc.message)
        return ok_html(next_round_text(out))

    tick = result_tick(api, "selection_id", list_selections)

    fields = {
        "pools": pools,
        "acquisition": acquisition,
        "budget": budget,
        "per_round": per_round,
        "mc": mc,
        "model": model,
        "epochs": epochs,
        "stochastic": stochastic,
        "beta": beta,
        "diversity": diversity,
        "selection": selection,
        "which": which,
        "order": order,
        "nr_smoothing": nr_smoothing,
        "nr_negative": nr_negative,
        "job": job_id,
    }
    spec = {f: f"select.{p}" for f, p in SELECT_PARAMS.items()}
    persist(ctx, "select", fields, key, before=refresh, before_outputs=[pools, selection], spec=spec)
    live_choices(ctx, pools, list_pools)
    live_choices(ctx, selection, list_selections)
    run.click(
        do_run,
        [
            pools,
            acquisition,
            budget,
            per_round,
            mc,
            model,
            epochs,
            stochastic,
            beta,
            diversity,
            key,
            ctx.dataset,
            *ctx.imbalance,
        ],
        [job_id, msg],
        concurrency_limit=1,
    )
    view_in = [selection, which, order, klass, chosen, images]
    view_out = [gallery, shown, stats, fmap, export, quality, slot_plot, chosen_info, images, klass]
    gr.on([selection.change, which.change, order.change, klass.input], show, view_in, view_out, show_progress="hidden")
    selection.change(next_round_offer, selection, [nr_box, nr_note], show_progress="hidden")
    gallery.select(on_click, [shown, selection], [chosen, chosen_info], show_progress="hidden")
    pools.change(pool_images, pools, pool_gallery, show_progress="hidden")
    pools.input(fit_budget, [pools, budget], budget, show_progress="hidden")
    for button, fn, inputs, outputs in (
        (accept, one("accepted"), [selection, chosen, replace_box, shown], [chosen, review_msg]),
        (reject, one("rejected"), [selection, chosen, replace_box, shown], [chosen, review_msg]),
        (accept_all, bulk("accept_pending"), [selection, replace_box], review_msg),
        (reject_near, bulk("reject_near"), [selection, replace_box], review_msg),
    ):
        # One review at a time: keys pressed quickly queue up instead of racing on the chosen pick.
        button.click(fn, inputs, outputs, concurrency_limit=1, concurrency_id="sel-review").then(
            show, view_in, view_out, show_progress="hidden"
        )
    nr_button.click(do_next_round, [selection, nr_smoothing, nr_negative], nr_msg, concurrency_limit=1)
    show_card_now(api, job_id, card)
    ctx.timer.tick(tick, [job_id, handled, selection], [card, selection, handled], show_progress="hidden")
