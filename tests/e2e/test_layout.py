"""Layout in a real browser at the width the dashboard is used at (1400 px, wide layout, the sidebar
open): the Runs page's table of runs shows every cell whole, without a hidden horizontal scroll."""

from __future__ import annotations

import pytest

from helpers import CHROMIUM, CHROMIUM_ARGS, script_dashboard, wait_rendered

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

# Per table: how far its content reaches past its frame, and the cells whose text is cut.
MEASURE = """() => [...document.querySelectorAll('.pcam-table')].map(frame => ({
    overflow: frame.scrollWidth - frame.clientWidth,
    cut: [...frame.querySelectorAll('th, td')]
        .filter(cell => cell.scrollWidth > cell.clientWidth + 1
                || cell.getBoundingClientRect().right > frame.getBoundingClientRect().right + 1)
        .map(cell => cell.textContent),
}))"""


def test_the_runs_table_fits_at_1400_px(tmp_path):
    from playwright.sync_api import sync_playwright

    with script_dashboard(tmp_path / "app", APP) as app, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app.url)
            wait_rendered(page, page.get_by_text("end of the page"))
            [table] = page.evaluate(MEASURE)
            assert table == {"overflow": 0, "cut": []}, table
        finally:
            browser.close()
