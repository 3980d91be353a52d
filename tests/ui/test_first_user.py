"""The studio as a first-time user meets it (issue 20), in headless Chromium against a real server.

One page, in order: register the digits demo, watch a running Stable Diffusion job fill its card and
gallery, have an over-budget selection and an over-count benchmark refused at submit with the field
named inline, and take a 1280x800 screenshot of every tab into ``test-artifacts/screenshots/`` (looked at
by a person; the test itself checks that nothing in a tab is wider than the page).
"""

from __future__ import annotations

import re
import shutil
import time

import pytest
from PIL import Image

from tests.ui import test_studio
from tests.ui.test_studio import JOB_TIMEOUT_MS, REPO, STEP_TIMEOUT_MS, Studio

studio = test_studio.studio  # the fixture: a server and one browser page for this module

pytestmark = pytest.mark.browser

SHOTS = REPO / "test-artifacts" / "screenshots"
TABS = ("Dataset", "Prompts", "Generate", "Select", "Benchmark", "Experiments", "Jobs")


def _cancel(studio: Studio, job_id: int) -> None:
    """Cancel a job through the API and wait until the worker has let go of it."""
    import json
    import urllib.request

    req = urllib.request.Request(f"{studio.base}/api/jobs/{job_id}/cancel", data=b"", method="POST")
    try:
        urllib.request.urlopen(req, timeout=10).close()
    except OSError:
        pass  # already finished: nothing to cancel
    deadline = time.monotonic() + 60
    while studio.api(f"/jobs/{job_id}")["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, json.dumps(studio.api(f"/jobs/{job_id}"))
        time.sleep(0.5)


# Gradio's status tracker announces finished events through an aria-live region with ``i18n("common.complete")``;
# a key its translations lack reaches the page as the raw key for a second. This records every such key the
# live regions ever show (polled; kept in sessionStorage, which survives the reloads below).
I18N_WATCH = """
setInterval(() => {
  const text = [...document.querySelectorAll('[aria-live]')].map((e) => e.textContent).join(' ');
  const hits = text.match(/\\bcommon\\.[a-z_]+/g);
  if (hits) {
    const seen = JSON.parse(sessionStorage.getItem('rb-i18n-keys') || '[]');
    sessionStorage.setItem('rb-i18n-keys', JSON.stringify([...new Set([...seen, ...hits])]));
  }
}, 250);
"""


def test_register_the_digits_demo(studio: Studio) -> None:
    """The dataset every later step uses (3 is the minority, 20 kept)."""
    studio.page.set_default_timeout(90_000)  # a loaded 2-core machine: clicks can wait on a busy renderer
    studio.page.add_init_script(I18N_WATCH)  # for every reload below
    studio.page.evaluate(I18N_WATCH)  # and for this page
    studio.register_digits()


def test_a_running_sd_job_shows_progress_and_thumbnails_before_it_ends(studio: Studio) -> None:
    """Issue 20.1: the card moves off 0 % and the newest images appear while the job still runs."""
    studio.tab("Generate")
    studio.tab("Stable Diffusion")
    for elem, value in (("sd-count", 400), ("sd-batch", 2), ("sd-steps", 4), ("sd-resolution", 32)):
        studio.fill(elem, value)
    before = studio.job_shown("sd-job")
    studio.click("sd-submit")
    job_id = studio.wait_job("sd-job", "running", after=before)
    # One snapshot of the card and gallery in which the job is still running, its percentage is strictly
    # between 0 and 100, and at least one of its thumbnails has loaded.
    js = """(id) => {
        const card = document.querySelector(`#sd-job .rb-job[data-job-id="${id}"]`);
        if (!card || card.dataset.status !== 'running') return false;
        const pct = parseFloat(card.querySelector('.rb-job-pct').textContent);
        const imgs = [...document.querySelectorAll('#sd-gallery img')].filter(i => i.complete && i.naturalWidth > 0);
        return pct > 0 && pct < 100 && imgs.length >= 1 ? pct : false;
    }"""
    try:
        pct = studio.page.wait_for_function(js, arg=job_id, timeout=JOB_TIMEOUT_MS).json_value()
        job = studio.api(f"/jobs/{job_id}")
        assert job["status"] == "running" and 0 < job["progress"] < 1, job
        assert 0 < pct < 100
        assert re.search(r"ETA \d", studio.page.locator("#sd-job .rb-job-pct").inner_text())
        studio.shot("first-user-sd-running")
    finally:
        _cancel(studio, job_id)
    pools = [p for p in studio.api("/pools") if p["job_id"] == job_id]
    assert len(pools) == 1 and 0 < pools[0]["count"] < 400, pools  # the cancel kept what was made


# Every 100 ms while the SD card shows a running job: its percentage, and whether its preview has loaded.
WATCH_SD_JS = """() => {
  window.rbSeen = {pcts: [], preview: false};
  window.rbWatch = setInterval(() => {
    const card = document.querySelector('#sd-job .rb-job[data-status="running"]');
    if (!card) return;
    window.rbSeen.pcts.push(parseFloat(card.querySelector('.rb-job-pct').textContent));
    const img = card.querySelector('img.rb-job-preview');
    if (img && img.complete && img.naturalWidth > 0) window.rbSeen.preview = true;
  }, 100);
}"""


def test_one_sd_batch_moves_step_by_step_and_shows_what_it_denoises(studio: Studio) -> None:
    """Issue 30.1: 8 images in one batch went from 0 % to done with nothing in between; now the card moves at
    every denoising step and shows a preview of the batch (its latents as RGB) before the job ends."""
    studio.tab("Generate")
    studio.tab("Stable Diffusion")
    # 384 px: about a second per step of the tiny model on a busy 2-core machine, so the 2 s polls see several.
    for elem, value in (("sd-count", 8), ("sd-batch", 8), ("sd-steps", 20), ("sd-resolution", 384)):
        studio.fill(elem, value)
    before = studio.job_shown("sd-job")
    studio.page.evaluate(WATCH_SD_JS)
    studio.click("sd-submit")
    job_id = studio.wait_job("sd-job", "succeeded", after=before)
    seen = studio.page.evaluate("() => { clearInterval(window.rbWatch); return window.rbSeen; }")
    between = sorted({p for p in seen["pcts"] if 0 < p < 100})
    assert len(between) >= 2, seen
    assert seen["preview"], seen
    assert studio.api(f"/jobs/{job_id}")["params"]["batch_size"] == 8


def _pool_label(studio: Studio) -> tuple[dict, str]:
    pool = min((p for p in studio.api("/pools") if p["kind"] == "sd"), key=lambda p: p["id"])  # the cancelled one
    return pool, f"#{pool['id']} {pool['name']}"


def test_an_over_budget_selection_is_refused_at_submit_naming_budget(studio: Studio) -> None:
    """Issue 20.3: a budget over the chosen pools is a 422 shown inline, and no job is queued."""
    studio.tab("Select")
    pool, label = _pool_label(studio)
    studio.page.locator("#sel-pools input").first.click()
    studio.page.get_by_role("option").filter(has_text=label).first.click()
    studio.page.keyboard.press("Escape")
    before = studio.api("/jobs?kind=select")["total"]
    studio.fill("sel-budget", pool["count"] + 1)
    # per_round (default 50) must not exceed the budget: a cancelled pool of fewer than 50 images would
    # otherwise be refused for per_round first (it depends on how far the SD job got before its cancel)
    studio.fill("sel-per-round", 1)
    studio.click("sel-run")
    error = studio.page.locator("#sel-msg .rb-error[data-fields~='budget']")
    error.wait_for()
    assert f"exceeds the {pool['count']} images" in error.inner_text()
    assert error.inner_text().startswith("params.budget:")
    assert studio.api("/jobs?kind=select")["total"] == before
    studio.shot("first-user-select-refused")


def test_an_over_count_benchmark_is_refused_at_submit_naming_the_count(studio: Studio) -> None:
    """Issue 20.3: a pool variant asking for more images than the pool holds is refused before training."""
    studio.tab("Benchmark")
    pool, label = _pool_label(studio)
    studio.page.locator("#bench-pool input").first.click()
    studio.page.get_by_role("option").filter(has_text=label).first.click()
    studio.page.keyboard.press("Escape")
    # The synthetic-image recipes are bound to the benchmark kind: its help text, its limits (422 inline).
    studio.page.locator("#bench-synthetic-weight", has_text="relative to a real one").wait_for()
    studio.fill("bench-synthetic-weight", 20)
    before = studio.api("/jobs?kind=benchmark")["total"]
    studio.click("bench-run")
    studio.page.locator("#bench-msg .rb-error[data-fields~='synthetic_weight']").wait_for()
    studio.fill("bench-synthetic-weight", 0.5)
    studio.fill("bench-finetune", 1)
    studio.fill("bench-pool-count", pool["count"] + 5)
    studio.click("bench-run")
    error = studio.page.locator("#bench-msg .rb-error[data-fields*='.count']")
    error.wait_for()
    text = error.inner_text()
    assert re.match(r"params\.variants\.\d+\.count:", text), text
    assert f"asks for {pool['count'] + 5} images; pool {pool['id']} holds {pool['count']}" in text
    assert studio.api("/jobs?kind=benchmark")["total"] == before
    studio.shot("first-user-benchmark-refused")


def _overflowing(studio: Studio) -> list[str]:
    """Visible elements of the shown tab that stick out past the viewport's right edge."""
    js = """() => {
        const w = document.documentElement.clientWidth;
        return [...document.querySelectorAll('.tabitem:not([style*="display: none"]) *')]
            .filter(e => e.offsetParent !== null && e.getBoundingClientRect().right > w + 1)
            .slice(0, 5).map(e => `${e.tagName}#${e.id}.${e.className}`.slice(0, 120));
    }"""
    return studio.page.evaluate(js)


def test_screenshot_of_every_tab_at_1280x800(studio: Studio) -> None:
    """Every tab (and each Generate section) as a first-time user sees it after a reload, saved for a
    person to look at; nothing sticks out of the page, and the restored dataset draws its histogram."""
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    SHOTS.mkdir(parents=True)
    assert studio.page.viewport_size == {"width": 1280, "height": 800}
    studio.page.reload()
    studio.tab("Dataset")
    # Issue 20.8: after a reload the dataset, its classes and its histogram all come back.
    # (Every tab's form restores at once after a reload: on a loaded machine that takes minutes.)
    studio.page.locator("#ds-info", has_text="digits-demo").wait_for(timeout=240_000)
    studio.page.locator("#ds-plot .js-plotly-plot").wait_for(timeout=120_000)
    problems, expected = {}, []
    for name in TABS:
        studio.tab(name)
        sections = [None]
        if name == "Generate":  # its sections as the page names them
            sections = [t.strip() for t in studio.page.locator("#tab-generate [role=tab]").all_inner_texts()]
        for section in sections:
            if section:
                studio.tab(section)
            studio.page.wait_for_timeout(1000)  # let lists, plots and thumbnails load
            slug = re.sub(r"[^a-z0-9]+", "-", f"{name} {section or ''}".lower()).strip("-")
            expected.append(slug)
            full = SHOTS / f"{slug}-full.png"
            studio.page.screenshot(path=str(full), full_page=True)
            # What the window shows is the top 1280x800 of the whole page (one capture instead of two).
            with Image.open(full) as page:
                page.crop((0, 0, 1280, min(800, page.height))).save(SHOTS / f"{slug}.png")
            if out := _overflowing(studio):
                problems[slug] = out
    assert len(expected) >= len(TABS) + 2  # the Generate tab has sections
    assert sorted(p.stem for p in SHOTS.glob("*.png") if not p.stem.endswith("-full")) == sorted(expected)
    assert not problems, problems


def test_gan_form_starts_small_on_this_cpu_server_and_says_why(studio: Studio) -> None:
    """Issue 20.5: the kinds API suggests a CPU-sized GAN; the form starts there, the help says why."""
    studio.tab("Generate")
    studio.tab("GAN")
    assert studio.page.locator("#gan-size input[value='32']").is_checked()
    assert studio.page.locator("#gan-width input").first.input_value() == "0.5"
    assert int(studio.page.locator("#gan-epochs input").first.input_value()) <= 5
    studio.page.locator("#gan-epochs", has_text="grey").wait_for()


def test_an_empty_required_number_is_an_inline_error_not_a_silent_default(studio: Studio) -> None:
    """Issue 30.3: an emptied Epochs box submitted the API's default (30) while the box stayed blank."""
    studio.tab("Generate")
    studio.tab("GAN")
    before = studio.api("/jobs?kind=train_gan")["total"]
    box = studio.page.locator("#gan-epochs input").first
    kept = box.input_value()
    box.fill("")
    box.press("Tab")
    studio.click("gan-train")
    msg = studio.page.locator("#gan-train-msg .rb-error[data-fields='epochs']")
    msg.wait_for()
    assert "epochs: enter a number" in msg.inner_text()
    studio.page.wait_for_timeout(1000)  # a submitted job would be listed by now
    assert studio.api("/jobs?kind=train_gan")["total"] == before
    assert box.input_value() == ""  # the box is left as the user made it, not refilled
    studio.fill("gan-epochs", kept)


def test_the_address_keeps_the_tab_and_opens_a_linked_job(studio: Studio) -> None:
    """Issue 30.7: a reload landed on the Dataset tab; the tab (and the chosen job) now live in the address."""
    studio.tab("Select")
    studio.page.wait_for_function("() => new URL(location.href).searchParams.get('tab') === 'select'")
    studio.page.reload()
    studio.page.locator("[role=tab][aria-selected=true]", has_text="Select").wait_for()
    job_id = studio.api("/jobs?kind=prepare_dataset")["items"][0]["id"]
    page = studio.page.context.browser.new_page(viewport={"width": 1280, "height": 800})  # a copied link
    page.set_default_timeout(STEP_TIMEOUT_MS)  # as patient as the studio's own page (30 s ran out once)
    try:
        page.goto(f"{studio.base}/?tab=jobs&job={job_id}")
        page.locator("[role=tab][aria-selected=true]", has_text="Jobs").wait_for()
        page.locator(f"#jobs-card .rb-job[data-job-id='{job_id}']").wait_for()
        # Choosing another tab keeps the job in the address and names the new tab.
        page.get_by_role("tab", name="Benchmark", exact=True).first.click()
        page.wait_for_function(
            "id => { const p = new URL(location.href).searchParams; return p.get('tab') === 'benchmark'"
            " && p.get('job') === String(id); }",
            arg=job_id,
        )
        # A select event lost while the page starts (under load a click showed Generate while the timers of the
        # tab before kept running): the page notices that the tab on screen is not the one its last select
        # event started, and fires the tab's select events again.
        page.evaluate("() => { document.documentElement.dataset.rbTab = 'jobs'; }")
        page.wait_for_function("() => document.documentElement.dataset.rbTab === 'benchmark'", timeout=15_000)
        page.locator("[role=tab][aria-selected=true]", has_text="Benchmark").wait_for()
        # The page switching tabs without the person (a full run saw a copied link fall back to Dataset after it
        # had shown Jobs): the guard brings back the tab the person chose, with its select events.
        shown = page.evaluate(
            "async () => { const tabs = () => [...document.querySelectorAll('#rb-tabs [role=tab]')];"
            " tabs().find(b => b.textContent.trim() === 'Dataset').click();"  # a script's click: not the person's
            " await new Promise(r => setTimeout(r, 200));"
            " return tabs().find(b => b.getAttribute('aria-selected') === 'true').textContent.trim(); }"
        )
        assert shown == "Dataset"  # it did switch; the guard waits 1 s before it clicks back
        page.wait_for_function(
            "() => document.documentElement.dataset.rbTab === 'benchmark'"
            " && new URL(location.href).searchParams.get('tab') === 'benchmark'"
            " && document.querySelector('#rb-tabs [role=tab][aria-selected=true]').textContent.trim() === 'Benchmark'",
            timeout=15_000,
        )
        # In a narrow window the tabs that do not fit move into a "More tabs" menu (the first tab and the one shown
        # stay in the bar): a choice made there is the person's too, and the guard keeps it rather than going back
        # to the tab chosen before (Dataset, whose button it could still click).
        page.set_viewport_size({"width": 420, "height": 800})
        page.get_by_role("tab", name="Dataset", exact=True).first.click()
        page.wait_for_function("() => document.documentElement.dataset.rbTab === 'dataset'", timeout=15_000)
        page.locator("#rb-tabs button[aria-label='More tabs']").first.click()
        page.locator("#rb-tabs .overflow-dropdown button", has_text="Experiments").first.click()
        page.wait_for_function("() => document.documentElement.dataset.rbTab === 'experiments'", timeout=15_000)
        page.wait_for_timeout(2500)  # the guard clicks a tab back after 1 s of it not being shown
        shown = "document.querySelector('#rb-tabs [role=tab][aria-selected=true]').textContent.trim()"
        state = page.evaluate(f"() => [{shown}, document.documentElement.dataset.rbTab]")
        assert state == ["Experiments", "experiments"]
    except Exception:
        # The studio's failure report covers its own page; this one is closed before it runs. A full run on
        # 2026-12-07 found the job card here hidden under a selected Jobs tab for 90 s: keep what it showed.
        state = page.evaluate(
            "() => ({url: location.href, mark: document.documentElement.dataset.rbTab, opening: !!window.rbOpening,"
            " chosen: window.rbChosenTab,"
            " tabs: [...document.querySelectorAll('[role=tab]')].map(t => t.innerText + '=' + t.ariaSelected)})"
        )
        page.screenshot(path=str(studio.shots / "copied-link-failure.png"), full_page=True)
        print(f"copied-link page at the failure: {state}; screenshot {studio.shots / 'copied-link-failure.png'}")
        raise
    finally:
        page.close()


def test_job_times_say_utc(studio: Studio) -> None:
    """Issue 20.8: times in the Jobs tab are marked UTC, and the id box is empty (not a made-up 0) until
    a job is chosen; a click on a row puts that job's id there."""
    studio.page.reload()
    studio.tab("Jobs")
    studio.page.locator("#jobs-table", has_text="prepare_dataset").wait_for(timeout=240_000)
    assert "UTC" in studio.page.locator("#jobs-table").inner_text()
    box = studio.page.locator("#jobs-id").locator("input, textarea").first
    assert box.input_value() == ""
    studio.click("jobs-cancel")
    studio.page.locator("#jobs-action-msg", has_text="enter or click a job first").wait_for()
    # The table's cells are role=gridcell divs with data-row / data-col (its <tbody> only sizes columns).
    first_id = studio.page.locator("#jobs-table [data-testid='cell-0-0']").inner_text().strip()
    studio.page.locator("#jobs-table [data-testid='cell-0-1']").click()
    studio.page.wait_for_function("([el, v]) => el.value === v", arg=[box.element_handle(), first_id])
    studio.page.locator(f"#jobs-card .rb-job[data-job-id='{first_id}']").wait_for()
    # The Experiments tab's id box is the same kind of box: empty, not 0, before any experiment.
    studio.tab("Experiments")
    assert studio.page.locator("#exp-id").locator("input, textarea").first.input_value() == ""


def test_no_untranslated_gradio_key_was_ever_shown(studio: Studio) -> None:
    """Issue 20.8: every click above (submits, refusals, tab changes) ran without ``common.complete``
    or another raw i18n key appearing in the page."""
    assert studio.page.evaluate("() => sessionStorage.getItem('rb-i18n-keys')") in (None, "[]")
