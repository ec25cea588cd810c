"""What plotly charts cost a Streamlit page opened in a new tab, apart from anything of ours.

    python benchmarks/bench_plotly_cost.py [--repeats 5]

Serves a one-file Streamlit app (a title, a paragraph and N small plotly charts, drawn the way our
pages draw them: `pcam_app.ui.CHART_CONFIG`, the same `.streamlit/config.toml`) and opens it in new tabs
of headless Chromium for N = 0, 1, 2 and 4, timing each load to the complete render as
bench_dashboard.py does (tests/helpers.PAGE_DRAWN). The difference between N = 0 and N = 1 is what the
first chart of a page costs the browser (Streamlit's front end fetches, compiles and runs its plotly
bundle for every new tab); the steps after it are what each further chart adds. `--profile` adds the
browser's JavaScript CPU profile of one more load with one chart, by script (as
profile_dashboard_load.py prints it for our pages).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import TESTS, load_average, machine

sys.path.insert(0, str(TESTS))
from helpers import CHROMIUM, CHROMIUM_ARGS, Dashboard, wait_rendered  # noqa: E402
from profile_dashboard_load import self_time_by_script, start_cpu_profile  # noqa: E402

REPO = TESTS.parent
sys.path.insert(0, str(REPO))
from pcam_app.ui import CHART_CONFIG  # noqa: E402

APP = f'''
import plotly.graph_objects as go
import streamlit as st

st.title("Probe")
st.write("A page with a number of small plotly charts.")
for i in range(int(st.query_params.get("widgets", 0))):
    st.slider(f"slider {{i}}", 0, 10, 5)
    st.number_input(f"number {{i}}", value=1)
    st.selectbox(f"choice {{i}}", ["a", "b"])
columns = st.columns(2) if st.query_params.get("columns") else [st]
for i in range(int(st.query_params.get("charts", 0))):
    figure = go.Figure(go.Scatter(x=list(range(20)), y=[(i + k) % 7 for k in range(20)], mode="lines+markers"))
    columns[i % len(columns)].plotly_chart(figure.update_layout(height=320, template="plotly_white"), key=f"chart{{i}}", config={CHART_CONFIG!r})
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--charts", type=int, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--widgets", type=int, default=0, help="groups of 3 widgets (slider, number, choice) above the charts")
    parser.add_argument("--columns", action="store_true", help="the charts in two columns")
    parser.add_argument("--profile", action="store_true", help="also profile one load with one chart")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    print(f"{machine()}; {load_average()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "probe.py").write_text(APP)
        shutil.copytree(REPO / ".streamlit", folder / ".streamlit")
        with Dashboard(folder, folder / "streamlit.log", app=folder / "probe.py") as app, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            medians = {}
            for n in args.charts:
                times = []
                for attempt in range(args.repeats + 1):  # the first load warms the server and the browser's cache
                    page = context.new_page()
                    start = time.perf_counter()
                    page.goto(f"{app.url}/?charts={n}&widgets={args.widgets}{'&columns=1' if args.columns else ''}")
                    wait_rendered(page, page.get_by_text("Probe"), timeout_ms=60_000)
                    if attempt:
                        times.append(time.perf_counter() - start)
                    page.close()
                medians[n] = statistics.median(times)
                print(f"{n} chart{'s' if n != 1 else ' '}: {medians[n]:.2f} s to the complete render in a new tab "
                      f"(median of {args.repeats}; {min(times):.2f}-{max(times):.2f})", flush=True)
            if args.profile:
                page = context.new_page()
                cdp = start_cpu_profile(context, page)
                page.goto(f"{app.url}/?charts=1")
                wait_rendered(page, page.get_by_text("Probe"), timeout_ms=60_000)
                by_script = sorted(self_time_by_script(cdp.send("Profiler.stop")["profile"]).items(), key=lambda kv: -kv[1])
                print("one chart, the browser's JavaScript CPU profile by script:")
                for name, secs in by_script[:6]:
                    print(f"  {secs:6.2f} s  {name}")
            browser.close()
    if 0 in medians and 1 in medians:
        print(f"the first chart of a page adds {medians[1] - medians[0]:.2f} s", end="")
        more = sorted(n for n in medians if n > 1)
        if more:
            print(f"; each further chart {(medians[more[-1]] - medians[1]) / (more[-1] - 1):.2f} s", end="")
        print(f"; {load_average()}")


if __name__ == "__main__":
    main()
