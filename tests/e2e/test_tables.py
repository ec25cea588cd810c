"""Tables (pcam_app.components.table.sortable_table) in a real browser: the cells as formatted, a click on a header
sorts by that column (numbers largest first, a second click the other way, text alphabetically), empty
cells last either way, and the page counts as drawn (tests/helpers.PAGE_DRAWN)."""

from __future__ import annotations

import pytest

from helpers import CHROMIUM, CHROMIUM_ARGS, script_dashboard, wait_rendered

pytestmark = pytest.mark.browser

APP = '''
import numpy as np
import pandas as pd
import streamlit as st

from pcam_app.components.table import sortable_table

st.title("Tables")
frame = pd.DataFrame({
    "run": ["beta", "alpha", "gamma", "delta"],
    "ROC-AUC": [0.91, np.nan, 0.957, 0.5],
    "synthetic": [True, False, True, False],
    "created": pd.to_datetime([3, 1, 4, 2], unit="D"),
})
sortable_table(frame, {"ROC-AUC": "{:.3f}"}, key="runs", caption="Some runs")
st.write("end of the page")
'''


def _rows(page) -> list[list[str]]:
    return page.evaluate("() => [...document.querySelectorAll('.pcam-table tbody tr')]"
                         ".map(r => [...r.querySelectorAll('td')].map(td => td.textContent))")


def test_a_table_sorts_by_the_column_clicked(tmp_path):
    from playwright.sync_api import sync_playwright

    with script_dashboard(tmp_path / "app", APP) as app, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(app.url)
            wait_rendered(page, page.get_by_text("end of the page"))
            assert _rows(page) == [  # as given, formatted: a dash for the empty cell
                ["beta", "0.910", "yes", "1970-01-04 00:00"],
                ["alpha", "–", "no", "1970-01-02 00:00"],
                ["gamma", "0.957", "yes", "1970-01-05 00:00"],
                ["delta", "0.500", "no", "1970-01-03 00:00"],
            ]
            header = page.get_by_role("button", name="Sort by ROC-AUC")
            header.click()
            assert [r[0] for r in _rows(page)] == ["gamma", "beta", "delta", "alpha"]  # largest first, empty last
            assert page.locator("th[aria-sort=descending]").inner_text().startswith("ROC-AUC")
            header.click()
            assert [r[0] for r in _rows(page)] == ["delta", "beta", "gamma", "alpha"]  # then smallest first, empty last
            page.get_by_role("button", name="Sort by run").click()
            assert [r[0] for r in _rows(page)] == ["alpha", "beta", "delta", "gamma"]
            page.get_by_role("button", name="Sort by created").click()
            assert [r[0] for r in _rows(page)] == ["gamma", "beta", "delta", "alpha"]  # newest first
            assert page.get_by_role("table", name="Some runs").count() == 1 and errors == []
        finally:
            browser.close()
