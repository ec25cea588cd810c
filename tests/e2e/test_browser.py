"""The dashboard end to end in a real browser, as a first-time user meets it.

`streamlit run streamlit_app.py` starts on a free port with an empty temporary workspace; headless
Chromium (Debian's, driven by playwright) watches the synthetic demo data being generated, browses it,
launches a short training run from the Train page and sees it finish, opens its metrics and confusion
matrix, uploads a patch on Predict and reads its probability. A screenshot of every page goes to
assets/screenshots/ (the README shows them).
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import REAL_DEV, REPO, tif_bytes
from pcam_core.data import PCamH5, patch_id
from pcam_core.runs import RunDir, list_runs, stop

CHROMIUM = "/usr/bin/chromium"
SHOTS = REPO / "assets" / "screenshots"
VIEWPORT = {"width": 1400, "height": 1000}
pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def app_url(tmp_path):
    """The app on a free port with a fresh workspace (a small demo set); stopped afterwards with its runs."""
    port = _free_port()
    workspace = tmp_path / "workspace"
    env = {**os.environ, "PCAM_WORKSPACE": str(workspace), "PCAM_DEMO_PATCHES": "768"}
    log = open(tmp_path / "streamlit.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port), "--server.headless", "true"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "streamlit.log").read_text()
            assert time.time() < deadline, "streamlit did not start within 60 s"
            time.sleep(0.5)
        yield url, workspace
    finally:
        for run in list_runs(workspace / "runs"):
            stop(RunDir(run.path), timeout=30)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _shot(page, name: str) -> None:
    """A screenshot of the whole page: the window is made as tall as the content, then restored."""
    page.wait_for_timeout(800)  # let charts finish drawing
    height = 0
    for _ in range(3):  # content below the fold may only grow once the window is taller
        grown = page.evaluate("() => document.querySelector('[data-testid=stMain]').scrollHeight")
        if grown <= height:
            break
        height = grown
        page.set_viewport_size({"width": VIEWPORT["width"], "height": int(min(4000, max(VIEWPORT["height"], height)))})
        page.wait_for_timeout(800)
    SHOTS.mkdir(parents=True, exist_ok=True)
    image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    # 256 colours with dithering: a third of the size, no visible loss on these pages (the repository keeps them)
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(
        SHOTS / f"{name}.png", optimize=True)
    page.set_viewport_size(VIEWPORT)


def _no_exception(page) -> None:
    assert page.locator("[data-testid=stException]").count() == 0, page.locator("[data-testid=stException]").first.inner_text()


def _goto(page, title: str, heading: str | None = None) -> None:
    """Open a page from the sidebar navigation and wait for its title."""
    page.locator("[data-testid=stSidebarNav]").get_by_text(title, exact=True).click()
    page.get_by_role("heading", name=heading or title).wait_for(timeout=60_000)


def test_first_start_train_judge_predict(app_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).exists(), f"the browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)"
    url, workspace = app_url
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(60_000)
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

            # train a short run from the form and watch it finish
            _goto(page, "Train")
            epochs = page.get_by_role("spinbutton", name="Epochs", exact=True)
            epochs.fill("2")
            epochs.press("Tab")
            page.get_by_role("button", name="Start training").click()
            page.get_by_text(re.compile(r"epoch 2 of 2 · step")).wait_for(timeout=180_000)  # the live view polls by itself
            _no_exception(page)
            _shot(page, "train-live")
            page.get_by_text(re.compile(r"step \d+ of \d+ · finished after")).wait_for(timeout=240_000)
            runs = list_runs(workspace / "runs")
            assert len(runs) == 1 and runs[0].state == "finished" and runs[0].epochs_done == 2
            page.wait_for_timeout(1500)
            _shot(page, "train")

            # judge it: metrics, curves, confusion matrix; move the threshold with the keyboard
            _goto(page, "Runs and metrics")
            page.get_by_text("Confusion matrix at threshold 0.50").wait_for()
            expect(page.get_by_text("true positive").first).to_be_visible()
            slider = page.get_by_role("slider").first
            slider.focus()
            for _ in range(20):
                slider.press("ArrowRight")
            page.get_by_text("Confusion matrix at threshold 0.60").wait_for()
            _no_exception(page)
            _shot(page, "runs")

            # predict: upload Kaggle-style patches (two tumour, two normal), a grayscale one (converted, with a
            # notice) and a 64x64 crop (refused, with the reason); read a probability
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
            caption = page.get_by_text(re.compile(r"p=\d\.\d{3}")).first
            probability = float(re.search(r"p=(\d\.\d{3})", caption.inner_text()).group(1))
            assert 0.0 <= probability <= 1.0
            expect(page.get_by_role("button", name="Download Kaggle submission (CSV)")).to_be_visible()
            _no_exception(page)
            _shot(page, "predict")

            # point the app at real data: the Kaggle-layout folder of real patches, registered by its path
            _goto(page, "Overview", "PCam metastasis detection")
            page.get_by_label("Folder path").fill(str(REAL_DEV))
            page.get_by_label("Name (optional)").fill("real-dev")
            page.get_by_role("button", name="Add data source").click()
            expect(page.get_by_role("combobox", name="Active dataset")).to_have_value(re.compile("real-dev"), timeout=60_000)
            _goto(page, "Dataset")
            expect(page.get_by_text("Kaggle folder", exact=False).first).to_be_visible()
            expect(page.get_by_text(re.compile(r"of 4,000 in train"))).to_be_visible()
            assert page.locator("[data-testid=stMain]").get_by_text("SYNTHETIC").count() == 0
            _no_exception(page)
        finally:
            browser.close()
