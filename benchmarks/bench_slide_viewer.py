"""The slide viewer on a large slide: a zoom step's tiles over HTTP from the running dashboard (cold and warm
tile cache), and the Slides page opened in a new browser tab.

    python benchmarks/bench_slide_viewer.py [--size 50000x40000] [--stride 96] [--out benchmarks/out/slide-viewer]

A SYNTHETIC demo slide of --size (default 50,000 x 40,000 px at 0.243 µm/px) is written into --out, added to
that workspace's slide library and analysed there with the bundled model once (reused on later runs), and `streamlit run
streamlit_app.py` serves it. A zoom step is what OpenSeadragon asks for when the view is zoomed once: every
tile of a 1400 x 1000-px viewport at the next Deep Zoom level, fetched 6 at a time (a browser's connections
per host). The steps walk from the level where the slide fits the viewport down to full resolution, centred
on random points of tissue; each is fetched cold (not in the tile cache: decoded from the slide and encoded
as JPEG) and then again warm (the same tiles, from the cache). The page load runs from a new tab's navigation
to the page drawn completely (tests/helpers.PAGE_DRAWN) with the viewer open and its first tiles drawn, the
first tab left out (Streamlit loads its frontend code once per server). Targets (issue 15): page < 2 s,
zoom step < 0.5 s at the median.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from common import TESTS, load_average, machine

sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parent))
from helpers import CHROMIUM, CHROMIUM_ARGS, PAGE_DRAWN, Dashboard, analysed_demo_slide  # noqa: E402

from pcam_core.slides.tiles import TILE_SIZE, dzi_level_sizes  # noqa: E402

VIEWPORT = (1400, 1000)
CONNECTIONS = 6


def viewport_tiles(level_size: tuple[int, int], centre: tuple[float, float]) -> list[tuple[int, int]]:
    """The tiles (col, row) a VIEWPORT-sized view centred on `centre` (fractions of the slide) covers at a level."""
    w, h = level_size
    cx, cy = centre[0] * w, centre[1] * h
    x0, x1 = max(0, cx - VIEWPORT[0] / 2), min(w, cx + VIEWPORT[0] / 2)
    y0, y1 = max(0, cy - VIEWPORT[1] / 2), min(h, cy + VIEWPORT[1] / 2)
    cols = range(int(x0 // TILE_SIZE), min(math.ceil(w / TILE_SIZE), int(x1 // TILE_SIZE) + 1))
    rows = range(int(y0 // TILE_SIZE), min(math.ceil(h / TILE_SIZE), int(y1 // TILE_SIZE) + 1))
    return [(c, r) for r in rows for c in cols]


def fetch_step(client: httpx.Client, pool: ThreadPoolExecutor, sid: str, level: int, tiles: list[tuple[int, int]]) -> float:
    started = time.perf_counter()
    responses = list(pool.map(lambda t: client.get(f"/slides-api/{sid}_files/{level}/{t[0]}_{t[1]}.jpeg"), tiles))
    elapsed = time.perf_counter() - started
    bad = [r.status_code for r in responses if r.status_code != 200]
    if bad:
        raise RuntimeError(f"tile requests failed: {bad[:5]}")
    return elapsed


def page_loads(url: str, sid: str, tabs: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": VIEWPORT[0], "height": VIEWPORT[1]})
        for tab in range(tabs + 1):
            page = context.new_page()
            started = time.perf_counter()
            page.goto(f"{url}/slides?slide={sid}")
            page.wait_for_function(PAGE_DRAWN, timeout=120_000, polling=20)
            page.wait_for_function("() => { const v = document.querySelector('.pcam-slide-view');"
                                   " return v && v.dataset.state === 'open' && Number(v.dataset.tiles) > 0; }",
                                   timeout=120_000, polling=20)
            if tab:  # the first tab loads Streamlit's frontend code into the server's and browser's caches
                times.append(time.perf_counter() - started)
            page.close()
        browser.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="50000x40000")
    parser.add_argument("--stride", type=int, default=32, help="the analysis' stride (the Slides page shows stride 32)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/slide-viewer"))
    parser.add_argument("--steps", type=int, default=5, help="zoom walks (each from the whole slide to full resolution)")
    parser.add_argument("--tabs", type=int, default=5)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    root = args.out.resolve()
    done = root / "bench.json"  # the slide id, once the slide is made and analysed
    if not done.exists():
        started = time.perf_counter()
        root.mkdir(parents=True, exist_ok=True)
        (root / "sources.json").write_text(json.dumps({"version": 1, "sources": []}))
        _, _, sid = analysed_demo_slide(root, width=width, height=height, stride=args.stride, name="bench")
        done.write_text(json.dumps({"slide_id": sid}))
        print(f"demo slide {width:,} x {height:,} written and analysed (stride {args.stride}) in {time.perf_counter() - started:.0f} s")
    sid = json.loads(done.read_text())["slide_id"]
    print(f"machine: {machine()}; load average {load_average()}")
    levels = dzi_level_sizes(width, height)
    fits = next(k for k, (w, h) in enumerate(levels) if w > VIEWPORT[0] or h > VIEWPORT[1])
    rng = random.Random(0)
    cold, warm, counts = [], [], []
    with Dashboard(root, root / "streamlit.log") as app, httpx.Client(base_url=app.url, timeout=120,
                                                                      limits=httpx.Limits(max_connections=CONNECTIONS)) as client, \
            ThreadPoolExecutor(CONNECTIONS) as pool:
        client.get(f"/slides-api/{sid}.dzi").raise_for_status()
        for _ in range(args.steps):
            centre = (rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7))  # the demo slide's tissue lies around its middle
            for level in range(fits, len(levels)):
                tiles = viewport_tiles(levels[level], centre)
                cold.append(fetch_step(client, pool, sid, level, tiles))
                warm.append(fetch_step(client, pool, sid, level, tiles))
                counts.append(len(tiles))
        loads = page_loads(app.url, sid, args.tabs)
    print(f"zoom step (a {VIEWPORT[0]}x{VIEWPORT[1]} viewport's tiles at one level, {CONNECTIONS} at a time; "
          f"{len(cold)} steps of {min(counts)}-{max(counts)} tiles, levels {fits}-{len(levels) - 1}):")
    print(f"  cold cache: median {statistics.median(cold):.3f} s, max {max(cold):.3f} s")
    print(f"  warm cache: median {statistics.median(warm):.3f} s, max {max(warm):.3f} s "
          f"({statistics.median(cold) / statistics.median(warm):.1f}x faster than cold)")
    print(f"Slides page in a new tab, to drawn with its first tiles: median {statistics.median(loads):.2f} s "
          f"(min {min(loads):.2f}, max {max(loads):.2f}, {len(loads)} tabs)")
    print("targets: page < 2 s, zoom step < 0.5 s at the median")


if __name__ == "__main__":
    main()
