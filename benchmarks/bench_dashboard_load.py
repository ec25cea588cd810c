"""Five browser sessions using the dashboard at once while a training run trains: errors, the Train
page's live view, and render times per page under that load.

    python benchmarks/bench_dashboard_load.py [--sessions 5] [--seconds 60] [--workspace benchmarks/out/dashboard-ws]

The workspace is bench_dashboard.py's (a 262,144-patch active split, 20 finished runs). A training run
(pcamnet on the demo data, launched as the dashboard launches runs) trains throughout. Each session is a
browser context of one headless Chromium (its own Streamlit session) on one of the finished runs; it
opens random pages from the sidebar for --seconds and does what a user does there: on Runs it moves the
decision threshold, on Explain it changes the method, on Predict it uploads a patch. A sixth, passive
session keeps the Train page open on the training run and reads its step counter every 5 s.

Counted as errors: Streamlit exceptions and error alerts on a page, browser console errors and page
errors, and actions that did not render within 60 s. Render times run from the click (or key press,
or upload) to the complete render (common.DASHBOARD_PAGES, tests/helpers.PAGE_DRAWN).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from common import DASHBOARD_PAGES, TESTS, dashboard_workspace, load_average, machine

sys.path.insert(0, str(TESTS))
from helpers import CHROMIUM, CHROMIUM_ARGS, PAGE_DRAWN, Dashboard, tif_bytes  # noqa: E402  (the browser tests' own)

VIEWPORT = {"width": 1400, "height": 1000}
NAV = "[data-testid=stSidebarNav]"
ERRORS = "[data-testid=stException], [data-testid=stAlertContentError]"
STEP = re.compile(r"step ([\d,]+) of")
METHODS = ["gradcam", "gradcam++", "hirescam", "xgradcam", "layercam"]


class Tally:
    """Render times per action and the errors seen, shared by the sessions (one event loop: no locks)."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []
        self.failed: list[str] = []  # URLs the browser could not load

    async def timed(self, name: str, page, action, marker) -> None:
        start = time.perf_counter()
        try:
            await action()
            await marker.first.wait_for(timeout=60_000)
            await page.wait_for_function(PAGE_DRAWN, timeout=60_000, polling=50)
        except Exception as err:  # a timeout, or a page that went away: an error of the run, recorded
            self.errors.append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
            await page.goto(page.url)
            return
        self.times[name].append(time.perf_counter() - start)
        if shown := await page.locator(ERRORS).count():
            self.errors.append(f"{name}: {shown} error element(s): {(await page.locator(ERRORS).first.inner_text())[:160]}")


async def user(index: int, browser, url: str, run_id: str, patch: Path, deadline: float, tally: Tally) -> int:
    """One session clicking through the pages until `deadline`; returns the pages it opened."""
    context = await browser.new_context(viewport=VIEWPORT)
    page = await context.new_page()
    page.on("console", lambda msg: msg.type == "error" and tally.errors.append(f"session {index} console: {msg.text[:160]}"))
    page.on("pageerror", lambda err: tally.errors.append(f"session {index} page error: {str(err)[:160]}"))
    page.on("requestfailed", lambda request: tally.failed.append(request.url))
    rng = random.Random(index)
    await tally.timed("overview (first load)", page, lambda: page.goto(f"{url}/?run={run_id}"), DASHBOARD_PAGES["overview"][1](page))
    current, opened = "overview", 0
    while time.time() < deadline:
        path = rng.choice([p for p in DASHBOARD_PAGES if p != current])
        title, marker = DASHBOARD_PAGES[path]
        await tally.timed(path, page, lambda: page.locator(NAV).get_by_text(title, exact=True).click(), marker(page))
        current, opened = path, opened + 1
        if path == "runs":  # the slider starts at 0.50 on each visit; ten steps of 0.005 to the right
            slider = page.get_by_role("slider").first

            async def move() -> None:
                await slider.focus()
                for _ in range(10):
                    await slider.press("ArrowRight")

            await tally.timed("runs: threshold", page, move, page.get_by_text(re.compile(r"Confusion matrix at threshold 0\.5[1-9]")))
        elif path == "explain":
            method = rng.choice(METHODS[1:])

            async def pick() -> None:
                await page.get_by_role("combobox", name="Method").click()
                await page.get_by_role("option", name=method, exact=True).click()

            await tally.timed("explain: method", page, pick, page.get_by_text(f"{method} at "))
        elif path == "predict":
            await tally.timed("predict: upload", page,
                              lambda: page.locator("[data-testid=stFileUploaderDropzoneInput]").set_input_files(str(patch)),
                              page.get_by_text("1 patch scored"))
        await asyncio.sleep(rng.uniform(0.5, 2.0))  # a user reads for a moment
    await context.close()
    return opened


async def watch_training(browser, url: str, run_id: str, deadline: float, tally: Tally) -> list[tuple[float, int]]:
    """The Train page left open on the training run: (seconds, step) every 5 s."""
    page = await (await browser.new_context(viewport=VIEWPORT)).new_page()
    await page.goto(f"{url}/train?run={run_id}")
    await page.get_by_text(STEP).first.wait_for(timeout=120_000)
    start, seen = time.time(), []
    while time.time() < deadline:
        text = await page.get_by_text(STEP).first.inner_text()
        seen.append((time.time() - start, int(STEP.search(text).group(1).replace(",", ""))))
        await asyncio.sleep(5)
    if await page.locator(ERRORS).count():
        tally.errors.append("train live view: an error element")
    return seen


async def run(args: argparse.Namespace, root: Path, finished: list[str], training: str, patch: Path, url: str) -> tuple[Tally, list, list[int]]:
    from playwright.async_api import async_playwright

    tally = Tally()
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        deadline = time.time() + args.seconds
        watcher = asyncio.create_task(watch_training(browser, url, training, deadline + 5, tally))
        opened = await asyncio.gather(*(user(i, browser, url, finished[i % len(finished)], patch, deadline, tally)
                                        for i in range(args.sessions)))
        steps = await watcher
        await browser.close()
    return tally, steps, list(opened)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path(__file__).parent / "out" / "dashboard-ws")
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()

    from pcam_core.config import ExperimentConfig
    from pcam_core.data import PCamH5
    from pcam_core.runs import stop
    from pcam_core.workspace import Workspace

    root = dashboard_workspace(args.workspace.resolve())
    workspace = Workspace(root)
    finished = [r.run_id for r in workspace.runs() if r.state == "finished"]
    demo = workspace.source("demo").path
    patch = root / "upload" / "patch.tif"
    patch.parent.mkdir(exist_ok=True)
    patch.write_bytes(tif_bytes(PCamH5(demo, "test").read_pixels(np.array([0]))[0]))
    config = ExperimentConfig().replace(data={"path": demo, "num_workers": 0}, train={"epochs": 200}, name="under-load")
    print(f"{machine()}\n{args.sessions} sessions for {args.seconds:.0f} s, workspace {root}; before: {load_average()}")
    with Dashboard(root, root / "streamlit.log") as app:
        training = workspace.start_run(config)
        try:
            while not training.steps():
                time.sleep(0.5)
            tally, steps, opened = asyncio.run(run(args, root, finished, training.run_id, patch, app.url))
        finally:
            stop(training, timeout=60)
            shutil.rmtree(training.path, ignore_errors=True)  # leave the workspace as bench_dashboard.py expects it
    print(f"after: {load_average()}; pages opened per session: {opened}")
    print(f"\n{'action':<24}{'n':>4}{'p50 (s)':>9}{'p90 (s)':>9}{'max (s)':>9}")
    for name in sorted(tally.times):
        values = np.array(tally.times[name])
        print(f"{name:<24}{len(values):>4}{np.percentile(values, 50):>9.2f}{np.percentile(values, 90):>9.2f}{values.max():>9.2f}")
    print(f"\nerrors: {len(tally.errors)}")
    for line, count in Counter(tally.errors).most_common(12):
        print(f"  {count} x {line}")
    for url, count in Counter(tally.failed).most_common(5):
        print(f"  failed request, {count} x: {url[:150]}")
    advanced = sum(b[1] > a[1] for a, b in zip(steps, steps[1:]))
    stalls = [b[0] - a[0] for a, b in zip(steps, steps[1:]) if b[1] == a[1]]
    print(f"Train live view: step {steps[0][1]} -> {steps[-1][1]} over {steps[-1][0]:.0f} s; advanced in {advanced} of "
          f"{len(steps) - 1} 5-s readings; longest stall {max(stalls, default=0):.0f} s")
    rate = (steps[-1][1] - steps[0][1]) * config.train.batch_size / max(steps[-1][0], 1e-9)
    print(f"training speed during the load: {rate:.0f} patches/s (from the live view's step counter)")


if __name__ == "__main__":
    main()
