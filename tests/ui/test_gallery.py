"""The Select tab's review gallery in a real Chromium at 1280x800 (issue 20, item 6), and pools sampled
from a GAN shown as images (in Generate's GAN section and in Select's candidate preview).

Setup jobs that are not under test (the SD pool, the GAN, the selection) are submitted to the API
directly; what the user sees and clicks goes through the page."""

# ruff: noqa: F811 - the imported `studio` fixture is, as pytest wants, the tests' parameter name

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.ui.test_studio import Studio, studio  # noqa: F401

pytestmark = pytest.mark.browser

SLOW_MS = 90_000  # each step's patience: 2 CPU cores shared with other test runs slow the page down a lot
VOCAB = {"template": "a {style} digit {n}", "slots": {"style": ["handwritten", "printed"], "n": ["three", "3"]}}


def post(studio: Studio, path: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        f"{studio.base}/api{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def run_job(studio: Studio, kind: str, params: dict[str, Any], timeout: float = 240) -> dict[str, Any]:
    """Submit a setup job through the API and wait for it to succeed."""
    job = post(studio, "/jobs", {"kind": kind, "params": params})
    deadline = time.monotonic() + timeout
    while (job := studio.api(f"/jobs/{job['id']}"))["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"{kind} job did not finish: {job}"
        time.sleep(1)
    assert job["status"] == "succeeded", job.get("error")
    return job


def register_digits(studio: Studio) -> int:
    """The digits demo registered from the Dataset tab, digit 3 cut to 20 images (the tabs' shared spec)."""
    studio.page.set_default_timeout(SLOW_MS)
    return int(studio.register_digits()["id"])


def box(studio: Studio, selector: str) -> dict[str, float]:
    found = studio.page.locator(selector).first.bounding_box()
    assert found is not None, f"{selector} is not rendered"
    return found


def test_picks_fit_the_panel_and_a_click_opens_the_preview(studio: Studio) -> None:
    register_digits(studio)
    sd = run_job(studio, "generate_sd", {"model": "tiny", "vocabulary": VOCAB, "count": 16, "batch_size": 4,
                                          "steps": 2, "resolution": 32, "seed": 1})  # fmt: skip
    pool_id = sd["result"]["pool_id"]
    pool = studio.api(f"/pools/{pool_id}")
    studio.tab("Select")
    studio.pick("sel-pools", f"#{pool_id} {pool['name']} ({pool['count']})")
    studio.pick("sel-acq", "bald")  # its scores are not p(minority): the sort test needs two orders
    for elem, value in (("sel-budget", 8), ("sel-per-round", 4), ("sel-mc", 3), ("sel-epochs", 1)):
        studio.fill(elem, value)
    studio.click("sel-run")  # the finished selection is listed and chosen
    studio.wait_job("sel-job")
    sel_id = max(s["id"] for s in studio.api("/selections"))
    picks = sorted(studio.api(f"/selections/{sel_id}")["picks"], key=lambda p: (-p["score"], p["rank"]))
    prompts = {r["id"]: r["prompt"] for r in studio.api(f"/pools/{pool_id}/images?limit=100")["items"]}
    studio.wait_images("#sel-gallery", len(picks))

    # Every thumbnail lies inside the gallery and inside the review panel: none is clipped at 1280x800.
    panel = studio.page.locator("#sel-gallery").locator("xpath=ancestor::*[contains(@class,'rb-card')][1]")
    pbox = panel.bounding_box()
    gbox = box(studio, "#sel-gallery")
    thumbs = studio.page.locator("#sel-gallery .thumbnail-item")
    assert thumbs.count() == len(picks)
    for i in range(thumbs.count()):
        t = thumbs.nth(i).bounding_box()
        for outer in (pbox, gbox):
            inside = t["x"] >= outer["x"] - 0.5 and t["x"] + t["width"] <= outer["x"] + outer["width"] + 0.5
            assert inside, f"pick {i} at {t} is clipped by {outer}"
    wrap = studio.page.locator("#sel-gallery .grid-wrap").first
    assert wrap.evaluate("el => el.scrollWidth <= el.clientWidth + 1")  # nothing hidden sideways either
    # Issue 30.11: the label badge and the icon buttons sit above the thumbnails, not on the first or last one;
    # a caption wraps instead of being cut on one line; the Selection dropdown's text stops before its arrow.
    first_row = min(thumbs.nth(i).bounding_box()["y"] for i in range(thumbs.count()))
    overlays = studio.page.locator("#sel-gallery label[data-testid=block-label], #sel-gallery .icon-button-wrapper")
    assert overlays.count() >= 2
    for i in range(overlays.count()):
        over = overlays.nth(i).bounding_box()
        assert over["y"] + over["height"] <= first_row + 0.5, (i, over, first_row)
    cut = "els => els.filter((c) => c.scrollWidth > c.clientWidth + 1).map((c) => c.innerText)"
    assert studio.page.eval_on_selector_all("#sel-gallery .caption-label", cut) == []
    arrow = """(box) => { const input = box.querySelector('input'), icon = box.querySelector('.icon-wrap');
        const r = input.getBoundingClientRect(); const pad = parseFloat(getComputedStyle(input).paddingRight);
        return [r.right - pad, icon.getBoundingClientRect().left]; }"""
    text_end, arrow_start = studio.page.locator("#sel-pick").evaluate(arrow)
    assert text_end <= arrow_start + 0.5, (text_end, arrow_start)

    # Captions: when it was picked (counted from 1), score, review state and the prompt; no image id mixed in.
    best = picks[0]
    caption = thumbs.nth(0).inner_text()
    assert f"pick {best['rank'] + 1} ·" in caption and prompts[best["image_id"]] in caption
    assert f"#{best['image_id']}" not in caption and "rank" not in caption

    # A click opens the large preview with prompt and score, the image id and rank in their own rows.
    thumbs.nth(0).click()
    preview = studio.page.locator(f"#sel-chosen .rb-preview[data-image-id='{best['image_id']}']")
    preview.wait_for()
    studio.page.wait_for_function(
        "el => el.complete && el.naturalWidth > 0", arg=preview.locator("img").element_handle(), timeout=SLOW_MS
    )
    assert preview.locator("img").bounding_box()["width"] >= 200  # large, not a thumbnail
    facts = dict(zip(preview.locator("dt").all_inner_texts(), preview.locator("dd").all_inner_texts(), strict=True))
    assert facts["Prompt"] == prompts[best["image_id"]]
    assert facts["Score"] == f"{best['score']:.4f}"
    # Issue 30.9: the round reads against the summary's count ("round 2 of 2", not "round 1" beside "2 rounds").
    rounds = len(studio.api(f"/selections/{sel_id}")["rounds"])
    studio.page.locator("#sel-stats", has_text=f"{rounds} rounds").wait_for()
    assert facts["Picked"] == f"pick {best['rank'] + 1}, in round {best['round'] + 1} of {rounds}", facts
    assert facts["Image id"].startswith(str(best["image_id"])) and "pending" in facts["Review"]

    # Keyboard review: `a` accepts the pick shown large and shows the next one; `r` rejects that one.
    studio.page.locator("#sel-gallery").click(position={"x": 5, "y": 5})  # focus on the page, not in a field
    studio.page.keyboard.press("a")
    studio.page.locator(f"#sel-chosen .rb-preview[data-image-id='{picks[1]['image_id']}']").wait_for()
    studio.page.locator("#sel-stats", has_text="✓ 1 accepted").wait_for()
    studio.page.keyboard.press("r")
    studio.page.locator(f"#sel-chosen .rb-preview[data-image-id='{picks[2]['image_id']}']").wait_for()
    studio.page.locator("#sel-stats", has_text="✗ 1 rejected").wait_for()
    reviews = {p["image_id"]: p["review"] for p in studio.api(f"/selections/{sel_id}")["picks"]}
    assert reviews[best["image_id"]] == "accepted" and reviews[picks[1]["image_id"]] == "rejected"
    assert list(reviews.values()).count("pending") == len(picks) - 2
    # Typing `a` in a field reviews nothing.
    studio.fill("sel-nr-smoothing", 1)
    studio.page.locator("#sel-nr-smoothing input").press("a")
    studio.page.wait_for_timeout(800)
    assert [p["review"] for p in studio.api(f"/selections/{sel_id}")["picks"]].count("pending") == len(picks) - 2
    studio.shot("select-review")

    # Sort by p(minority) and filter by class: the gallery follows both.
    studio.pick("sel-sort", "p(minority) (highest first)")
    by_prob = [p["rank"] + 1 for p in sorted(picks, key=lambda p: (-p["minority_prob"], p["rank"]))]
    assert by_prob != [p["rank"] + 1 for p in picks]  # BALD scores: an order of its own, so this can fail
    js = """(want) => [...document.querySelectorAll('#sel-gallery .thumbnail-item')]
        .map((t) => +(t.innerText.match(/pick (\\d+)/) || [])[1]).join() === want.join()"""
    studio.page.wait_for_function(js, arg=by_prob, timeout=SLOW_MS)
    studio.pick("sel-class", "3")  # the SD pool's images are the selection's class
    studio.wait_images("#sel-gallery", len(picks))
    studio.radio("sel-filter", "accepted")
    studio.page.wait_for_function("() => document.querySelectorAll('#sel-gallery .thumbnail-item').length === 1")
    studio.radio("sel-filter", "all")
    studio.pick("sel-sort", "score (best first)")

    # The closed loop from the page: a generate_sd job like the pool's, with a weighted saved vocabulary.
    studio.fill("sel-nr-smoothing", 2)
    studio.click("sel-next-round")
    said = studio.page.locator("#sel-nr-msg .rb-ok")
    said.wait_for()
    found = re.search(r"job #(\d+) with vocabulary #(\d+)", said.inner_text())
    assert found, said.inner_text()
    job = studio.api(f"/jobs/{found[1]}")
    assert job["kind"] == "generate_sd" and job["params"]["vocabulary"] == int(found[2])
    assert job["params"]["count"] == 16 and job["params"]["model"] == "tiny"
    weights = studio.api(f"/vocabularies/{found[2]}")["weights"]
    assert set(weights) == {"style", "n"} and all(w > 0 for ws in weights.values() for w in ws.values())
    for slot, ws in weights.items():  # the page lists every slot value with its share
        assert all(f"{v} " in said.inner_text() for v in ws), (slot, said.inner_text())
    # Twice is the same job (the API is idempotent): no second job is queued.
    studio.click("sel-next-round")
    studio.page.wait_for_timeout(1500)
    assert len(studio.api("/jobs?kind=generate_sd")["items"]) == 2  # the pool's + this one
    try:  # not needed further: spare the later tests its CPU time (409: it has finished already)
        post(studio, f"/jobs/{found[1]}/cancel", {})
    except urllib.error.HTTPError as exc:
        assert exc.code == 409, exc


def test_gan_pool_images_are_shown(studio: Studio) -> None:
    if not studio.api("/datasets"):  # run on its own (-k gan)
        register_digits(studio)
    studio.tab("Generate")
    studio.page.locator("#gen-gan-button, [role=tab]", has_text="GAN").first.click()
    for elem, value in (("gan-epochs", 1), ("gan-batch", 16), ("gan-width", 0.0625)):
        studio.fill(elem, value)
    studio.radio("gan-size", "32")
    studio.click("gan-train")  # the finished GAN is listed and chosen
    studio.wait_job("gan-train-job")
    studio.wait_images("#gan-grid", 1)
    studio.fill("gan-count", 8)
    studio.click("gan-sample")
    studio.wait_job("gan-sample-job")
    srcs = studio.wait_images("#gan-pool-gallery", 8)
    (pool,) = studio.api("/pools?kind=gan")
    first = studio.api(f"/pools/{pool['id']}/images?limit=1")["items"][0]
    assert srcs[0].endswith(f"/api/images/{first['id']}/review")
    studio.shot("generate-gan-pool")
    studio.page.locator("[role=tab]", has_text="Stable Diffusion").first.click()
    # Select: the chosen candidate pools show their images, a GAN pool included.
    studio.tab("Select")
    studio.pick("sel-pools", f"#{pool['id']} {pool['name']} ({pool['count']})")
    # An earlier test may have left another pool chosen, whose images show first: wait for this pool's.
    js = "(t) => (document.querySelector('#sel-pool-gallery')?.innerText || '').includes(t)"
    studio.page.wait_for_function(js, arg=f"(pool #{pool['id']})", timeout=SLOW_MS)
    srcs = studio.wait_images("#sel-pool-gallery", 8)
    assert any(s.endswith(f"/api/images/{first['id']}/review") for s in srcs)
    text = studio.page.locator("#sel-pool-gallery").inner_text()
    assert re.search(rf"dcgan[^\n]*\(pool #{pool['id']}\)", text), text  # what made it, which pool
