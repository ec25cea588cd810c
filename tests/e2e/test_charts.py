"""Charts (pcam_app.components.chart) in a real browser: every trace type the dashboard's figures use is drawn
by the plotly.js bundle the app serves from static/ (scripts/plotly-bundle builds it), and a chart that cannot be drawn says why in its
place (a trace type the bundle lacks; the bundle missing) instead of an empty box; a chart follows
its column's width.

A one-file app in a temporary folder (with the repository's .streamlit/config.toml and, but for the
last test, its static/) draws the figures through `chart`, as the pages do."""

from __future__ import annotations

import pytest

from helpers import CHROMIUM, CHROMIUM_ARGS, REPO, script_dashboard, wait_rendered
from pcam_app.components.chart import PLOTLY_JS, STATIC_DIR

pytestmark = pytest.mark.browser

APP = '''
import plotly.graph_objects as go
import streamlit as st

from pcam_app.components.chart import chart

st.title("Charts")
kinds = st.query_params.get("kinds", "figures").split(",")
if "figures" in kinds:  # the trace types pcam_app.figures draws
    chart(go.Figure(go.Bar(x=["a", "b"], y=[3, 5], error_y=dict(type="data", array=[1, 1]))), key="bar")
    chart(go.Figure(go.Scatter(x=[0, 1, 2], y=[0.5, 0.7, 0.9], mode="lines+markers")), key="scatter")
    chart(go.Figure(go.Heatmap(z=[[0.9, 0.1], [0.2, 0.8]], text=[["TN", "FP"], ["FN", "TP"]], texttemplate="%{text}")),
          key="heatmap")
    chart(go.Figure(go.Histogram(x=[0.1, 0.2, 0.2, 0.9], xbins=dict(start=0, end=1, size=0.1))).add_vline(x=0.5),
          key="histogram")
if "sankey" in kinds:
    chart(go.Figure(go.Sankey(node=dict(label=["a", "b"]), link=dict(source=[0], target=[1], value=[1]))), key="sankey")
st.write("end of the page")
'''


# The script has finished, every chart's element has been made by its code (the text below the charts can show
# before their components' code has run: a CI run once counted no charts at all) and none is still loading.
_SETTLED = """() => {
    const app = document.querySelector('[data-testid=stApp]');
    if (!app || app.dataset.testScriptState !== 'notRunning') return false;
    const mounts = [...document.querySelectorAll('[data-testid=stMain] [data-testid^=stBidiComponent]')];
    if (mounts.length === 0 || mounts.some(m => !m.querySelector('.pcam-chart'))) return false;
    return [...document.querySelectorAll('.pcam-chart')].every(c => c.dataset.state === 'drawn' || c.dataset.state === 'error');
}"""


def _open(url: str, check):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
            page.get_by_text("end of the page").wait_for(timeout=90_000)
            page.wait_for_function(_SETTLED, timeout=60_000, polling=50)
            result = check(page)
            page.set_viewport_size({"width": 700, "height": 900})  # every chart redrawn narrower
            page.evaluate("() => document.querySelectorAll('.pcam-chart').forEach(c => c.remove())")
            # gone, as when the page is left: plotly refuses to resize them, quietly. Two animation frames: the
            # resize observers have run by then
            page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
            assert errors == []  # uncaught JavaScript errors
            return result
        finally:
            browser.close()


def _states(page) -> list[tuple[str, str]]:
    return page.evaluate("() => [...document.querySelectorAll('.pcam-chart')].map(c => [c.dataset.state, c.innerText])")


def test_every_trace_type_of_the_figures_is_drawn(tmp_path):
    with script_dashboard(tmp_path / "app", APP) as app:
        def check(page):
            wait_rendered(page, page.get_by_text("Charts"))  # tests/helpers.PAGE_DRAWN: every chart drawn
            return _states(page), page.locator(".pcam-chart .main-svg").count(), page.get_by_text("TP").count()

        states, svgs, labels = _open(f"{app.url}/?kinds=figures", check)
    assert [state for state, _ in states] == ["drawn"] * 4
    assert svgs >= 4 and labels == 1  # the heat map's cell text is drawn


def test_a_chart_follows_its_column_width(tmp_path):
    """As a column narrows (the window, or the sidebar opening), the chart is drawn again to its width."""
    with script_dashboard(tmp_path / "app", APP) as app:
        def check(page):
            wait_rendered(page, page.get_by_text("Charts"))
            svg_width = "() => Math.round(document.querySelector('.pcam-chart .main-svg').getBoundingClientRect().width)"
            before = page.evaluate(svg_width)
            page.evaluate("() => { document.querySelector('.pcam-chart').parentElement.style.width = '400px'; }")
            page.wait_for_function(f"() => ({svg_width})() === 400", timeout=10_000)
            return before, page.evaluate(svg_width)

        before, after = _open(f"{app.url}/?kinds=figures", check)
    assert before > 600 and after == 400


def test_a_trace_type_the_bundle_lacks_is_named_in_place_of_the_chart(tmp_path):
    with script_dashboard(tmp_path / "app", APP) as app:
        states = _open(f"{app.url}/?kinds=figures,sankey", _states)
    assert [state for state, _ in states] == ["drawn"] * 4 + ["error"]
    assert "could not be drawn" in states[-1][1] and "sankey" in states[-1][1]


def test_a_missing_chart_library_is_named_in_place_of_every_chart(tmp_path):
    with script_dashboard(tmp_path / "app", APP, with_static=False) as app:
        states = _open(f"{app.url}/?kinds=figures", _states)
    assert len(states) == 4 and all(state == "error" for state, _ in states)
    assert all("could not load the chart library" in text and PLOTLY_JS in text for _, text in states)


def test_the_served_bundle_is_the_plotly_js_the_python_package_writes_figures_for():
    """Upgrading plotly (requirements.txt) without the bundle in static/ would draw its figures with an older
    plotly.js: the versions must match."""
    import plotly.offline

    header = (STATIC_DIR / PLOTLY_JS).read_text(encoding="utf-8")[:200]
    assert header.startswith("/**\n* plotly.js (pcam: scatter, bar, heatmap, histogram - minified) v")
    assert f" v{plotly.offline.get_plotlyjs_version()}\n" in header
    assert "enableStaticServing = true" in (REPO / ".streamlit" / "config.toml").read_text()
