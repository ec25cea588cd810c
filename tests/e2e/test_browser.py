"""The dashboard end to end in a real browser, as a first-time user meets it.

`streamlit run streamlit_app.py` starts on a free port with an empty temporary workspace; headless
Chromium (Debian's, driven by playwright) watches the synthetic demo data being generated, browses it,
launches a short training run from the Train page, restarts the app while the run trains and opens the
Train page's URL first (the run is still tracked and its live view resumes), sees the run finish, opens
its metrics and confusion matrix, follows an error to the Explain page and its gallery, uploads patches
on Predict and reads a probability and a centre focus. A screenshot of every page goes to
tests/artifacts/screenshots/ (ignored by git); `scripts/update-screenshots.sh` copies them to assets/screenshots/,
which the README shows, so running the tests never changes a tracked file.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import CHROMIUM, CHROMIUM_ARGS, PAGE_DRAWN, REAL_KAGGLE, REPO, Dashboard, tif_bytes, wait_for, wait_rendered
from pcam_core.data import PCamH5, patch_id
from pcam_core.workspace.reviews import ReviewStore
from pcam_core.runs import RunDir, list_runs, stop

SHOTS = Path(os.environ.get("PCAM_SCREENSHOTS", REPO / "tests" / "artifacts" / "screenshots"))
VIEWPORT = {"width": 1400, "height": 1000}
PAGE_TITLES = ["Overview", "Dataset", "Train", "Runs and metrics", "Explain", "Predict", "Slides", "Review"]
pytestmark = pytest.mark.browser


@pytest.fixture()
def dashboard(tmp_path):
    """The app on a free port with a fresh workspace (a small demo set); stopped afterwards with its runs."""
    app = Dashboard(tmp_path / "workspace", tmp_path / "streamlit.log", env={"PCAM_DEMO_PATCHES": "384"})
    app.start()
    try:
        yield app
    finally:
        for run in list_runs(app.workspace / "runs"):
            stop(RunDir(run.path), timeout=30)
        app.stop()


def _drawn(page) -> None:
    """Wait until the page is drawn completely: no script run, every chart and image drawn (helpers.PAGE_DRAWN)."""
    page.wait_for_function(PAGE_DRAWN, timeout=60_000, polling=50)


def _shot(page, name: str) -> None:
    """A screenshot of the whole page: the window is made as tall as the content, then restored."""
    _drawn(page)
    height = 0
    for _ in range(3):  # content below the fold may only grow once the window is taller (measured, not waited for)
        grown = page.evaluate("() => document.querySelector('[data-testid=stMain]').scrollHeight")
        if grown <= height:
            break
        height = grown
        page.set_viewport_size({"width": VIEWPORT["width"], "height": int(min(4000, max(VIEWPORT["height"], height)))})
        _drawn(page)
    SHOTS.mkdir(parents=True, exist_ok=True)
    image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    # 256 colours with dithering: a third of the size, no visible loss on these pages (the repository keeps them)
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(
        SHOTS / f"{name}.png", optimize=True)
    page.set_viewport_size(VIEWPORT)


def _no_exception(page) -> None:
    """No exception on the page, and no chart that could not be drawn (pcam_app/components/chart.js says why in its place)."""
    assert page.locator("[data-testid=stException]").count() == 0, page.locator("[data-testid=stException]").first.inner_text()
    failed = page.locator(".pcam-chart[data-state=error]")
    assert failed.count() == 0, failed.first.inner_text()


def _slide_threshold_to(page, target: float) -> None:
    """Move the Runs page's threshold slider to `target` with the arrow keys, as a user does, one press at a
    time: each press is followed by waiting for the value it sets to be shown and the page's rerun to end, so
    that no press arrives while the page reruns for the one before (the browser's slider can drop it)."""
    from playwright.sync_api import expect

    thumb = page.locator("[data-testid=stSliderThumbValue]").first
    slider = page.get_by_role("slider").first
    for _ in range(4 * round(1 / 0.005)):  # a bound: each step reads where the slider is and presses towards the target
        value = float(thumb.inner_text())
        steps = round((target - value) / 0.005)
        if not steps:
            break
        before = thumb.inner_text()
        slider.focus()
        slider.press("ArrowRight" if steps > 0 else "ArrowLeft")
        # A press that arrives while the page's rerun ends can be dropped, and a rerun under way can put the slider back
        # where the page last drew it (seen once in CI: 0.495 -> 0.500): either way the next step starts from what it shows.
        wait_for(lambda: thumb.inner_text() != before, timeout=5)
        _drawn(page)
    expect(thumb).to_have_text(f"{target:.3f}")
    wait_rendered(page, page.get_by_text(f"Confusion matrix at threshold {target:.3f}"))


# The Train page's step counter ("epoch 2 of 4 · step 30 of 72 · ...") past `before`.
STEP_PAST = """before => {
    const match = document.body.innerText.match(/epoch \\d+ of \\d+ · step ([\\d,]+) of/);
    return match !== null && parseInt(match[1].replace(/,/g, ''), 10) > before;
}"""


def _goto(page, title: str, heading: str | None = None) -> None:
    """Open a page from the sidebar navigation and wait for its title."""
    page.locator("[data-testid=stSidebarNav]").get_by_text(title, exact=True).click()
    page.get_by_role("heading", name=heading or title).wait_for(timeout=60_000)


def _step(page) -> int:
    """The step counter of the Train page's live view ("epoch 2 of 3 · step 30 of 72 · ...")."""
    text = page.get_by_text(re.compile(r"epoch \d+ of \d+ · step [\d,]+ of")).first.inner_text()
    return int(re.search(r"step ([\d,]+) of", text).group(1).replace(",", ""))


def test_first_start_train_restart_judge_explain_predict(dashboard, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).exists(), f"the browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)"
    url, workspace = dashboard.url, dashboard.workspace
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(60_000)
        page_errors: list[str] = []  # uncaught JavaScript errors: the pages' own code (charts) must raise none
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        try:
            # first start: the synthetic demo data is generated, and said to be synthetic
            page.goto(url)
            page.get_by_text("SYNTHETIC", exact=False).first.wait_for(timeout=120_000)
            if page.get_by_text("First start").is_visible():  # still generating (it takes a few seconds)
                _shot(page, "first-start")
            page.get_by_role("heading", name="Where to start").wait_for(timeout=180_000)
            expect(page.get_by_text("SYNTHETIC demo data", exact=False).first).to_be_visible()
            _no_exception(page)
            _shot(page, "overview")

            # browse the tumour patches
            _goto(page, "Dataset")
            page.locator("[data-testid=stButtonGroup]").get_by_text("tumour", exact=True).click()
            expect(page.get_by_text(re.compile(r"of [\d,]+ tumour patches"))).to_be_visible()
            expect(page.locator("[data-testid=stImage]").first).to_be_visible()
            _no_exception(page)
            _shot(page, "dataset")

            # train a short run from the form and watch it learn
            _goto(page, "Train")
            expect(page.get_by_role("spinbutton", name="Processes", exact=True)).to_have_value("1")
            epochs = page.get_by_role("spinbutton", name="Epochs", exact=True)
            epochs.fill("6")  # of 12 steps (384 patches): the restart below comes in the second, four more to go
            epochs.press("Enter")  # Enter in a field does not submit the form: it once started a run at every press
            page.wait_for_timeout(1000)  # time for a submission to reach the server, had there been one
            _drawn(page)
            assert list_runs(workspace / "runs") == [] and epochs.input_value() == "6"
            page.get_by_role("button", name="Start training").click()
            page.get_by_text(re.compile(r"epoch 2 of 6 · step")).wait_for(timeout=240_000)  # the live view polls by itself
            _no_exception(page)
            _shot(page, "train-live")
            (run,) = list_runs(workspace / "runs")

            # the app restarts while the run trains; the first request of the new server process is the
            # Train page's URL (a reload): the whole app is there and the run's live view carries on
            page.close()
            dashboard.stop()
            assert RunDir(run.path).status()["state"] == "running"  # the run does not depend on the app
            dashboard.start()
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(60_000)
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.goto(f"{url}/train?run={run.run_id}")
            wait_rendered(page, page.get_by_text(re.compile(r"epoch \d of 6 · step")))
            nav = page.locator("[data-testid=stSidebarNav] a")
            titles = [text.strip().splitlines()[-1].strip() for text in nav.all_inner_texts()]  # after the icon's name
            assert titles == PAGE_TITLES  # the app's navigation, not Streamlit's list of the files in pages/
            expect(page.locator("[data-testid=stSidebar]").get_by_text(str(workspace))).to_be_visible()
            expect(page.get_by_role("combobox", name="Selected run")).to_have_value(re.compile(run.run_id))
            expect(page.get_by_role("heading", name="New run")).to_be_visible()
            expect(page.get_by_text(run.run_id).first).to_be_visible()
            before = _step(page)
            # the live view polls the run folder every 2 s: its step counter moves on
            page.wait_for_function(STEP_PAST, arg=before, timeout=120_000)
            assert _step(page) > before, "the live view did not resume after the restart"
            _no_exception(page)
            page.get_by_text(re.compile(r"step \d+ of \d+ · finished after")).wait_for(timeout=300_000)
            runs = list_runs(workspace / "runs")
            assert len(runs) == 1 and runs[0].state == "finished" and runs[0].epochs_done == 6
            _shot(page, "train")

            # judge it: metrics, curves, confusion matrix; move the threshold with the keyboard
            _goto(page, "Runs and metrics")
            page.get_by_text("Confusion matrix at threshold 0.500").wait_for()
            expect(page.get_by_text("true positive").first).to_be_visible()
            _slide_threshold_to(page, 0.30)
            _no_exception(page)
            _shot(page, "runs")
            # another split, scored in the background from the page: the slider still shows the threshold in use (it
            # once showed 0.000, its minimum, after the scoring redrew the page)
            splits = page.locator("[data-testid=stButtonGroup]").first
            splits.get_by_text("test", exact=True).click()
            page.get_by_role("button", name="Score the test split").click()
            # each split named by its own caption: the confusion matrix's title is the same on both
            wait_rendered(page, page.get_by_text(re.compile(r"patches of the test split")), timeout_ms=240_000)  # a background job
            expect(page.get_by_text("Confusion matrix at threshold 0.300").first).to_be_visible()
            expect(page.locator("[data-testid=stSliderThumbValue]").first).to_have_text("0.300")
            splits.get_by_text(re.compile(r"^valid")).click()
            wait_rendered(page, page.get_by_text(re.compile(r"patches of the valid split")))
            expect(page.locator("[data-testid=stSliderThumbValue]").first).to_have_text("0.300")

            # from an error to its explanation (at threshold 0 every normal patch is a false positive)
            main = page.locator("[data-testid=stMain]")
            if main.get_by_role("link", name="Explain").count() == 0:
                page.get_by_role("slider").first.press("Home")
                wait_rendered(page, main.get_by_role("link", name="Explain"))
            number = re.match(r"#(\d+)", main.locator(".pcam-patch-links figcaption").first.inner_text()).group(1)
            link = main.get_by_role("link", name="Explain").first
            assert f"patch={number}" in link.get_attribute("href")  # the address opens it in a new tab too
            link.click()  # opens it in this session
            wait_rendered(page, page.get_by_text(f"Patch #{number} of valid"))
            expect(page.get_by_role("heading", name="Explain")).to_be_visible()
            expect(page.get_by_text("Centre focus").first).to_be_visible()
            with page.expect_download() as download:  # the PNG is made when asked for
                page.get_by_role("button", name="Download the overlay (PNG)").click()
            overlay = Image.open(download.value.path())
            assert overlay.format == "PNG" and overlay.size == (384, 384)
            _no_exception(page)
            _shot(page, "explain")
            page.locator("[data-testid=stButtonGroup]").get_by_text("Gallery", exact=True).click()
            wait_rendered(page, page.get_by_text(re.compile(r"sorted by centre focus")))
            focus = [float(m) for m in re.findall(r"focus (\d\.\d\d)", main.inner_text())]
            assert len(focus) >= 12 and focus == sorted(focus)  # lowest centre focus first
            _no_exception(page)
            _shot(page, "explain-gallery")

            # predict: upload Kaggle-style patches (two tumour, two normal), a grayscale one (converted, with a
            # notice) and a 64x64 crop (refused, with the reason); read a probability and a centre focus
            _goto(page, "Predict")
            test_split = PCamH5(workspace / "data" / "demo", "test")
            picks = [*np.flatnonzero(test_split.labels == 1)[:2], *np.flatnonzero(test_split.labels == 0)[:2]]
            files = []
            for pixels in test_split.read_pixels(picks):
                files.append(tmp_path / f"{patch_id(pixels)}.tif")
                files[-1].write_bytes(tif_bytes(pixels))
            files.append(tmp_path / "grayscale.tif")
            files[-1].write_bytes(tif_bytes(np.ascontiguousarray(pixels[..., 0]), "L"))
            files.append(tmp_path / "crop64.tif")
            files[-1].write_bytes(tif_bytes(np.ascontiguousarray(pixels[:64, :64])))
            page.locator("[data-testid=stFileUploaderDropzoneInput]").set_input_files([str(f) for f in files])
            page.get_by_text("5 patches scored").wait_for()
            expect(page.locator("[data-testid=stAlert]", has_text="crop64.tif").first).to_contain_text("64x64")
            expect(page.locator("[data-testid=stAlert]", has_text="grayscale.tif").first).to_contain_text("converted")
            # "p=0.912 ±0.031", or at the ends "p>0.999 ±<0.001": never a certainty
            caption = page.get_by_text(re.compile(r"p[=<>]\d\.\d{3}( ±<?\d\.\d{3})? · centre focus")).first
            wait_rendered(page, caption)
            probability = float(re.search(r"p[=<>](\d\.\d{3})", caption.inner_text()).group(1))
            assert 0.0 <= probability <= 1.0
            with page.expect_download() as download:
                page.get_by_role("button", name="Download Kaggle submission (CSV)").click()
            submission = Path(download.value.path()).read_text().splitlines()
            assert submission[0] == "id,label" and len(submission) == 1 + 5
            _no_exception(page)
            _shot(page, "predict")

            # review: the queue's first patch gets a verdict, saved at once; the queue moves on and the count shows it
            _goto(page, "Review")
            page.locator("[data-testid=stSidebar]").get_by_role("textbox", name="Reviewer").fill("Dr Browser")
            page.locator("[data-testid=stSidebar]").get_by_role("textbox", name="Reviewer").press("Enter")
            wait_rendered(page, page.get_by_text(re.compile(r"Patch #\d+ of valid")))
            shown = page.get_by_text(re.compile(r"Patch #\d+ of valid")).first.inner_text()
            verdict = page.locator("[data-testid=stForm]").get_by_role("radio", name="Label wrong", exact=True)
            _drawn(page)  # the reviewer's rerun has redrawn the form: a click now is not lost
            verdict.click()
            expect(verdict).to_have_attribute("aria-checked", "true")
            page.get_by_role("textbox", name="Note (optional)").fill("checked in the browser")
            page.get_by_role("button", name="Save review").click()
            wait_rendered(page, page.get_by_text(re.compile(r"1 of [\d,]+ patches of valid reviewed by Dr Browser")))
            assert page.get_by_text(re.compile(r"Patch #\d+ of valid")).first.inner_text() != shown  # the next one
            saved = ReviewStore(workspace / "reviews.sqlite").current_reviews()
            assert list(saved["verdict"]) == ["disagree_label_wrong"] and list(saved["reviewer"]) == ["Dr Browser"]
            assert list(saved["note"]) == ["checked in the browser"]
            _no_exception(page)
            _shot(page, "review")

            # point the app at real data: the Kaggle-layout folder of real patches, registered by its path
            _goto(page, "Overview", "PCam metastasis detection")
            page.get_by_label("Folder path").fill(str(REAL_KAGGLE))
            page.get_by_label("Name (optional)").fill("real-dev")
            page.get_by_role("button", name="Add data source").click()
            expect(page.get_by_role("combobox", name="Active dataset")).to_have_value(re.compile("real-dev"), timeout=60_000)
            _goto(page, "Dataset")
            expect(page.get_by_text("Kaggle folder", exact=False).first).to_be_visible()
            expect(page.get_by_text(re.compile(r"of 160 in train"))).to_be_visible()
            assert page.locator("[data-testid=stMain]").get_by_text("SYNTHETIC").count() == 0
            _no_exception(page)
            assert page_errors == []
        finally:
            browser.close()


def test_a_cross_validation_started_from_the_form_is_watched_fold_by_fold(dashboard):
    """Cross-validation folds on the Train page: the live view names the fold under way, then the cross-validated
    figures and every fold's curve, in Chromium as a user sees them."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(60_000)
        page_errors: list[str] = []
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        try:
            page.goto(dashboard.url)
            page.get_by_role("heading", name="Where to start").wait_for(timeout=180_000)  # the demo data, generated
            _goto(page, "Train")
            for name, value in (("Epochs", "2"), ("Cross-validation folds (0: off)", "2")):
                field = page.get_by_role("spinbutton", name=name, exact=True)
                field.fill(value)
                field.press("Tab")
            page.get_by_role("button", name="Start training").click()
            page.get_by_text(re.compile(r"fold [12] of 2 · ")).first.wait_for(timeout=240_000)  # the live view polls by itself
            _no_exception(page)
            page.get_by_text(re.compile(r"2 folds finished after")).wait_for(timeout=300_000)
            (run,) = list_runs(dashboard.workspace / "runs")
            assert run.state == "finished" and run.best["cross_validated"]
            wait_rendered(page, page.get_by_text(re.compile(r"TTA: out-of-fold ROC-AUC \d\.\d{4}")))
            expect(page.get_by_text("Cross-validated ROC-AUC", exact=True)).to_be_visible()
            expect(page.get_by_text(f"{run.best['roc_auc']:.3f}", exact=True).first).to_be_visible()
            expect(page.get_by_text("Validation ROC-AUC per epoch of every fold")).to_be_visible()
            expect(page.get_by_text(re.compile(r"INFO pcam_core.crossval: finished 2 folds; cross-validated ROC-AUC"))).to_be_visible()
            _no_exception(page)
            _shot(page, "train-cross-validation")
            assert not page_errors, page_errors
        finally:
            browser.close()
