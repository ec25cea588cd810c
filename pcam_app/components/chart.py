"""A plotly chart drawn by the dashboard's own plotly.js bundle (chart.js)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

# Plotly's mode bar (zoom, pan, PNG buttons) is built for every chart when a page renders: on the
# Runs page it was more than half the browser's plotly time (benchmarks/profile_dashboard_load.py).
# Without it charts still zoom by dragging and reset on a double click.
CHART_CONFIG = {"displayModeBar": False}
# Charts are drawn by a plotly.js bundle of just the trace types `figures` uses (scatter, bar, heatmap,
# histogram; built by scripts/plotly-bundle), served by Streamlit's static file serving from static/
# (`server.enableStaticServing`), instead of st.plotly_chart: that loads Streamlit's 4.7 MB bundle of all
# of plotly.js into every new tab, which compiling and running made the largest single cost of opening a
# page with a chart (benchmarks/bench_plotly_cost.py). Its plotly.js version is the one the Python
# package writes figures for (tests/e2e/test_charts.py checks).
PLOTLY_JS = "plotly-pcam.min.js"
STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
_chart_component = st.components.v2.component(
    "pcam_chart", js=(Path(__file__).parent / "chart.js").read_text(encoding="utf-8"), isolate_styles=False)


def chart(figure: Any, *, key: str, where: Any = st) -> None:
    """Draw a plotly figure the way every page does: the container's width, the figure's height."""
    with where.container():
        _chart_component(key=key, data={"figure": figure.to_json(), "config": CHART_CONFIG,
                                        "src": f"app/static/{PLOTLY_JS}"})
