"""Where a new tab's load of a dashboard page spends its time: the browser's JavaScript CPU profile
(Chrome DevTools protocol) by script, beside the server's script run time.

    python benchmarks/profile_dashboard_load.py [--page train] [--workspace benchmarks/out/dashboard-ws]

Uses bench_dashboard.py's workspace. Opens the page once to warm the server and the browser's HTTP
cache, then profiles a second load in a new tab (bench_dashboard.py's "load" column).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from common import DASHBOARD_PAGES, TESTS, dashboard_workspace, page_url

sys.path.insert(0, str(TESTS))
from helpers import CHROMIUM, CHROMIUM_ARGS, Dashboard, wait_rendered  # noqa: E402


def self_time_by_script(profile: dict) -> dict[str, float]:
    """Seconds of JavaScript self time per script URL (file name only) from a DevTools CPU profile."""
    nodes = {n["id"]: n for n in profile["nodes"]}
    per_node: dict[int, float] = defaultdict(float)
    deltas = profile.get("timeDeltas", [])
    for sample, delta in zip(profile.get("samples", []), deltas):
        per_node[sample] += delta / 1e6
    out: dict[str, float] = defaultdict(float)
    for node_id, secs in per_node.items():
        frame = nodes[node_id]["callFrame"]
        url = frame.get("url") or f"({frame.get('functionName') or 'program'})"
        out[url.rsplit("/", 1)[-1][:60]] += secs
    return dict(out)


def start_cpu_profile(context: Any, page: Any) -> Any:
    """Start sampling `page`'s JavaScript (every 200 us); `cdp.send("Profiler.stop")["profile"]` ends it."""
    cdp = context.new_cdp_session(page)
    cdp.send("Profiler.enable")
    cdp.send("Profiler.setSamplingInterval", {"interval": 200})
    cdp.send("Profiler.start")
    return cdp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--page", default="train", choices=list(DASHBOARD_PAGES))
    parser.add_argument("--workspace", type=Path, default=Path(__file__).parent / "out" / "dashboard-ws")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    root = dashboard_workspace(args.workspace.resolve())
    marker = DASHBOARD_PAGES[args.page][1]
    with Dashboard(root, root / "streamlit.log") as app, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.goto(page_url(app.url, args.page))
        wait_rendered(page, marker(page), timeout_ms=120_000)
        page.close()
        page = context.new_page()
        cdp = start_cpu_profile(context, page)
        start = time.perf_counter()
        page.goto(page_url(app.url, args.page))
        dom = time.perf_counter() - start
        wait_rendered(page, marker(page), timeout_ms=120_000)
        total = time.perf_counter() - start
        profile = cdp.send("Profiler.stop")["profile"]
        timing = page.evaluate("JSON.stringify(performance.getEntriesByType('navigation')[0])")
        browser.close()
    by_script = sorted(self_time_by_script(profile).items(), key=lambda kv: -kv[1])
    print(f"/{args.page} in a new tab: {total:.2f} s to the complete render ({dom:.2f} s to the page's load event)")
    print(f"JavaScript CPU self time {sum(s for _, s in by_script):.2f} s, by script:")
    for name, secs in by_script[:12]:
        print(f"  {secs:6.2f} s  {name}")
    print("navigation timing:", timing[:400])


if __name__ == "__main__":
    main()
