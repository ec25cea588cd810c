"""What plotly charts cost a Streamlit page opened in a new tab: Streamlit's st.plotly_chart against the
dashboard's own chart (pcam_app.components.chart: a plotly.js bundle of its trace types, served from static/).

    python benchmarks/bench_plotly_cost.py [--repeats 5] [--charts 0 1 4]

Serves a one-file Streamlit app (a title, a paragraph and N small plotly charts, the same
`.streamlit/config.toml` and static/ as the dashboard) and opens it in new tabs of headless Chromium for
each N and each way of drawing, timing each load to the complete render: the script finished, no skeleton
left, N plotly charts drawn. The difference between N = 0 and N = 1 is what the first chart of a page
costs the browser (Streamlit's front end fetches, compiles and runs its 4.7 MB bundle of all of plotly.js
for every new tab; ours a 1.3 MB bundle of the four trace types our figures use); the steps after it are what each further
chart adds. `--profile` adds the browser's JavaScript CPU profile of one more load with one chart drawn
each way, by script (as profile_dashboard_load.py prints it for our pages).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import TESTS, load_average, machine

sys.path.insert(0, str(TESTS))
from helpers import CHROMIUM, CHROMIUM_ARGS, script_dashboard  # noqa: E402
from profile_dashboard_load import self_time_by_script, start_cpu_profile  # noqa: E402


APP = '''
import plotly.graph_objects as go
import streamlit as st

from pcam_app.components.chart import CHART_CONFIG, chart

st.title("Probe")
st.write("A page with a number of small plotly charts.")
for i in range(int(st.query_params.get("widgets", 0))):
    st.slider(f"slider {i}", 0, 10, 5)
    st.number_input(f"number {i}", value=1)
    st.selectbox(f"choice {i}", ["a", "b"])
columns = st.columns(2) if st.query_params.get("columns") else [st]
for i in range(int(st.query_params.get("charts", 0))):
    figure = go.Figure(go.Scatter(x=list(range(20)), y=[(i + k) % 7 for k in range(20)], mode="lines+markers"))
    figure.update_layout(height=320, template="plotly_white")
    where = columns[i % len(columns)]
    if st.query_params.get("way") == "streamlit":
        where.plotly_chart(figure, key=f"chart{i}", config=CHART_CONFIG)
    else:
        chart(figure, key=f"chart{i}", where=where)
'''
WAYS = {"streamlit": "st.plotly_chart", "ours": "pcam_app.components.chart"}
# the script has finished, no skeleton stands in for an element still loading, and N plotly plots are drawn
DRAWN = """n => {
    const app = document.querySelector('[data-testid=stApp]');
    if (!app || app.dataset.testScriptState !== 'notRunning') return false;
    if (document.querySelector('[data-testid=stMain] [data-testid=stSkeleton]')) return false;
    const plots = [...document.querySelectorAll('[data-testid=stMain] .js-plotly-plot')];
    return plots.length === n && plots.every(p => p.querySelector('.main-svg'));
}"""


def load(context, url: str, n: int, profile: bool = False) -> tuple[float, dict | None]:
    """Seconds from opening `url` in a new tab to N charts drawn (and the JavaScript CPU profile)."""
    page = context.new_page()
    cdp = start_cpu_profile(context, page) if profile else None
    start = time.perf_counter()
    page.goto(url)
    page.get_by_text("Probe").first.wait_for(timeout=60_000)
    page.wait_for_function(DRAWN, arg=n, timeout=60_000, polling=50)
    seconds = time.perf_counter() - start
    result = cdp.send("Profiler.stop")["profile"] if cdp else None
    page.close()
    return seconds, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--charts", type=int, nargs="+", default=[0, 1, 4])
    parser.add_argument("--widgets", type=int, default=0, help="groups of 3 widgets (slider, number, choice) above the charts")
    parser.add_argument("--columns", action="store_true", help="the charts in two columns")
    parser.add_argument("--profile", action="store_true", help="also profile one load with one chart each way")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    print(f"{machine()}; {load_average()}")
    medians: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp, script_dashboard(Path(tmp) / "probe", APP) as app, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        extra = f"&widgets={args.widgets}{'&columns=1' if args.columns else ''}"
        configs = [(way, n) for n in args.charts for way in (WAYS if n else ["ours"])]  # no chart: nothing differs
        times: dict[tuple[str, int], list[float]] = {config: [] for config in configs}
        for attempt in range(args.repeats + 1):  # interleaved, so that the machine's drift hits every config alike
            for way, n in configs:
                seconds = load(context, f"{app.url}/?charts={n}&way={way}{extra}", n)[0]
                if attempt:  # the first round warms the server and the browser's cache
                    times[way, n].append(seconds)
        for (way, n), values in times.items():
            medians[way, n] = statistics.median(values)
            print(f"{n} chart{'s' if n != 1 else ' '} {WAYS[way] if n else '':<18}: {medians[way, n]:.2f} s to the "
                  f"complete render in a new tab (median of {args.repeats}; {min(values):.2f}-{max(values):.2f})")
        if args.profile:
            for way, name in WAYS.items():
                _, profile = load(context, f"{app.url}/?charts=1&way={way}", 1, profile=True)
                by_script = sorted(self_time_by_script(profile).items(), key=lambda kv: -kv[1])
                print(f"one chart with {name}, the browser's JavaScript CPU profile by script:")
                for script, secs in by_script[:6]:
                    print(f"  {secs:6.2f} s  {script}")
        browser.close()
    bare = medians.get(("ours", 0))
    for way, name in WAYS.items():
        if bare is not None and (way, 1) in medians:
            print(f"{name}: the first chart of a page adds {medians[way, 1] - bare:.2f} s", end="")
            more = sorted(n for w, n in medians if w == way and n > 1)
            if more:
                print(f"; each further chart {(medians[way, more[-1]] - medians[way, 1]) / (more[-1] - 1):.2f} s", end="")
            print()
    for n in sorted({n for _, n in medians if n}):
        if ("streamlit", n) in medians and ("ours", n) in medians:
            print(f"{n} chart{'s' if n != 1 else ''}: ours {medians['ours', n]:.2f} s, st.plotly_chart {medians['streamlit', n]:.2f} s "
                  f"(ours {medians['streamlit', n] - medians['ours', n]:.2f} s sooner)")
    print(load_average())


if __name__ == "__main__":
    main()
