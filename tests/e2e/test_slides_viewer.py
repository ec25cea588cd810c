"""The Slides page end to end: `streamlit run streamlit_app.py` serving a slide of real lymph-node patches analysed
with the bundled model. Its tile routes answered over real HTTP (httpx) on 127.0.0.1, refusing unregistered slides and
malformed addresses; then headless Chromium opens the page, zooms in (tiles of finer levels are requested and
drawn), toggles the map, goes to a region, clicks the slide to open the window there, and downloads the GeoJSON and the report.
A screenshot of the viewer goes to tests/artifacts/screenshots/slides.png."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import CHROMIUM, CHROMIUM_ARGS, REPO, Dashboard, analysed_real_slide, wait_rendered
from pcam_core.slides.tiles import dzi_level_sizes

SHOTS = Path(os.environ.get("PCAM_SCREENSHOTS", REPO / "tests" / "artifacts" / "screenshots"))
VIEWPORT = {"width": 1400, "height": 1000}
VIEW = ".pcam-slide-view"


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws-slides-e2e")
    (root / "sources.json").write_text(json.dumps({"version": 1, "sources": []}))
    _, folder, sid = analysed_real_slide(root, stride=32, size=(3000, 2000), mode="dense")  # the quickest; drawn as any mode
    app = Dashboard(root, root / "streamlit.log")
    app.sid, app.folder = sid, folder
    app.start()
    try:
        yield app
    finally:
        app.stop()


def test_tile_routes_over_http_serve_registered_slides_and_refuse_the_rest(dashboard):
    sid = dashboard.sid
    with httpx.Client(base_url=dashboard.url, timeout=60) as client:
        dzi = client.get(f"/slides-api/{sid}.dzi")
        assert dzi.status_code == 200 and 'Width="3000" Height="2000"' in dzi.text
        last = len(dzi_level_sizes(3000, 2000)) - 1
        tile = client.get(f"/slides-api/{sid}_files/{last}/3_2.jpeg")
        assert tile.status_code == 200 and tile.headers["content-type"] == "image/jpeg" and tile.content[:2] == b"\xff\xd8"
        assert client.get(f"/slides-api/{sid}/bundled-s32/heatmap.png?threshold=0.3").headers["content-type"] == "image/png"
        for url, status, message in [("/slides-api/0123456789abcdef.dzi", 404, "no registered slide '0123456789abcdef'"),
                                      ("/slides-api/%2E%2E.dzi", 400, "slide id '..' is not valid"),
                                      (f"/slides-api/{sid}_files/{last}/3_x.jpeg", 400, "malformed tile address"),
                                      (f"/slides-api/{sid}_files/{last}/99_0.jpeg", 404, "outside the level"),
                                      (f"/slides-api/{sid}/bundled-s32/heatmap.png?threshold=-1", 400, "must be a probability between 0 and 1")]:
            response = client.get(url)
            assert response.status_code == status and message in response.json()["error"], (url, response.text)
        # a path in the address reaches no slide route (the decoded slashes match none): refused, never a file
        sneaky = client.get("/slides-api/..%2F..%2F..%2Fetc%2Fpasswd.dzi")
        assert sneaky.status_code in (400, 404) and "root:" not in sneaky.text


def _view(page, name: str):
    return page.evaluate(f"() => document.querySelector('{VIEW}').dataset['{name}']")


def _centre_in_image(page) -> list[float]:
    """The level-0 point at the centre of the viewer."""
    return page.evaluate("""() => { const s = document.querySelector('.pcam-slide').pcam;
        const b = s.viewer.viewport.getBounds(true); const r = s.slide.viewportToImageRectangle(b);
        return [r.x + r.width / 2, r.y + r.height / 2, r.width]; }""")


def _new_page(p) -> tuple[Any, Any, list[str]]:
    """Chromium with a page of the tests' viewport that accepts downloads, and the list its page errors go to."""
    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport=VIEWPORT, accept_downloads=True)
    page.set_default_timeout(60_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return browser, page, errors


@pytest.mark.browser
def test_open_zoom_toggle_go_to_click_and_download(dashboard, tmp_path):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"the browser tests need Debian's chromium at {CHROMIUM}"
    summary = json.loads((dashboard.folder / "summary.json").read_text())
    assert summary["regions"] >= 1
    with sync_playwright() as p:
        browser, page, errors = _new_page(p)
        tiles: list[str] = []
        page.on("requestfinished", lambda request: f"/slides-api/{dashboard.sid}_files/" in request.url and tiles.append(request.url))
        try:
            page.goto(f"{dashboard.url}/slides?slide={dashboard.sid}")
            wait_rendered(page, page.get_by_role("heading", name="Tumour regions"))
            page.wait_for_selector(f"{VIEW}[data-state=open]")
            page.wait_for_function(f"() => Number(document.querySelector('{VIEW}').dataset.tiles) > 0")
            assert page.get_by_text("Trained on lymph-node H&E at 0.972 µm/px (PatchCamelyon) only.").first.is_visible()
            page.wait_for_function(f"() => document.querySelector('{VIEW}').dataset.heatmap === '0.5'")
            first_level = int(_view(page, "maxLevel"))
            requested = len(tiles)
            assert requested > 0

            # zoom in with the mouse wheel: finer tiles are requested and drawn
            page.locator(VIEW).scroll_into_view_if_needed()  # the wheel acts where the pointer is: on the viewer
            box = page.locator(VIEW).bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            for _ in range(6):  # one gesture of six wheel steps; then wait for the state it leads to
                page.mouse.wheel(0, -400)
            page.wait_for_function(f"() => Number(document.querySelector('{VIEW}').dataset.maxLevel) > {first_level}",
                                   timeout=60_000)
            page.wait_for_function(f"() => document.querySelector('{VIEW}').dataset.loaded === 'true'", timeout=60_000)
            assert len(tiles) > requested and int(_view(page, "maxLevel")) > first_level
            assert all(".jpeg?v=" in t for t in tiles), tiles[:3]  # every tile address names the slide version

            # the map off and on again
            toggle = page.locator("input[data-control=heatmap]")
            toggle.uncheck()
            assert _view(page, "overlay") == "off"
            assert page.evaluate("() => document.querySelector('.pcam-slide').pcam.heatItem.getOpacity()") == 0
            toggle.check()
            assert page.evaluate("() => document.querySelector('.pcam-slide').pcam.heatItem.getOpacity()") > 0
            page.locator("input[data-control=tissue]").check()
            page.wait_for_function("() => document.querySelector('.pcam-slide').pcam.tissueItem?.getOpacity() > 0")
            page.locator("input[data-control=tissue]").uncheck()
            assert page.locator("svg.pcam-slide-svg path[data-region]").count() == summary["regions"]
            # reported regions in cyan, those below the reporting threshold grey and dashed (every one drawn)
            assert page.locator("svg.pcam-slide-svg path[data-reported=true]").count() == summary["regions_reported"] >= 1
            assert "mm" in page.locator(".pcam-scalebar").inner_text() or "µm" in page.locator(".pcam-scalebar").inner_text()

            # region labels never overlap one another; the region rows' buttons show their whole number at 1400 px
            boxes = page.evaluate("""() => [...document.querySelectorAll('svg.pcam-slide-svg text[data-label]')]
                .map((t) => { const b = t.getBBox(); return [b.x, b.y, b.width, b.height]; })""")
            assert boxes and len(boxes) + int(_view(page, "labelsHidden")) == summary["regions"]
            for k, (x, y, w, h) in enumerate(boxes):
                for (x2, y2, w2, h2) in boxes[k + 1:]:
                    assert not (x < x2 + w2 and x2 < x + w and y < y2 + h2 and y2 < y + h), (boxes[k], (x2, y2, w2, h2))
            first = page.get_by_role("button", name="#1", exact=True)
            assert first.evaluate("(b) => [...b.querySelectorAll('p, span')].every((e) => e.scrollWidth <= e.clientWidth + 1)")
            assert "…" not in first.inner_text() and "#1" in first.inner_text()

            # go to the largest region: the viewer centres on it
            first.click()
            region = summary["region_list"][0]
            page.wait_for_function("""([x, y]) => { const s = document.querySelector('.pcam-slide').pcam;
                const r = s.slide.viewportToImageRectangle(s.viewer.viewport.getBounds(true));
                return Math.abs(r.x + r.width / 2 - x) < r.width / 4 && Math.abs(r.y + r.height / 2 - y) < r.height / 4; }""",
                                   arg=[region["centroid_x"], region["centroid_y"]])
            page.wait_for_function(f"() => document.querySelector('{VIEW}').dataset.loaded === 'true'", timeout=60_000)
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.locator(".pcam-slide").screenshot(path=str(SHOTS / "slides-viewer.png"))

            # a click on the slide opens the window there, with its Grad-CAM (the button's rerun may have scrolled)
            page.locator(VIEW).scroll_into_view_if_needed()
            box = page.locator(VIEW).bounding_box()
            page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            wait_rendered(page, page.get_by_role("heading", name="The window at"))
            assert "(level-0 px, top-left)" in page.get_by_role("heading", name="The window at").inner_text()
            assert page.get_by_text("Grad-CAM").first.is_visible()
            assert page.locator("svg.pcam-slide-svg rect[data-marker=window]").count() == 1
            page.screenshot(path=str(SHOTS / "slides.png"), full_page=True)

            # the regions for QuPath
            with page.expect_download() as download:
                page.get_by_role("button", name="Regions (GeoJSON, for QuPath)").click()
            saved = tmp_path / "regions.geojson"
            download.value.save_as(saved)
            geojson = json.loads(saved.read_text())
            assert geojson["type"] == "FeatureCollection" and len(geojson["features"]) == summary["regions"]

            # the printable report: the slide's figures, its regions and that it is not a diagnosis
            with page.expect_download() as download:
                page.get_by_role("button", name="Report (HTML, printable)").click()
            saved = tmp_path / "report.html"
            download.value.save_as(saved)
            report = saved.read_text(encoding="utf-8")
            assert f"{summary['slide_score']:.3f}" in report and "not a diagnosis" in report.lower()
            assert report.count("data:image/") >= 2  # self-contained: the map and the crops are embedded
            assert not errors, errors
        finally:
            browser.close()


@pytest.mark.browser
def test_a_queued_analysis_appears_when_it_finishes_without_a_reload(tmp_path):
    """The page follows the queue: a slide queued for analysis is shown waiting, then, once the queue runner's
    analysis finishes, with its figures and map, the page never reloaded."""
    from pcam_core.slides.demo import DemoSlideSpec, make_demo_slide

    make_demo_slide(tmp_path / "slides" / "demo", DemoSlideSpec(width=1024, height=768))
    with _one_slide_dashboard(tmp_path, tmp_path / "slides" / "demo" / "slide.tif") as (library, sid, page):
        wait_rendered(page, page.get_by_text("has not been analysed yet"))
        library.start(sid)  # queued behind the page's back, as another tab or the API would
        page.reload()
        wait_rendered(page, page.get_by_text("is queued for analysis").or_(page.get_by_text("is being analysed")))
        navigations: list[str] = []
        page.on("framenavigated", lambda frame: frame == page.main_frame and navigations.append(frame.url))
        wait_rendered(page, page.get_by_role("heading", name="Tumour regions"), timeout_ms=300_000)
        assert page.get_by_text("Slide score").first.is_visible() and not navigations


@pytest.mark.browser
def test_a_slide_analysed_from_the_page_with_the_fast_scanner_shows_its_map(tmp_path):
    """In the browser: the library offers the shipped exactly-scanning candidate beside the sidebar's run; choosing it,
    ticking a slide of real patches and pressing Analyse runs the analysis with it, and its map appears without a reload."""
    from helpers import real_mosaic_slide

    slide, _ = real_mosaic_slide(tmp_path / "slide", cols=6, rows=4, tumour=(1, 3, 2, 4))
    with _one_slide_dashboard(tmp_path, slide) as (library, sid, page):
        wait_rendered(page, page.get_by_text("has not been analysed yet"))
        page.get_by_text("Analyse uses bundled model").click()  # the library's expander
        page.get_by_text("pcamscan (fast scan)").click()
        wait_rendered(page, page.get_by_text("Analyse uses pcamscan"))
        page.locator("[data-testid=stCheckbox] label").first.click()  # the slide's tick (its input is drawn over)
        page.get_by_role("button", name="Analyse 1 slide(s)").click()
        wait_rendered(page, page.get_by_role("heading", name="Tumour regions"), timeout_ms=300_000)
        assert page.get_by_text("Slide score").first.is_visible()
        assert library.analysis(sid).state == "none"  # the bundled model analysed nothing


@contextmanager
def _one_slide_dashboard(tmp_path: Path, slide: Path) -> Iterator[tuple[Any, str, Any]]:
    """A dashboard of a fresh workspace whose library holds `slide`, and Chromium open on its Slides page:
    (the library, the slide's id, the page)."""
    from playwright.sync_api import sync_playwright

    from pcam_core.workspace.slide_library import SlideLibrary

    root = tmp_path / "ws"
    root.mkdir()
    (root / "sources.json").write_text(json.dumps({"version": 1, "sources": []}))
    library = SlideLibrary(root)
    sid = library.add_file(slide).id
    app = Dashboard(root, root / "streamlit.log")
    app.start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(60_000)
            try:
                page.goto(f"{app.url}/slides?slide={sid}")
                yield library, sid, page
            finally:
                browser.close()
    finally:
        app.stop()


@pytest.mark.browser
def test_the_case_view_shows_the_pn_stage_and_loaded_truth_is_outlined_in_the_viewer(dashboard, tmp_path):
    """A case of the analysed slide: its pN stage in the case view, with its report to download; the slide's truth (a
    QuPath GeoJSON, by path) drawn over the map: the lesion's outline dashed in the colour of a found lesion, the
    regions in their match's colour, and the legend."""
    from playwright.sync_api import sync_playwright

    from helpers import mosaic_truth_geojson
    from pcam_core.workspace.slide_cases import library_cases, save_case
    from pcam_core.workspace.slide_library import SlideLibrary

    library = SlideLibrary(dashboard.workspace)
    save_case(library.root, "patient_001", [dashboard.sid])
    [case] = library_cases(library, stride=32)
    truth = mosaic_truth_geojson(tmp_path / "mosaic.geojson")
    try:
        with sync_playwright() as p:
            browser, page, errors = _new_page(p)
            try:
                page.goto(f"{dashboard.url}/slides?slide={dashboard.sid}")
                page.wait_for_selector(f"{VIEW}[data-state=open]")
                page.get_by_text("Cases: 1 patient(s)").click()
                stage = page.get_by_text(f"patient_001: pN stage {case.stage}")
                wait_rendered(page, stage)
                with page.expect_download() as download:
                    page.get_by_role("button", name="Case report (HTML, printable)").click()
                assert f"<h1>Case report: patient_001</h1>" in Path(download.value.path()).read_text(encoding="utf-8")

                page.get_by_text("Truth: compare with annotations").click()
                field = page.get_by_label("or its path on the server")
                field.fill(str(truth))
                field.press("Enter")
                page.get_by_role("button", name="Load truth").click()
                page.wait_for_function(f"() => document.querySelector('{VIEW}').dataset.truth === '1'")
                outline = page.locator("svg.pcam-slide-svg path[data-truth]")
                assert outline.get_attribute("data-truth") == "found" and outline.get_attribute("stroke-dasharray")
                matched = page.locator("svg.pcam-slide-svg path[data-match=true_positive]")
                assert matched.count() >= 1
                assert matched.first.get_attribute("stroke") == outline.get_attribute("stroke")
                assert page.locator(".pcam-truth-legend [data-legend=miss]").is_visible()
                assert "lesion missed" in page.locator(".pcam-truth-legend").inner_text()
                SHOTS.mkdir(parents=True, exist_ok=True)
                page.locator(".pcam-slide").screenshot(path=str(SHOTS / "slides-truth.png"))
                assert not errors, errors
            finally:
                browser.close()
    finally:
        save_case(library.root, "patient_001", [])
