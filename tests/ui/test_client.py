"""The studio's REST client and its pure helpers, against the real API in-process (no browser).

The studio's modules are imported inside the tests: they import gradio, which would cost every test run
seconds at collection time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backend.runtime import prepare
from backend.ui.client import ApiClient, ApiError
from tests.conftest import make_settings


@pytest.fixture
def served(tmp_path: Path) -> Iterator[TestClient]:
    """API + studio with ``--auth`` on, as ``python app.py --auth ui:secret`` would serve them."""
    from backend.server import create_app  # imports gradio

    settings = make_settings(tmp_path, auth="ui:secret")
    db = prepare(settings)
    with TestClient(create_app(settings, db)) as client:
        yield client
    db.dispose()


def _client(served: TestClient, auth: str | None) -> ApiClient:
    return ApiClient("http://testserver/api", auth, http=served)


def test_auth_covers_studio_and_api_and_the_client_sends_it(served: TestClient) -> None:
    assert served.get("/").status_code == 401
    page = served.get("/", auth=("ui", "secret"))
    assert page.status_code == 200 and "Rebalance studio" in page.text
    with pytest.raises(ApiError) as denied:
        _client(served, "ui:wrong").get("/jobs")
    assert denied.value.status == 401 and "authentication" in denied.value.message
    assert _client(served, "ui:secret").get("/jobs")["total"] == 0


def test_submit_shows_422_message_and_idempotency_returns_one_job(served: TestClient) -> None:
    api = _client(served, "ui:secret")
    with pytest.raises(ApiError) as bad:
        api.submit("prepare_dataset", {"source": "mnist"}, "k1")
    assert bad.value.status == 422 and bad.value.message.startswith("params.source")
    first = api.submit("prepare_dataset", {"source": "digits"}, "same-key")
    again = api.submit("prepare_dataset", {"source": "digits"}, "same-key")
    assert first["id"] == again["id"] and api.get("/jobs")["total"] == 1
    assert api.items("/datasets") == []


def test_imbalance_spec_from_the_dataset_controls() -> None:
    from backend.ui.tabs.dataset import imbalance_spec

    assert imbalance_spec("keep", ["cat"], 50, 0.99, 100, 3) == {"seed": 3, "minority": "cat", "keep": 50}
    assert imbalance_spec("remove_ratio", ["cat", "dog"], 50, 0.9, 100, 0) == {
        "seed": 0,
        "minority": ["cat", "dog"],
        "remove_ratio": 0.9,
    }
    assert imbalance_spec("longtail", [], 50, 0.9, 100, 1) == {
        "seed": 1,
        "profile": "longtail",
        "imbalance_factor": 100,
    }


def test_slots_text_round_trips_and_names_a_bad_line() -> None:
    from backend.ui.tabs.prompts import format_slots, parse_slots

    slots, err = parse_slots("breed: persian, siamese\n\nplace: sofa")
    assert err is None and slots == {"breed": ["persian", "siamese"], "place": ["sofa"]}
    assert parse_slots(format_slots(slots)) == (slots, None)
    assert parse_slots("breed persian")[1] == "slots line 1: write it as 'name: value, value, …'"


def test_seeds_parse() -> None:
    from backend.ui.tabs.benchmark import parse_seeds

    assert parse_seeds("0, 1,2") == ([0, 1, 2], "")
    assert parse_seeds("a")[0] is None
    assert parse_seeds("")[0] is None


def test_picks_are_ordered_by_score_and_filtered_by_review() -> None:
    from backend.ui.tabs.select import filter_picks

    picks = [
        {"image_id": 1, "rank": 2, "score": 0.2, "review": "accepted"},
        {"image_id": 2, "rank": 1, "score": 0.9, "review": "pending", "near_copy": True},
        {"image_id": 3, "rank": 3, "score": 0.5, "review": "rejected"},
    ]
    assert [p["image_id"] for p in filter_picks(picks, "all")] == [2, 3, 1]
    assert [p["image_id"] for p in filter_picks(picks, "pending")] == [2]
    assert [p["image_id"] for p in filter_picks(picks, "near-copies")] == [2]


def test_picks_sort_by_p_minority_or_order_picked_and_filter_by_class() -> None:
    """Issue 30: the review gallery sorts by score, p(minority) or the order picked, and filters by class;
    captions and the preview count picks and rounds from 1 (30.9: "rank 40 (round 2)" beside "3 rounds")."""
    from backend.ui.tabs.select import ALL_CLASSES, _pick_caption, filter_picks, pick_class, preview_html

    picks = [
        {"image_id": 1, "rank": 0, "round": 0, "score": 0.2, "minority_prob": 0.9, "image": {"meta": {"class": "5"}}},
        {"image_id": 2, "rank": 1, "round": 1, "score": 0.9, "minority_prob": 0.1, "image": {}},
        {"image_id": 3, "rank": 2, "round": 2, "score": 0.5, "minority_prob": 0.5, "image": {"meta": {}}},
    ]
    picks = [{**p, "class": pick_class(p, "3")} for p in picks]
    assert [p["class"] for p in picks] == ["5", "3", "3"]  # an image's own class, else the selection's
    ids = lambda found: [p["image_id"] for p in found]  # noqa: E731
    assert ids(filter_picks(picks, "all")) == [2, 3, 1]
    assert ids(filter_picks(picks, "all", "p(minority) (highest first)")) == [1, 3, 2]
    assert ids(filter_picks(picks, "all", "order picked")) == [1, 2, 3]
    assert ids(filter_picks(picks, "all", "score (best first)", "3")) == [2, 3]
    assert ids(filter_picks(picks, "all", "order picked", ALL_CLASSES)) == [1, 2, 3]
    assert _pick_caption(picks[0]).startswith("pick 1 · score 0.200")
    assert "<dt>Picked</dt><dd>pick 3, in round 3 of 3</dd>" in preview_html(picks[2], "", rounds=3)


def test_job_card_summarises_a_finished_jobs_result() -> None:
    from backend.ui.common import job_card, result_summary

    result = {"dataset_id": 2, "skipped_count": 1, "skipped": [["red/broken.png", "not an image"]], "ok": True}
    card = job_card({"id": 8, "kind": "prepare_dataset", "status": "succeeded", "progress": 1, "result": result})
    assert '<div class="rb-job-result">dataset id 2 · skipped count 1 · ok True</div>' in card
    running = job_card({"id": 9, "kind": "benchmark", "status": "running", "progress": 0.5, "result": result})
    assert "rb-job-result" not in running
    assert result_summary({"name": "<b>x</b>"}) == "name <b>x</b>"  # escaped by job_card, not here
    assert "&lt;b&gt;" in job_card({"id": 1, "kind": "k", "status": "succeeded", "result": {"name": "<b>x</b>"}})


def test_lists_say_what_failed_and_when() -> None:
    from backend.ui.tabs.benchmark import bench_label, usable_selections

    stamp = "2026-11-29T23:41:07"
    ok = {"id": 2, "params": {"variants": ["imbalanced", {"name": "sd_al"}]}, "runs_done": 4, "runs_total": 4}
    assert bench_label(ok | {"status": "succeeded", "created_at": stamp}) == "#2 imbalanced, sd_al · 11-29 23:41 UTC"
    partial = bench_label(ok | {"runs_done": 3, "status": "failed", "created_at": stamp})
    assert partial == "#2 imbalanced, sd_al · 3/4 runs · failed · 11-29 23:41 UTC"
    rows = [
        {"id": 1, "status": "failed", "picks": 0, "params": {}, "created_at": stamp},
        {"id": 3, "status": "running", "picks": 5, "params": {}, "created_at": stamp},
        {"id": 4, "status": "succeeded", "picks": 0, "params": {}, "created_at": stamp},
        {"id": 5, "status": "succeeded", "picks": 50, "params": {"acquisition": "bald"}, "created_at": stamp},
    ]
    assert usable_selections(rows) == [("#5 bald · 50 picks · 11-29 23:41 UTC", 5)]


def test_a_422_names_its_fields_and_the_form_message_carries_them(served: TestClient) -> None:
    """Issue 20.3: the submit-time refusal reaches the form as an inline error marked with the field."""
    from backend.ui.common import submit

    api = _client(served, "ui:secret")
    params = {"dataset_id": 7, "imbalance": {"minority": "3", "keep": 5}, "pool_ids": [1]}
    with pytest.raises(ApiError) as refused:
        api.submit("select", params, None)
    assert refused.value.fields == ["dataset_id"] and "dataset 7 does not exist" in refused.value.message
    job_id, html_msg = submit(api, "select", params | {"seed": -1}, None)
    assert job_id is None and 'data-fields="seed"' in html_msg and "rb-error" in html_msg


def test_gan_form_starts_small_on_a_cpu_server_and_says_why(served: TestClient) -> None:
    """Issue 20.5: on a CPU server the kinds API suggests a small GAN; the form starts there, with the
    reason as the field's help, while an omitted param still means the study's default."""
    import gradio as gr

    from backend.api.routes.jobs import _suggested
    from backend.ui.common import param_specs, widget_update

    api = _client(served, "ui:secret")
    props = param_specs(api, "train_gan")
    assert (props["image_size"]["default"], props["image_size"]["x-suggested"]) == (64, 32)
    assert props["width"]["x-suggested"] == 0.5 and props["epochs"]["x-suggested"] <= 5
    epochs = widget_update(props["epochs"], gr.Number())
    assert epochs["value"] == props["epochs"]["x-suggested"] and "grey" in epochs["info"]
    assert widget_update(props["image_size"], gr.Radio())["value"] == 32
    assert "x-suggested" not in param_specs(api, "benchmark")["epochs"]  # only where a suggestion is made
    cuda = _suggested("train_gan", {"properties": {"epochs": {"default": 25}}}, "cuda:0")
    assert cuda == {"properties": {"epochs": {"default": 25}}}  # a GPU server starts at the study's scale


def test_id_boxes_take_whole_positive_numbers_only() -> None:
    from backend.ui.common import parse_id

    assert [parse_id(v) for v in ("12", " #12 ", 7, "0", "", None, "-3", "1.5", "\u00b2", "\u0663", "x")] == [
        12, 12, 7, None, None, None, None, None, None, None, None,
    ]  # fmt: skip


def test_long_tail_preview_shows_the_fill_plan_as_table_and_bars() -> None:
    from backend.ui.tabs.dataset import fill_table, histogram

    plan = {"target": 142, "total": 55, "counts": {"0": 142, "1": 87}, "need": {"0": 0, "1": 55},
            "groups": {"many": ["0"], "medium": ["1"]}}  # fmt: skip
    table = fill_table(plan)
    assert "<td>1</td><td>87</td><td>medium-shot (20–100)</td><td>55</td>" in table and "55 synthetic" in table
    fig = histogram({"0": 142, "1": 140}, {"0": 142, "1": 87}, [], plan["need"])
    assert [t.name for t in fig.data] == ["before", "after", "fill (synthetic)"] and list(fig.data[2].y) == [0, 55]


def test_limits_in_help_text_read_as_numbers() -> None:
    """Issue 30.18: a seed's help said "0 to 9.22337e+18"."""
    import gradio as gr

    from backend.ui.common import widget_update

    info = widget_update({"minimum": 1, "maximum": 2147483647, "description": "images"}, gr.Number())["info"]
    assert info == "images; 1 to 2,147,483,647"
    seed = {"minimum": 0, "maximum": 2147483647, "description": "a seed (0 to 2147483647)"}
    assert widget_update(seed, gr.Number())["info"] == "a seed (0 to 2147483647)"
    assert widget_update({"minimum": 0.0, "maximum": 0.5}, gr.Number())["info"] == "0 to 0.5"


def test_dataset_labels_tell_registrations_apart() -> None:
    """Issue 30.13: "#1 digits" and "#2 digits" said nothing about what differs."""
    from backend.ui.tabs.dataset import dataset_label

    row = {"id": 2, "name": "digits-demo", "source": "digits", "classes": list("0123456789"),
           "train_counts": {str(i): 143 for i in range(10)}, "image_size": [32, 32],
           "created_at": "2026-11-29T23:41:07"}  # fmt: skip
    assert dataset_label(row) == "#2 digits-demo · digits · 10 classes · 1,430 train · 32×32 · 11-29 23:41 UTC"
    assert dataset_label(row | {"name": "digits"}).startswith("#2 digits · 10 classes")  # the source once


def test_an_empty_required_number_is_refused_before_submitting() -> None:
    """Issue 30.3: nothing reaches the API (here: no client at all) while a required box is empty."""
    from backend.ui.common import submit

    job_id, html_msg = submit(None, "train_gan", {"epochs": None, "seed": 0}, None, ("epochs", "seed"))  # type: ignore[arg-type]
    assert job_id is None and 'data-fields="epochs"' in html_msg and "epochs: enter a number" in html_msg


def test_a_running_stage_card_gives_the_jobs_eta() -> None:
    """Issue 30.4: experiment stage cards read "ETA –" while the job had one."""
    from backend.ui.tabs.experiments import stages_html

    stage = {"name": "benchmark", "kind": "benchmark", "needs": [], "job_id": 7, "status": "running",
             "progress": 0.5, "message": "run 1/2", "eta_s": 42.0}  # fmt: skip
    page = stages_html({"id": 1, "name": "x", "status": "running", "stages": [stage]})
    assert "50% · ETA 42s" in page


def test_a_grid_of_an_unfinished_epoch_is_a_placeholder_not_a_broken_image() -> None:
    """Issue 30.6: during epoch 1 the grid URL 404s until the epoch ends."""
    from backend.ui.tabs.generate import DIFFUSION, grid_html

    assert "rb-grid-wait" in grid_html(DIFFUSION, 4, 1, 0) and "<img" not in grid_html(DIFFUSION, 4, 1, 0)
    assert grid_html(DIFFUSION, 4, 1, 1).startswith("<img") and "/4/samples/1" in grid_html(DIFFUSION, 4, 1, 1)
    labelled = grid_html(DIFFUSION, 4, 1, 1, ["cat", "<dog>"])
    assert "<li>cat</li><li>&lt;dog&gt;</li></ol><img" in labelled  # a name per row, escaped, left of the grid
    assert labelled.count("<li>") == 2
    assert grid_html(DIFFUSION, 4, 1, 1, [str(i) for i in range(20)]).count("<li>") == 16  # the grid's 16 rows


def test_one_tick_runs_every_panel_merges_their_outputs_and_resends_nothing_unchanged() -> None:
    """The studio's poll handlers run as one event per tick (an event costs the browser ~0.3 CPU-s); a value
    already sent and unchanged is skipped; a failing handler leaves the others' outputs alone."""
    import gradio as gr

    from backend.ui.common import SKIP, Ticks

    a, b, card, dropdown, job = (object() for _ in range(5))
    seen: list[Any] = []
    ticks = Ticks()
    ticks.tick(lambda j: f"card of {j}", job, card)

    def listing(j: int, request: gr.Request) -> dict[str, Any]:  # asks for the tick's request, by its type
        seen.append(request)
        return gr.update(choices=[j])

    ticks.tick(listing, job, dropdown)
    ticks.tick(lambda j: gr.update(value=j), [job], [dropdown])  # a second writer of the same dropdown
    ticks.tick(lambda: 1 / 0, None, a)  # fails: its output is skipped, the others still come
    ticks.tick(lambda j: (gr.skip(), j), job, [b, a])
    run, inputs, outputs = ticks.runner()
    assert inputs == [job] and outputs == [card, dropdown, a, b]
    first = run("req", {}, 7)
    assert first[:4] == ["card of 7", {"__type__": "update", "choices": [7], "value": 7}, 7, SKIP] and seen == ["req"]
    again = run("req", first[-1], 7)  # nothing changed: nothing is sent again
    assert again[:4] == [SKIP] * 4
    moved = run("req", again[-1], 8)
    assert moved[:3] == ["card of 8", {"__type__": "update", "choices": [8], "value": 8}, 8]
    assert run("req", {}, 8)[:3] == moved[:3]  # a fresh page (no memory of what was sent) gets everything


def test_a_tick_redraws_a_card_another_event_drew_over_and_always_sets_its_states() -> None:
    """A job id's change handler reads the job when it runs; answering after a tick, it drew "running" over the
    tick's "succeeded", and the tick, remembering it had sent "succeeded", never sent it again (a card stayed
    "running" for good in CI). The tick compares with what the page shows instead."""
    import gradio as gr

    from backend.ui.common import REFRESH_TICKS, SKIP, Ticks

    card, handled, job, plot = gr.HTML(), gr.State(), gr.State(), object()
    status = {"now": "running"}
    ticks = Ticks()
    ticks.tick(lambda j: (f"card {status['now']}", j), job, [card, handled])
    ticks.tick(lambda j: {"figure": status["now"]}, job, plot)
    run, inputs, outputs = ticks.runner()
    assert inputs == [job, card] and outputs == [card, handled, plot]  # the page's card comes up with the tick
    first = run("req", {}, 1, "")
    assert first[:3] == ["card running", 1, {"figure": "running"}]
    status["now"] = "succeeded"
    drawn = run("req", first[-1], 1, "card running")
    assert drawn[:3] == ["card succeeded", 1, {"figure": "succeeded"}]
    # The page shows "running" again (a late answer of another event): the tick draws "succeeded" again.
    assert run("req", drawn[-1], 1, "card running")[0] == "card succeeded"
    shown = run("req", drawn[-1], 1, "card succeeded")
    assert shown[:3] == [SKIP, 1, SKIP]  # nothing the page shows goes again; a State is always set
    # The plot is skipped while unchanged since the last tick, but sent again every REFRESH_TICKS ticks.
    last, sent = shown[-1], []
    for _ in range(REFRESH_TICKS):
        out = run("req", last, 1, "card succeeded")
        last = out[-1]
        sent.append(out[2] != SKIP)
    assert sent.count(True) == 1


def test_the_studio_handlers_do_not_take_the_threads_the_api_needs() -> None:
    """The studio's handlers wait on HTTP calls to the API of the same server. On anyio's default limiter
    (Gradio's choice at 40 threads, ``limiter`` None) they could hold every thread the API's sync routes need
    to answer them; with a limiter of their own they cannot."""
    from backend.ui.app import UI_THREADS, build_ui

    demo = build_ui(ApiClient("http://127.0.0.1:1"))
    demo.create_limiter()  # what Gradio runs at start-up
    assert demo.limiter is not None and demo.limiter.total_tokens == UI_THREADS != 40


def test_hidden_progress_lands_on_one_component_not_on_every_output() -> None:
    """Gradio keeps a loading status for every component an event ever targeted, and pushes ALL of them through
    its component-tree search at every status change of every event: with the studio's hundreds of outputs an
    idle page cost Chromium 0.35-0.45 of a core and a reload 13 CPU-s. The studio's events hide their progress,
    so they all target the header (the first component: the search finds it at once)."""
    from backend.ui.app import build_ui

    demo = build_ui(ApiClient("http://127.0.0.1:1"))
    deps = demo.get_config_file()["dependencies"]
    header = next(b for b in demo.blocks.values() if "rb-header" in str(getattr(b, "value", "")))
    backend = [d for d in deps if d["backend_fn"]]
    hidden = [d for d in backend if d["show_progress"] == "hidden"]
    assert len(hidden) > 100  # the studio's handlers: polls, restores, saves, submits
    assert all(d["show_progress_on"] == [header._id] for d in hidden)
    assert min(b._id for b in demo.blocks.values() if b.is_rendered) == header._id  # first in the tree
