"""Benchmark tab: choose variants, model, epochs and seeds; launch; per-class accuracy bars, the
study's Table 1 with the minority column highlighted, training curves, and CSV / report.html downloads."""

from __future__ import annotations

import json
from typing import Any

import gradio as gr
import plotly.graph_objects as go
import plotly.io as pio

from backend.ui.client import ApiError
from backend.ui.common import (
    Ctx,
    choices,
    error_html,
    fetch_job,
    int_or_none,
    job_card,
    live_choices,
    note_html,
    persist,
    result_tick,
    safe_items,
    show_card_now,
    status_mark,
    submit,
    when,
)
from backend.ui.tabs.dataset import imbalance_spec


def optional_count(value: Any) -> int | None:
    """Steps, epochs or batch from a Number left empty (Gradio hands an empty Number over as 0): None, i.e.
    the API's default -- the schedule sized to the data -- rather than an invalid 0."""
    number = int_or_none(value)
    return number if number else None


def parse_seeds(text: str) -> tuple[list[int] | None, str]:
    try:
        seeds = [int(s) for s in str(text or "").replace(" ", "").split(",") if s]
    except ValueError:
        return None, "seeds: write whole numbers separated by commas, e.g. 0, 1, 2"
    if not seeds:
        return None, "seeds: give at least one seed"
    return seeds, ""


def api_table(api: Any, bench_id: int) -> str:
    """Table 1 as the reports module renders it (``GET /api/benchmarks/{id}/table.html``)."""
    try:
        body = api.get(f"/benchmarks/{bench_id}/table.html")
    except ApiError:
        return ""
    return body.decode() if isinstance(body, bytes) else str(body or "")


def api_figure(api: Any, bench_id: int, name: str) -> go.Figure | None:
    """A plotly figure the reports module stored for this benchmark, if the server has it."""
    try:
        body = api.get(f"/benchmarks/{bench_id}/figures/{name}.json")
    except ApiError:
        return None
    if isinstance(body, bytes):
        body = json.loads(body)
    return pio.from_json(json.dumps(body)) if body else None


def bench_label(b: dict[str, Any]) -> str:
    """``#3 imbalanced, full · 4/5 runs · failed · 11-29 23:41 UTC``: a failed or partial benchmark says so."""
    variants = (b.get("params") or {}).get("variants") or []
    names = [v if isinstance(v, str) else v.get("name", "?") for v in variants]
    runs = f" · {b.get('runs_done')}/{b.get('runs_total')} runs" if b.get("runs_done") != b.get("runs_total") else ""
    return f"#{b['id']} {', '.join(names)[:60]}{runs}{status_mark(b)} · {when(b)}"


def usable_selections(rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """Selections a benchmark variant can use: finished, with picks (a failed or empty one is not offered)."""
    usable = [s for s in rows if s.get("status") == "succeeded" and int(s.get("picks") or 0) > 0]
    acquisition = lambda s: (s.get("params") or {}).get("acquisition", "selection")  # noqa: E731
    return choices(usable, lambda s: f"#{s['id']} {acquisition(s)} · {s['picks']} picks · {when(s)}")


def class_pools(pools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pools sampled as one class (a diffusion model's ``generate_diffusion`` pools record it)."""
    return [p for p in pools if isinstance((p.get("params") or {}).get("class"), str)]


def class_pool_label(p: dict[str, Any]) -> str:
    return f"#{p['id']} class {p['params']['class']} · {p.get('name')} · {p.get('count')} images"


def sibling_pools(chosen: dict[str, Any], pools: list[dict[str, Any]]) -> list[int]:
    """The every-class recipe's default ``others`` for a chosen pool: the newest pool of each other class sampled
    from the same diffusion model (none for a pool that is not a diffusion model's)."""
    model = (chosen.get("params") or {}).get("diffusion_id")
    mine = (chosen.get("params") or {}).get("class")
    if model is None:
        return []
    newest: dict[str, int] = {}
    for p in class_pools(pools):
        cls = p["params"]["class"]
        if p["params"].get("diffusion_id") == model and cls != mine and p["id"] != chosen["id"]:
            newest[cls] = max(newest.get(cls, 0), int(p["id"]))
    return sorted(newest.values())


def pool_variant_extras(oversampled: bool, others: list[dict[str, Any]], count: int | None) -> dict[str, Any]:
    """The pool variant's ``base`` and ``others`` params: each other-class pool labelled with the class it was
    sampled as, taking as many images as the minority's (fewer if the pool is smaller)."""
    extra: dict[str, Any] = {"base": "oversample"} if oversampled else {}
    if others:
        extra["others"] = [
            {
                "pool_id": int(p["id"]),
                "count": min(count, int(p["count"])) if count else int(p["count"]),
                "label": (p.get("params") or {}).get("class"),
            }
            for p in others
        ]
    return extra


def build(ctx: Ctx) -> None:
    api = ctx.api
    key = gr.State("")
    job_id = gr.State(None)
    handled = gr.State(None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, elem_classes="rb-card"):
            gr.Markdown("### Train classifiers on every variant")
            variants = gr.CheckboxGroup(
                value=["imbalanced", "oversample", "full"], label="Variants", elem_id="bench-variants"
            )
            # Dropdowns get a row of their own: their labels ("#3 SD tiny (txt2img) · 92 images") are long.
            sel = gr.Dropdown(
                label="+ selection (accepted picks)", choices=[], allow_custom_value=True, elem_id="bench-selection"
            )
            sel_name = gr.Textbox("sd_al", label="as variant", elem_id="bench-selection-name")
            pool = gr.Dropdown(
                label="+ random images from pool", choices=[], allow_custom_value=True, elem_id="bench-pool"
            )
            with gr.Row():
                pool_count = gr.Number(50, label="count", precision=0, minimum=1, elem_id="bench-pool-count")
                pool_name = gr.Textbox("sd_random", label="as variant", elem_id="bench-pool-name")
            pool_base = gr.Checkbox(
                True,
                label="Add them to the oversampled set (keeps the few real minority images in view)",
                elem_id="bench-pool-base",
            )
            others = gr.Dropdown(
                label="+ the same generator's images of the other classes (a pool per class, labelled with it)",
                info="The every-class recipe: when only the minority has generated images, a classifier learns "
                "their look as the label; samples of every class remove that shortcut.",
                choices=[],
                multiselect=True,
                allow_custom_value=True,
                elem_id="bench-others",
            )
            with gr.Row():
                model = gr.Radio(["small"], value="small", label="Model", elem_id="bench-model")
                # Empty (or 0): the API's default, a schedule sized to the data (the note below says what).
                steps = gr.Number(label="Steps", precision=0, placeholder="sized to the data", elem_id="bench-steps")
                epochs = gr.Number(label="Epochs", precision=0, placeholder="instead of steps", elem_id="bench-epochs")
                batch = gr.Number(label="Batch", precision=0, placeholder="64 CPU, 256 CUDA", elem_id="bench-batch")
                seeds = gr.Textbox("0", label="Seeds", elem_id="bench-seeds")
            with gr.Row():  # used by runs with synthetic images; defaults, limits and help: the API's
                syn_weight = gr.Number(label="Synthetic weight", elem_id="bench-synthetic-weight")
                finetune = gr.Number(label="Fine-tune on real (epochs)", precision=0, elem_id="bench-finetune")
            precision = gr.Radio(label="Precision", elem_id="bench-precision")  # choices and help: the API's
            estimate = gr.HTML(elem_id="bench-estimate")
            run = gr.Button("Run benchmark", variant="primary", elem_id="bench-run")
            msg = gr.HTML(elem_id="bench-msg")
            card = gr.HTML(job_card(None), elem_id="bench-job")
        with gr.Column(scale=3, elem_classes="rb-card"):
            gr.Markdown("### Results")
            bench = gr.Dropdown(label="Benchmark", choices=[], allow_custom_value=True, elem_id="bench-pick")
            downloads = gr.HTML(elem_id="bench-downloads")
            plot = gr.Plot(label="Per-class accuracy", elem_id="bench-plot")
            table = gr.HTML(elem_id="bench-table")
            curves = gr.Plot(label="Training curves", elem_id="bench-curves")

    def list_benchmarks() -> list[tuple[str, int]]:
        return choices(safe_items(api, "/benchmarks"), bench_label)

    def list_selections() -> list[tuple[str, int]]:
        return usable_selections(safe_items(api, "/selections"))

    def list_pools() -> list[tuple[str, int]]:
        return choices(safe_items(api, "/pools"), lambda p: f"#{p['id']} {p.get('name')} · {p.get('count')} images")

    def list_class_pools() -> list[tuple[str, int]]:
        return choices(class_pools(safe_items(api, "/pools")), class_pool_label)

    def refresh() -> tuple[Any, Any, Any, Any]:
        return (
            gr.update(choices=list_benchmarks()),
            gr.update(choices=list_selections()),
            gr.update(choices=list_pools()),
            gr.update(choices=list_class_pools()),
        )

    def do_run(*args: Any) -> tuple[Any, str]:
        vs, sl, sln, pl, plc, pln, plb, oth, mdl, st, ep, bs, sds, sw, ft, prec, k, ds, *imb = args
        if not ds:
            return gr.skip(), error_html("dataset_id: choose a dataset on the Dataset tab")
        seed_list, err = parse_seeds(sds)
        if seed_list is None:
            return gr.skip(), error_html(err)
        chosen: list[Any] = list(vs or [])
        if sl:
            chosen.append({"name": (sln or "sd_al").strip(), "selection_id": int(sl)})
        if pl:
            count = int_or_none(plc)
            try:
                extra = pool_variant_extras(plb, [api.get(f"/pools/{int(o)}") for o in oth or []], count)
            except ApiError as exc:
                return gr.skip(), error_html(exc.message)
            chosen.append({"name": (pln or "sd_random").strip(), "pool_id": int(pl), "count": count, **extra})
        elif oth:
            return gr.skip(), error_html("others: choose the minority's pool above as well")
        if not chosen:
            return gr.skip(), error_html("variants: choose at least one variant")
        params = {
            "dataset_id": int(ds),
            "imbalance": imbalance_spec(*imb),
            "variants": chosen,
            "model": mdl,
            "steps": optional_count(st),
            "epochs": optional_count(ep),
            "batch_size": optional_count(bs),
            "seeds": seed_list,
            "synthetic_weight": sw,
            "finetune_real_epochs": int_or_none(ft),
            "precision": prec or "auto",
        }
        params = {name: v for name, v in params.items() if v is not None}  # empty: the API's default
        jid, out = submit(api, "benchmark", params, k)
        return (jid if jid is not None else gr.skip()), out

    def show(bid: Any) -> tuple[str, Any, str, Any]:
        if not bid:
            return "", None, "", None
        try:
            info = api.get(f"/benchmarks/{int(bid)}")
        except ApiError as exc:
            return error_html(exc.message), None, "", None
        done, total = int(info.get("runs_done") or 0), int(info.get("runs_total") or 0)
        if not done:  # nothing to draw yet (the table and figures answer 409)
            return note_html(f"0 of {total} runs finished: each run's row appears here when it ends."), None, "", None
        fig = api_figure(api, int(bid), "per_class")
        links = (
            f'<a class="rb-link" href="api/benchmarks/{int(bid)}/results.csv" download>results.csv</a>'
            f'<a class="rb-link" href="api/benchmarks/{int(bid)}/report.html" target="_blank">report.html</a>'
        )
        if info.get("status") in ("queued", "running") and done < total:
            # Results fill in as runs finish (a W&B habit): say that the rest are still training.
            links = f'<div class="rb-bench-live">{done} of {total} runs finished; the rest are training.</div>' + links
        return links, fig, api_table(api, int(bid)), api_figure(api, int(bid), "curves")

    finished_tick = result_tick(api, "benchmark_id", list_benchmarks)
    skip4 = (gr.skip(),) * 4

    def tick(jid: Any, handled: Any, current: Any, seen: Any) -> tuple[Any, ...]:
        """The job card; while the job runs, its benchmark is chosen and the results panel redrawn whenever
        another run has finished (``seen``: the benchmark id and runs shown); once it succeeds, the final rows."""
        job = fetch_job(api, jid)
        status = (job or {}).get("status")
        if status == "running":
            live = next((b for b in safe_items(api, "/benchmarks") if b.get("job_id") == jid), None)
            if live is None:  # its benchmark row is made as the job starts
                return job_card(job), gr.skip(), gr.skip(), *skip4, gr.skip()
            now = f"{live['id']}:{live.get('runs_done')}"
            if not str(seen or "").startswith(f"{live['id']}:"):  # first seen: follow it (the user just ran it)
                pick = gr.update(choices=list_benchmarks(), value=int(live["id"]))
                return job_card(job), pick, gr.skip(), *show(live["id"]), now
            if (current and int(current) != int(live["id"])) or now == seen:  # another one chosen, or no news
                return job_card(job), gr.skip(), gr.skip(), *skip4, gr.skip()
            return job_card(job), gr.skip(), gr.skip(), *show(live["id"]), now
        card, pick, marker = finished_tick(jid, handled, current)
        if status == "succeeded" and handled != jid:
            # The last runs may have finished between two ticks; the benchmark may already be the chosen one
            # (no change event then): draw the final panel here.
            bid = (job.get("result") or {}).get("benchmark_id")
            if bid and (not current or int(current) == int(bid)):
                return card, pick, marker, *show(bid), f"{bid}:done"
        return card, pick, marker, *skip4, gr.skip()

    fields = {
        "variants": variants,
        "selection": sel,
        "selection_name": sel_name,
        "pool": pool,
        "pool_count": pool_count,
        "pool_name": pool_name,
        "pool_base": pool_base,
        "others": others,
        "model": model,
        "steps": steps,
        "epochs": epochs,
        "batch": batch,
        "seeds": seeds,
        "synthetic_weight": syn_weight,
        "finetune": finetune,
        "precision": precision,
        "bench": bench,
        "job": job_id,
    }
    spec = {
        "variants": "benchmark.variants:choices",  # the studio starts with three; the API lists them all
        "model": "benchmark.model:choices",
        "steps": "benchmark.steps",
        "epochs": "benchmark.epochs",
        "batch": "benchmark.batch_size",
        "precision": "benchmark.precision",
        "synthetic_weight": "benchmark.synthetic_weight",
        "finetune": "benchmark.finetune_real_epochs",
    }
    persist(ctx, "benchmark", fields, key, before=refresh, before_outputs=[bench, sel, pool, others], spec=spec)
    live_choices(ctx, bench, list_benchmarks)
    live_choices(ctx, sel, list_selections)
    live_choices(ctx, pool, list_pools)
    live_choices(ctx, others, list_class_pools)
    run.click(
        do_run,
        [
            variants,
            sel,
            sel_name,
            pool,
            pool_count,
            pool_name,
            pool_base,
            others,
            model,
            steps,
            epochs,
            batch,
            seeds,
            syn_weight,
            finetune,
            precision,
            key,
            ctx.dataset,
            *ctx.imbalance,
        ],  # fmt: skip
        [job_id, msg],
        concurrency_limit=1,
    )
    bench.change(show, bench, [downloads, plot, table, curves], show_progress="hidden")
    show_card_now(api, job_id, card)

    def estimate_note(vs: Any, sl: Any, pl: Any, mdl: Any, st: Any, ep: Any, bs: Any, sds: Any, ds: Any) -> str:
        """Before submit: the steps every run will take and the estimated time on this server."""
        seed_list, _ = parse_seeds(sds)
        if not ds or not seed_list:
            return ""
        n_variants = len(vs or []) + bool(sl) + bool(pl)
        if not n_variants:
            return ""
        query = {"dataset_id": int(ds), "variants": n_variants, "seeds": len(seed_list), "model": mdl or None}
        for name, value in (("steps", st), ("epochs", ep), ("batch_size", bs)):
            try:
                query[name] = optional_count(value)
            except (TypeError, ValueError):
                return ""
        try:
            plan = api.get("/benchmarks/schedule", **{k: v for k, v in query.items() if v is not None})
        except ApiError as exc:
            return error_html(exc.message)
        eta = f" ≈ {plan['seconds'] / 60:.0f} min on this server" if plan.get("seconds") else ""
        return note_html(
            f"{plan['runs']} runs of {plan['steps']:,} optimiser steps (batch {plan['batch_size']}, "
            f"{plan['model']}), the same for every variant; {plan['basis']}{eta}."
        )

    estimate_inputs = [variants, sel, pool, model, steps, epochs, batch, seeds, ctx.dataset]
    for component in estimate_inputs:
        component.change(estimate_note, estimate_inputs, estimate, show_progress="hidden")

    def recipe(pl: Any) -> tuple[Any, Any]:
        """Choosing a diffusion model's pool turns on its every-class recipe: the oversampled set plus that
        model's pools of the other classes (the user can still clear them)."""
        if not pl:
            return gr.skip(), gr.skip()
        try:
            chosen = api.get(f"/pools/{int(pl)}")
        except (ApiError, ValueError):
            return gr.skip(), gr.skip()
        pools = safe_items(api, "/pools")
        ids = sibling_pools(chosen, pools)
        if not ids:
            return gr.skip(), gr.skip()
        # The choices too: a pool sampled a moment ago may not be listed yet, and a value without its choice
        # would show as a bare id.
        listed = choices(class_pools(pools), class_pool_label)
        return gr.update(choices=listed, value=ids), gr.update(value=True)

    # .change, not .input: it also follows a pool restored with the form, and never races the user's click.
    pool.change(recipe, pool, [others, pool_base], show_progress="hidden")
    seen = gr.State(None)  # the live benchmark's id and finished runs the results panel shows
    outputs = [card, bench, handled, downloads, plot, table, curves, seen]
    ctx.timer.tick(tick, [job_id, handled, bench, seen], outputs, show_progress="hidden")
