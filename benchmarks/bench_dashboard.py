"""Seconds to the first complete render of each dashboard page in headless Chromium.

    python benchmarks/bench_dashboard.py [--workspace benchmarks/out/dashboard-ws] [--patches 262144] [--runs 20]
                                         [--app OTHER_CHECKOUT/streamlit_app.py]

The workspace (common.dashboard_workspace) holds a 262,144-patch official-layout PCam train split and a
32,768-patch valid split (the active dataset; 8.1 GB, written once and reused), the SYNTHETIC demo data
and 20 finished runs: one tiny real run, copied, the newest copy (the one the pages open on) judged on
the 32,768-patch valid split. A fresh `streamlit run streamlit_app.py` serves it. Each page is timed
three ways:

- first: the page's URL opened in a new browser tab, the page's first request since the server was
  restarted (its caches cold: the split's labels, the model, the heat maps; the first page also pays
  for the app's first session; the server imported the libraries as it started, see streamlit_app.py),
  from a browser that has visited the app before (its cache holds the app's JavaScript);
- load: the median of 3 new tabs opening the same URL again (each a new Streamlit session: websocket,
  app shell, page; the browser's cache holds the app's JavaScript, as for any returning user), with
  the slowest of the 3 beside it (single loads move by half a second here);
- switch: the median of 3 clicks on the page in the sidebar, from another page (what a user mostly does).

Beside the table: a threshold move on Runs (a key press on the slider, to the complete render of the
rerun), and a new visitor's first page, Overview opened by a browser with nothing in its cache (every
script of Streamlit's front end fetched from the server), the server warm.

A render is complete when the page shows an element only it has (common.DASHBOARD_PAGES) and the
script has finished with no spinner and no skeleton left (the placeholder Streamlit draws while a new
tab loads an element's code) and every chart and image drawn (tests/helpers.PAGE_DRAWN).
bench_plotly_cost.py measures what plotly's charts alone cost a new tab, drawn our way and st.plotly_chart's.
The goal is every page under 2 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from common import DASHBOARD_PAGES, TESTS, dashboard_workspace, load_average, machine, page_url

sys.path.insert(0, str(TESTS))
from helpers import CHROMIUM, CHROMIUM_ARGS, REPO, Dashboard, wait_rendered  # noqa: E402  (the browser tests' own)

GOAL_S = 2.0
VIEWPORT = {"width": 1400, "height": 1000}


# Sets window.__rerun once the app's script starts running (a rerun the next action causes).
RERUN_WATCH = """() => {
    window.__rerun = false;
    const app = document.querySelector('[data-testid=stApp]');
    new MutationObserver((_, observer) => {
        if (app.dataset.testScriptState === 'running') { window.__rerun = true; observer.disconnect(); }
    }).observe(app, {attributes: true});
}"""


def timed(action, page, marker) -> float:
    start = time.perf_counter()
    action()
    wait_rendered(page, marker(page), timeout_ms=120_000)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path(__file__).parent / "out" / "dashboard-ws")
    parser.add_argument("--patches", type=int, default=262_144)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--app", type=Path, default=REPO / "streamlit_app.py",
                        help="the streamlit_app.py of another checkout, to compare versions on the same workspace")
    args = parser.parse_args()
    app_file = args.app.resolve()
    served = {"app": app_file, "env": {"PYTHONPATH": str(app_file.parent)}}  # that checkout's pcam_app and pcam_core

    from playwright.sync_api import sync_playwright

    root = dashboard_workspace(args.workspace.resolve(), patches=args.patches, runs=args.runs)
    print(f"{machine()}\n{args.patches:,}-patch active split, {args.runs} finished runs, workspace {root}; {load_average()}\n"
          f"serving {app_file}")
    rows = {}
    log = root / "streamlit.log"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=VIEWPORT)  # one browser profile: its HTTP cache holds the app's scripts
            with Dashboard(root, log, **served) as app:  # a server that has served the app before
                page = context.new_page()  # this profile's first visit fills its HTTP cache
                timed(lambda: page.goto(app.url), page, DASHBOARD_PAGES["overview"][1])
                page.close()
                visitor = browser.new_context(viewport=VIEWPORT)  # a new visitor: nothing in the browser's cache
                page = visitor.new_page()
                new_visitor = timed(lambda: page.goto(app.url), page, DASHBOARD_PAGES["overview"][1])
                visitor.close()
                port = app.port
            with Dashboard(root, log, port=port, **served) as app:  # restarted (same address: the browser's cache still applies)
                for path, (_, marker) in DASHBOARD_PAGES.items():  # first: one tab per page, the server's caches cold
                    page = context.new_page()
                    first = timed(lambda: page.goto(page_url(app.url, path)), page, marker)
                    page.close()
                    loads = []
                    for _ in range(args.repeats):
                        page = context.new_page()
                        loads.append(timed(lambda: page.goto(page_url(app.url, path)), page, marker))
                        page.close()
                    rows[path] = {"first": first, "load": statistics.median(loads), "slowest load": max(loads)}
                page = context.new_page()
                page.goto(app.url)
                wait_rendered(page, DASHBOARD_PAGES["overview"][1](page), timeout_ms=120_000)
                names = list(DASHBOARD_PAGES)
                for path, (title, marker) in DASHBOARD_PAGES.items():
                    other = names[(names.index(path) + 1) % len(names)]
                    times = []
                    for _ in range(args.repeats):
                        other_title, other_marker = DASHBOARD_PAGES[other]
                        timed(lambda: page.locator("[data-testid=stSidebarNav]").get_by_text(other_title, exact=True).click(),
                              page, other_marker)
                        times.append(timed(lambda: page.locator("[data-testid=stSidebarNav]").get_by_text(title, exact=True).click(),
                                           page, marker))
                    rows[path]["switch"] = statistics.median(times)
                # a threshold move on Runs: from the key press to the complete render of the rerun it starts
                timed(lambda: page.locator("[data-testid=stSidebarNav]").get_by_text("Runs and metrics", exact=True).click(),
                      page, DASHBOARD_PAGES["runs"][1])
                slider = page.get_by_role("slider").first
                moves = []
                for _ in range(2 * args.repeats + 1):
                    slider.focus()
                    page.evaluate(RERUN_WATCH)
                    moves.append(timed(lambda: (slider.press("ArrowRight"), page.wait_for_function("() => window.__rerun", polling=10)),
                                       page, DASHBOARD_PAGES["runs"][1]))
                threshold_move = statistics.median(moves)
                errors = page.locator("[data-testid=stException], [data-testid=stAlertContentError]").count()
        finally:
            browser.close()

    print(f"\n{'page':<10}{'first (s)':>11}{'load (s)':>10}{'slowest':>9}{'switch (s)':>12}   goal < {GOAL_S:.0f} s (first, load, switch)")
    for path, row in rows.items():
        worst = max(row["first"], row["load"], row["switch"])
        print(f"{path:<10}{row['first']:>11.2f}{row['load']:>10.2f}{row['slowest load']:>9.2f}{row['switch']:>12.2f}"
              f"   {'yes' if worst < GOAL_S else 'NO'}")
    print(f"a threshold move on Runs (median of {len(moves)}): {threshold_move:.2f} s")
    print(f"a new visitor's first page (Overview; the browser's cache empty, the server warm): {new_visitor:.2f} s"
          f"   {'yes' if new_visitor < GOAL_S else 'NO'}")
    print(f"error elements on the last page: {errors}; {load_average()}")


if __name__ == "__main__":
    main()
