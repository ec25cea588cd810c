"""Layout in a real browser at the width the dashboard is used at (1400 x 900, wide layout, the sidebar
open): the Runs page's table of runs shows every cell whole, without a hidden horizontal scroll and without
wrapping inside a word; the Train page's Model select, Explain's Scale control and Predict's call column are
in sight, whole. Screenshots go to tests/artifacts/layout/ (ignored by git) to be looked at."""

from __future__ import annotations

import pytest

from pathlib import Path

from helpers import CHROMIUM, CHROMIUM_ARGS, REPO, Dashboard, script_dashboard, tif_bytes, wait_rendered

VIEWPORT = {"width": 1400, "height": 900}
SHOTS = REPO / "tests" / "artifacts" / "layout"

pytestmark = [pytest.mark.slow, pytest.mark.browser]

# The Runs page's table (`monitor.runs_table`, every column) for runs on data registered under a long path.
APP = '''
import pandas as pd
import streamlit as st

from pcam_app.components.table import sortable_table
from pcam_core.workspace.monitor import FIGURE_COLUMNS

st.set_page_config(layout="wide")
st.sidebar.selectbox("Selected run", ["20261129-101530-resnet18-pretrained"])
st.title("Runs and metrics")
frame = pd.DataFrame({
    "run": ["20261129-101530-resnet18-pretrained", "20261129-094512-compact-cnn"],
    "state": ["✓ finished", "■ stopped"],
    "model": ["resnet18_pretrained", "compact_cnn"],
    "data": ["/home/pathologist/projects/metastasis/workspace/data/pcam-official-h5", "kaggle-histopathologic-cancer"],
    "synthetic data": [False, True],
    "epochs": ["12/12", "3/20"],
    "best epoch": pd.array([11, 3], dtype="Int64"),
    **{name: [0.90123, 0.85] for name in FIGURE_COLUMNS},
    "created": pd.to_datetime([1_764_411_330, 1_764_409_512], unit="s"),
})
sortable_table(frame, {name: "{:.3f}" for name in FIGURE_COLUMNS}, key="runs_table", caption="All runs")
st.write("end of the page")
'''

# Per table: how far its content reaches past its frame, the cells whose text is cut, and the cells that
# wrap inside a word (a line that starts after a letter or digit, not after a space, "-", "/" or "_").
MEASURE = """() => [...document.querySelectorAll('.pcam-table')].map(frame => ({
    overflow: frame.scrollWidth - frame.clientWidth,
    cut: [...frame.querySelectorAll('th, td')]
        .filter(cell => cell.scrollWidth > cell.clientWidth + 1
                || cell.getBoundingClientRect().right > frame.getBoundingClientRect().right + 1)
        .map(cell => cell.textContent),
    midword: [...frame.querySelectorAll('td')].filter(cell => {
        let before = ' ', top = null;
        const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
            for (let i = 0; i < node.length; i++) {
                const range = document.createRange();
                range.setStart(node, i);
                range.setEnd(node, i + 1);
                const box = range.getClientRects()[0];
                if (box && !/\\s/.test(node.data[i])) {
                    if (top !== null && box.top > top + 2 && !/[\\s\\-\\/_]/.test(before)) return true;
                    top = box.top;
                }
                before = node.data[i];
            }
        }
        return false;
    }).map(cell => cell.textContent),
}))"""

# Text the page cuts: an element whose text runs past its own box (an ellipsis, a clipped button), or a
# button of a segmented control that reaches past its column.
CUT = """() => {
    const main = document.querySelector('[data-testid=stMain]');
    const clipped = [...main.querySelectorAll('*')].filter(e => {
        if (!e.textContent.trim() || [...e.children].some(c => c.textContent.trim())) return false;  // text leaves only
        const style = getComputedStyle(e);
        const clips = style.overflowX !== 'visible' || style.textOverflow === 'ellipsis';
        return clips && e.scrollWidth > e.clientWidth + 1 && !e.closest('.pcam-table, [data-testid=stDataFrame]');
    }).map(e => e.textContent.trim());
    const inputs = [...main.querySelectorAll('input')].filter(i => i.value && i.scrollWidth > i.clientWidth + 1)
        .map(i => i.value);  // a select's value is drawn in an input
    const outside = [...main.querySelectorAll('[data-testid=stButtonGroup] button')].filter(b => {
        const column = b.closest('[data-testid=stColumn]') || main;
        return b.getBoundingClientRect().right > column.getBoundingClientRect().right + 1;
    }).map(b => b.textContent.trim());
    return {clipped: [...clipped, ...inputs], outside};
}"""


def test_the_runs_table_fits_at_1400_px(tmp_path):
    from playwright.sync_api import sync_playwright

    with script_dashboard(tmp_path / "app", APP) as app, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(app.url)
            wait_rendered(page, page.get_by_text("end of the page"))
            [table] = page.evaluate(MEASURE)
            assert table == {"overflow": 0, "cut": [], "midword": []}, table
        finally:
            browser.close()


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def _finished_run(workspace, run_id: str, data: Path) -> None:
    """A finished run on `data` without training one: the bundled model's weights as its best checkpoint, and
    validation predictions of the data's valid split as the trainer writes them (probabilities drawn at random)."""
    import numpy as np
    import pandas as pd
    import torch

    from helpers import bundled_single_state
    from pcam_core.config import ExperimentConfig
    from pcam_core.data import PCamH5, patch_id
    from pcam_core.fileio import atomic_write_json
    from pcam_core.runs import create_run

    state = bundled_single_state()
    config = ExperimentConfig.from_dict(state["config"]).replace(data={"path": str(data)})
    state["config"] = config.to_dict()
    run = create_run(workspace.runs_root, config, run_id=run_id)
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(state, run.best_checkpoint)
    valid = PCamH5(data, "valid")
    pixels = valid.read_pixels(np.arange(len(valid)))
    pd.DataFrame({"id": [patch_id(p) for p in pixels], "label": valid.labels,
                  "probability": np.random.default_rng(0).random(len(valid)), "index": np.arange(len(valid))}
                 ).to_csv(run.valid_predictions_path, index=False)
    status = run.raw_status()
    status.update(state="finished", epoch=1, epochs=1)
    atomic_write_json(run.status_path, status)


def test_the_pages_controls_are_whole_at_1400_px(tmp_path, demo_root):
    """The dashboard itself, a finished run selected: Train's Model select, Explain's Scale control and the
    Runs table are whole at 1400 x 900; Predict shows the call of every upload beside its file."""
    from playwright.sync_api import expect, sync_playwright

    from pcam_core.data import PCamH5
    from pcam_core.workspace import Workspace

    workspace = Workspace(tmp_path / "workspace")
    workspace.add_source(demo_root, "demo")
    run_id = "20261129-101530-pcamnet-a-long-descriptive-name"
    _finished_run(workspace, run_id, demo_root)
    uploads = []
    for k, pixels in enumerate(PCamH5(demo_root, "test").read_pixels(list(range(3)))):
        uploads.append(tmp_path / f"an-uploaded-patch-with-a-long-file-name-{k}.tif")
        uploads[-1].write_bytes(tif_bytes(pixels))
    with Dashboard(workspace.root, tmp_path / "streamlit.log") as app, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(90_000)
            page.goto(f"{app.url}/train?run={run_id}")
            wait_rendered(page, page.get_by_role("heading", name="New run"))
            _shot(page, "train")
            assert page.evaluate(CUT) == {"clipped": [], "outside": []}
            expect(page.get_by_role("combobox", name="Model")).to_have_value("auto")

            page.goto(f"{app.url}/runs?run={run_id}")
            wait_rendered(page, page.get_by_text("Confusion matrix at threshold"))
            _shot(page, "runs")
            for table in page.evaluate(MEASURE):
                assert table == {"overflow": 0, "cut": [], "midword": []}, table

            page.goto(f"{app.url}/explain?run={run_id}")
            wait_rendered(page, page.get_by_text("Centre focus").first)
            _shot(page, "explain")
            assert page.evaluate(CUT) == {"clipped": [], "outside": []}
            scale = page.locator("[data-testid=stButtonGroup]").filter(has_text="Per patch")
            expect(scale).to_contain_text("Fixed")  # both buttons, whole (CUT above)

            page.goto(f"{app.url}/predict?run={run_id}")
            page.locator("[data-testid=stFileUploaderDropzoneInput]").set_input_files([str(f) for f in uploads])
            wait_rendered(page, page.get_by_text("3 patches scored"))
            _shot(page, "predict")
            # the grid is a canvas: its column order (the call second) is checked in tests/test_app.py; here, that
            # it fits the page without a scroll bar of its own, so the call column is in sight
            grid = page.locator("[data-testid=stDataFrame]").first
            main = page.locator("[data-testid=stMainBlockContainer]")
            assert grid.bounding_box()["x"] + grid.bounding_box()["width"] <= main.bounding_box()["x"] + main.bounding_box()["width"] + 1
        finally:
            browser.close()
