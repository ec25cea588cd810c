"""The workspace's slide library (pcam_core.workspace.slide_library, its queue slide_queue) and the printable slide report
(pcam_core.slides.report): registering folders and uploads, the listing with thumbnails and errors, the
demo slide of a first start, the report's content; the queue of real analysis processes (slow)."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import wait_for
from pcam_core.cli import main
from pcam_core.runs.process import pid_alive
from pcam_core.slides.demo import DemoSlideSpec, make_demo_slide
from pcam_core.slides.folder import AnalysisFolder
from pcam_core.slides.report import DISCLAIMER
from pcam_core.workspace import Workspace
from pcam_core.workspace.slides import (DEMO_SLIDE_ENV, UPLOAD_LIMIT_ENV, SlideLibrary, demo_slide_size, fingerprint, run_key, slide_id,
                                        upload_limit)
from test_slides import RedCentreModel, _analyse, _png_slide


@pytest.fixture(scope="module")
def slide_folder(tmp_path_factory) -> Path:
    """A folder of slides: a SYNTHETIC demo slide, a PNG with its resolution (dpi), and a file that is no slide."""
    folder = tmp_path_factory.mktemp("slides")
    make_demo_slide(folder / "demo", DemoSlideSpec(width=1024, height=768))
    (folder / "demo" / "slide.tif").rename(folder / "demo.tif")
    pixels = np.full((600, 800, 3), 240, dtype=np.uint8)
    pixels[100:500, 100:700] = (225, 140, 190)
    Image.fromarray(pixels).save(folder / "tissue.png", dpi=(25400 / 0.5, 25400 / 0.5))  # 0.5 um/px
    (folder / "broken.tif").write_bytes(b"not a slide at all" * 100)
    return folder


def _by_name(library: SlideLibrary) -> dict:
    return {entry.name: entry for entry in library.slides()}


# -- the registry and the listing --------------------------------------------------------------------

def test_a_registered_folder_is_listed_where_it_is_with_sizes_thumbnails_and_errors(slide_folder, tmp_path):
    library = SlideLibrary(tmp_path / "ws")
    assert library.slides() == []
    library.add_folder(slide_folder)
    slides = _by_name(library)
    assert set(slides) == {"demo.tif", "tissue.png", "broken.tif"}
    demo, png, broken = slides["demo.tif"], slides["tissue.png"], slides["broken.tif"]
    assert (demo.width, demo.height, demo.mpp, demo.vendor, demo.backend) == (1024, 768, 0.243, "generic-tiff", "openslide")
    assert demo.synthetic and demo.label == "demo.tif (SYNTHETIC)" and demo.levels >= 1 and demo.file_size > 0
    assert (png.width, png.height, png.synthetic) == (800, 600, False) and png.mpp == pytest.approx(0.5, rel=1e-3)
    assert demo.path == str(slide_folder / "demo.tif") and not (tmp_path / "ws" / "slides" / "uploads").exists()  # never copied
    assert broken.error and "broken.tif" in broken.error and broken.width is None and broken.thumbnail is None
    with Image.open(demo.thumbnail) as thumb:
        assert max(thumb.size) == 256 and thumb.size[0] > thumb.size[1]
    made = Path(demo.thumbnail).stat().st_mtime_ns
    again = _by_name(SlideLibrary(tmp_path / "ws"))  # as after a restart: same ids, the thumbnail not made again
    assert again["demo.tif"].id == demo.id == slide_id(slide_folder / "demo.tif")
    assert Path(again["demo.tif"].thumbnail).stat().st_mtime_ns == made
    with pytest.raises(ValueError, match="already registered"):
        library.add_folder(slide_folder)
    library.remove(demo.id)  # a slide of a registered folder: hidden from the library, its file left where it is
    assert set(_by_name(library)) == {"tissue.png", "broken.tif"} and (slide_folder / "demo.tif").exists()
    library.remove_folder(slide_folder)
    assert library.slides() == [] and (slide_folder / "demo.tif").exists()
    library.add_folder(slide_folder)  # registered again: every slide of it again
    assert set(_by_name(library)) == {"demo.tif", "tissue.png", "broken.tif"}
    library.remove_folder(slide_folder)


def test_a_folder_that_is_missing_or_holds_no_slides_is_refused(tmp_path):
    library = SlideLibrary(tmp_path / "ws")
    with pytest.raises(FileNotFoundError, match="folder not found"):
        library.add_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no slide files"):
        library.add_folder(tmp_path / "empty")


def test_an_upload_is_stored_atomically_refused_above_the_limit_or_when_unreadable_and_removed(slide_folder, tmp_path):
    data = (slide_folder / "tissue.png").read_bytes()
    library = SlideLibrary(tmp_path / "ws", upload_max_bytes=len(data) + 10)
    entry = library.add_upload("my slide.png", io.BytesIO(data))  # a stream, read in chunks
    assert entry.origin == "upload" and entry.name == "my-slide.png" and entry.width == 800
    second = library.add_upload("my slide.png", data)  # bytes; the name made unique
    assert second.name == "my-slide-2.png" and second.id != entry.id
    with pytest.raises(ValueError, match="larger than the limit"):
        SlideLibrary(tmp_path / "ws", upload_max_bytes=1000).add_upload("big.png", io.BytesIO(data))
    with pytest.raises(ValueError, match="not a slide"):
        library.add_upload("fake.tif", b"garbage" * 50)
    with pytest.raises(ValueError, match="not a slide file type"):
        library.add_upload("notes.txt", b"hello")
    uploads = tmp_path / "ws" / "slides" / "uploads"
    assert sorted(p.name for p in uploads.iterdir()) == ["my-slide-2.png", "my-slide.png"]  # no partial file left
    library.remove(entry.id)
    assert not (uploads / "my-slide.png").exists() and [e.name for e in library.slides()] == ["my-slide-2.png"]


def test_settings_from_the_environment_are_checked(monkeypatch):
    monkeypatch.setenv(UPLOAD_LIMIT_ENV, "0.5")
    assert upload_limit() == 512 * 1024**2
    monkeypatch.setenv(UPLOAD_LIMIT_ENV, "lots")
    with pytest.raises(ValueError, match=UPLOAD_LIMIT_ENV):
        upload_limit()
    monkeypatch.setenv(DEMO_SLIDE_ENV, "off")
    assert demo_slide_size() is None
    monkeypatch.setenv(DEMO_SLIDE_ENV, "2000x1500")
    assert demo_slide_size() == (2000, 1500)
    monkeypatch.setenv(DEMO_SLIDE_ENV, "big")
    with pytest.raises(ValueError, match=DEMO_SLIDE_ENV):
        demo_slide_size()
    assert run_key("bundled", 32) == "bundled-s32" and run_key("/x/runs/my run", 96) == "my-run-s96"


def test_first_start_makes_the_synthetic_demo_slide_registered_once(tmp_path, monkeypatch):
    monkeypatch.setenv(DEMO_SLIDE_ENV, "1024x768")
    library = SlideLibrary(tmp_path / "ws")
    entry = library.bootstrap(analyse=False)
    assert entry is not None and entry.synthetic and (entry.width, entry.height) == (1024, 768)
    assert [e.id for e in library.slides()] == [entry.id]
    assert library.analysis(entry.id).state == "none"
    library.remove(entry.id)  # forgotten, not deleted; and not made again on the next start
    assert library.bootstrap() is None and library.slides() == [] and library.demo_slide.exists()


@pytest.mark.slow  # generates the demo dataset (3-5 s)
def test_the_workspace_first_start_without_a_demo_slide_leaves_an_empty_library(tmp_path):
    from pcam_core.workspace import demo_spec

    workspace = Workspace(tmp_path / "ws")  # $PCAM_DEMO_SLIDE is "off" in the tests (conftest)
    workspace.bootstrap(spec=demo_spec(64))
    assert workspace.slide_library.initialised() and workspace.slide_library.slides() == []


# -- the report ----------------------------------------------------------------------------------------

class _Checker(HTMLParser):
    """Collects the text, the images' sources and the tags left open, as a browser would read the page."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.text: list[str] = []
        self.images: list[str] = []
        self.mismatched: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.mismatched.append(tag)
        else:
            self.stack.pop()

    def handle_data(self, data) -> None:
        self.text.append(data)


def _parse(path: Path) -> _Checker:
    checker = _Checker()
    checker.feed(path.read_text(encoding="utf-8"))
    checker.close()
    return checker


def test_the_report_holds_the_figures_regions_crops_disclaimer_and_embedded_images(tmp_path):
    slide = _png_slide(tmp_path / "block.png", (1600, 1200), tissue=(100, 100, 1500, 1100), red=(300, 300, 700, 600))
    summary = _analyse(slide, tmp_path / "out", mpp=0.5, region_px=256)
    folder = AnalysisFolder(tmp_path / "out")
    assert folder.report_html.exists()  # written by the analysis itself, beside summary.json
    page = _parse(folder.report_html)
    assert page.stack == [] and page.mismatched == []  # every tag closed in order
    text = " ".join(" ".join(page.text).split())
    assert f"{summary['slide_score']:.3f}" in text and f"{summary['tumour_area_mm2']:.3f} mm²" in text
    assert f"{summary['largest_diameter_mm']:.2f} mm" in text and "tumour found" in text and summary["regions"] >= 1
    region = summary["region_list"][0]
    assert f"{region['area_mm2']:.4f}" in text and f"{region['longest_diameter_mm']:.3f}" in text
    assert DISCLAIMER in text and "SYNTHETIC" not in text  # a PNG of our own is no synthetic demo slide
    assert "red-centre" in text and "threshold" in text and "stride" in text
    assert summary["regions_reported"] >= 1 and f"{summary['regions_reported']} reported" in text
    assert len(page.images) == 1 + summary["regions_reported"]  # the map, and a crop per reported region
    for src in page.images:
        kind, data = src.split(",", 1)
        assert kind in ("data:image/png;base64", "data:image/jpeg;base64")
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            image.load()
    crop = np.asarray(Image.open(io.BytesIO(base64.b64decode(page.images[1].split(",", 1)[1]))))
    reddish = (crop[..., 0] > 200) & (crop[..., 1] < 80) & (crop[..., 2] < 80)
    assert reddish.mean() > 0.1  # the crop shows the red block it outlines, read from the slide

    out = tmp_path / "again.html"  # on demand, through the CLI
    assert main(["slide-report", "--analysis", str(folder.path), "--out", str(out)]) == 0
    assert DISCLAIMER in " ".join(" ".join(_parse(out).text).split())


@pytest.mark.slow  # an analysis and its report: seconds
def test_the_report_of_a_slide_out_of_scope_gives_no_score_area_or_diameter(tmp_path):
    """A slide too coarse for the model (2 µm/px, windows enlarged twofold) is not assessed: its report, as the page,
    gives no slide score, regions, tumour area or diameter ("0.000" would read as a negative finding); the highest
    cell is there for inspection only."""
    slide = _png_slide(tmp_path / "block.png", (1600, 1200), tissue=(100, 100, 1500, 1100), red=(300, 300, 700, 600))
    summary = _analyse(slide, tmp_path / "out", mpp=2.0, region_px=256)
    assert summary["scope"]["in_scope"] is False
    text = " ".join(" ".join(_parse(AnalysisFolder(tmp_path / "out").report_html).text).split())
    for figure in ("slide score (the slide's tumour score)", "tumour regions", "tumour area (reported regions)",
                   "largest reported region's longest diameter"):
        assert f"{figure} not assessed" in text, figure
    assert "mm²" not in text.split("tumour area (reported regions)")[1].split("largest")[0]
    assert "highest cell probability (for inspection only)" in text


def test_the_report_of_a_synthetic_slide_says_so_and_shows_the_bundled_models_card(tmp_path):
    from pcam_core.slides.batch import analyse_slide

    make_demo_slide(tmp_path / "demo", DemoSlideSpec(width=1024, height=768))
    folder = AnalysisFolder(tmp_path / "out")
    analyse_slide(RedCentreModel(), tmp_path / "demo" / "slide.tif", folder, run="bundled", checkpoint="red", checkpoint_epoch=None,
                  model_name="red-centre", num_workers=0, stride=96)
    text = " ".join(" ".join(_parse(folder.report_html).text).split())
    assert "SYNTHETIC SLIDE" in text and "NOT REAL TISSUE" in text
    assert "Intended use" in text and "Not a diagnosis" in text  # the bundled model's card, rendered
    assert json.loads(folder.summary_json.read_text())["slide_info"]["synthetic"] is True


def test_a_report_of_an_unfinished_analysis_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not complete"):
        from pcam_core.slides.report import render_report

        render_report(tmp_path)


# -- the queue: real processes ------------------------------------------------------------------------

def _states(library: SlideLibrary, ids: list[str], **kw) -> list[str]:
    return [library.analysis(s, **kw).state for s in ids]


@pytest.mark.slow  # runs real `pcam slide-queue` and `pcam slide` processes with the bundled model
def test_queued_analyses_run_one_at_a_time_survive_a_killed_runner_stop_and_resume(tmp_path):
    for name, size in (("a", (1024, 768)), ("b", (1024, 768)), ("c", (4000, 3000))):
        make_demo_slide(tmp_path / "slides" / name, DemoSlideSpec(width=size[0], height=size[1]))
        (tmp_path / "slides" / name / "slide.tif").rename(tmp_path / "slides" / f"{name}.tif")
    library = SlideLibrary(tmp_path / "ws")
    library.add_folder(tmp_path / "slides")
    ids = {e.name: e.id for e in library.slides()}
    a, b, c = ids["a.tif"], ids["b.tif"], ids["c.tif"]

    started = library.start([a, b])
    assert [s.state for s in started] == ["queued", "queued"] and [s.position for s in started] == [1, 2]
    seen = []
    assert wait_for(lambda: seen.append(tuple(_states(library, [a, b]))) or seen[-1] == ("running", "queued"), timeout=120, every=0.1), seen
    runner = json.loads((library.root / "runner.json").read_text())
    os.kill(runner["pid"], signal.SIGKILL)  # the runner dies; the running analysis is its own process and goes on
    assert wait_for(lambda: not pid_alive(runner["pid"], runner["pid_start"]), timeout=10)

    fresh = SlideLibrary(tmp_path / "ws")  # as after a restarted app: a new object, the same states; it starts a new runner
    assert wait_for(lambda: seen.append(tuple(_states(fresh, [a, b]))) or seen[-1] == ("done", "done"), timeout=300, every=0.2), seen[-5:]
    assert ("running", "running") not in seen and ("queued", "running") not in seen  # one at a time, in order
    assert ("done", "running") in seen or ("done", "queued") in seen
    done = fresh.analysis(a)
    assert done.summary["run"] == "bundled" and done.report is not None and done.report.exists()
    assert done.folder.path == tmp_path / "ws" / "slides" / "analyses" / a / "bundled-s32"

    fresh.start(c)
    assert wait_for(lambda: fresh.analysis(c).state == "running", timeout=120, every=0.1)
    fresh.stop(c)
    job = json.loads((fresh.jobs / f"analysis-{c}-bundled-s32.json").read_text())
    assert wait_for(lambda: not pid_alive(job["pid"], job["pid_start"]), timeout=20)
    # the runner that watched the job records its end a moment later: "running" until then, then stopped
    assert wait_for(lambda: SlideLibrary(tmp_path / "ws").analysis(c).state == "stopped", timeout=30, every=0.2), \
        SlideLibrary(tmp_path / "ws").analysis(c)
    assert fresh.start(c)[0].state in ("queued", "running")  # resumed
    assert wait_for(lambda: fresh.analysis(c).state == "done", timeout=300, every=0.5), fresh.analysis(c)
    assert "--resume" in json.loads((fresh.jobs / f"analysis-{c}-bundled-s32.json").read_text())["command"]
    assert wait_for(lambda: not fresh.runner_alive(), timeout=30)  # the queue is empty: the runner left


# -- the page's library section (pcam_app.slide_library) -----------------------------------------------

def _library_section(root: str) -> None:
    from pcam_app.slide_library import add_slides, analysis_controls, slide_list
    from pcam_core.workspace.slides import SlideLibrary

    library = SlideLibrary(root)
    add_slides(library)
    analysis_controls(library, slide_list(library, library.slides()), "bundled")


@pytest.mark.slow
def test_the_library_section_lists_no_slides_then_slides_with_their_states(slide_folder, tmp_path):
    from streamlit.testing.v1 import AppTest

    root = str(tmp_path / "ws")
    at = AppTest.from_function(_library_section, args=(root,), default_timeout=30).run()
    assert not at.exception and any("No slides yet" in i.value for i in at.info)
    library = SlideLibrary(root)
    library.add_folder(slide_folder)
    png = next(e for e in library.slides() if e.name == "tissue.png")
    _analyse(Path(png.path), library.analysis_folder(png.id, "bundled").path, mpp=0.5, region_px=256)
    at = AppTest.from_function(_library_section, args=(root,), default_timeout=30).run()
    assert not at.exception
    shown = " ".join(m.value for m in at.markdown) + " ".join(c.value for c in at.caption)
    assert "demo.tif" in shown and "SYNTHETIC" in shown and "1,024 × 768 px" in shown
    assert "Analyses: test (stride 32): done, score" in shown and "Analyses: not analysed" in shown
    assert any("broken.tif" in e.value for e in at.error)  # listed with its error, not fatal


# -- copies, analyses by any model, numbering, reviews (issue 20) ---------------------------------------

def _analyse_as(library: SlideLibrary, sid: str, key: str, slide: Path, run: str) -> AnalysisFolder:
    """A real (red-centre) analysis of `slide` in the library's folder `key` of slide `sid`, recorded as made by `run`."""
    from pcam_core.slides.batch import analyse_slide
    from test_slides import RedCentreModel

    folder = library.queue.folder(sid, key)
    analyse_slide(RedCentreModel(), slide, folder, run=run, checkpoint="red", checkpoint_epoch=None, model_name="red-centre",
                  num_workers=0, stride=96, mpp=0.5, region_px=256)
    return folder


def test_the_same_slide_uploaded_and_in_a_folder_is_two_entries_with_their_origin_sharing_analyses(tmp_path):
    (tmp_path / "slides").mkdir()
    slide = _png_slide(tmp_path / "slides" / "block.png", (1200, 900), tissue=(100, 100, 1100, 800), red=(300, 300, 600, 500))
    Image.open(slide).save(slide, dpi=(25400 / 0.5, 25400 / 0.5))  # its resolution in the file: a slide to analyse
    library = SlideLibrary(tmp_path / "ws")
    library.add_folder(slide.parent)
    uploaded = library.add_upload("block.png", slide.read_bytes())
    listed = {e.origin: e for e in library.slides()}
    in_folder, uploaded = listed["folder"], listed["upload"]
    assert in_folder.id != uploaded.id and in_folder.fingerprint == uploaded.fingerprint  # keyed by id, known by content
    assert in_folder.copies == (uploaded.id,) and uploaded.copies == (in_folder.id,)
    assert uploaded.origin_text == "uploaded" and in_folder.origin_text == f"in a registered folder ({slide.parent})"
    _analyse_as(library, in_folder.id, "bundled-s96", slide, "bundled")
    # the upload's analyses are the folder copy's: it is not "not analysed", and Analyse does not run it again
    [state] = library.analyses(uploaded.id)
    assert state.state == "done" and state.slide_id == in_folder.id and state.run == "bundled" and state.stride == 96
    assert library.start(uploaded.id, "bundled", stride=96)[0].state == "done" and not library.queue_json.exists()
    other = tmp_path / "other.png"
    other.write_bytes(slide.read_bytes()[:-1] + b"\0")  # one byte differs, within the last MiB: another slide
    assert fingerprint(other) != in_folder.fingerprint


@pytest.mark.slow
def test_a_slides_analyses_by_every_model_are_listed_whichever_run_is_asked(tmp_path):
    slide = _png_slide(tmp_path / "block.png", (1200, 900), tissue=(100, 100, 1100, 800), red=(300, 300, 600, 500))
    library = SlideLibrary(tmp_path / "ws")
    sid = library.add_file(slide).id
    run = tmp_path / "runs" / "my-run"
    run.mkdir(parents=True)
    _analyse_as(library, sid, "bundled-s96", slide, "bundled")
    assert library.analysis(sid, run, stride=96).state == "none"  # this run has not analysed it...
    [state] = library.analyses(sid)  # ...but the slide is analysed, by the bundled model
    assert (state.state, state.run, state.run_label.startswith("bundled model")) == ("done", "bundled", True)
    _analyse_as(library, sid, "my-run-s96", slide, str(run))
    assert {s.run for s in library.analyses(sid)} == {"bundled", str(run)}


def test_regions_have_one_number_in_the_geojson_report_and_viewer_and_reviews_appear_in_each(tmp_path):
    from pcam_core.slides.viewer import regions
    from pcam_core.workspace.reviews import ModelCall, ReviewStore, ReviewTarget
    from pcam_core.workspace.slide_reviews import REVIEW_SOURCE, regions_geojson, slide_reviews

    # three red blocks of different sizes; the smallest lies first in reading order, so a label-ordered name would differ
    pixels = np.full((1400, 2000, 3), 250, dtype=np.uint8)
    pixels[100:1300, 100:1900] = (225, 140, 190)
    for x0, y0, x1, y1 in ((200, 200, 330, 330), (600, 300, 1100, 800), (1300, 900, 1600, 1200)):
        pixels[y0:y1, x0:x1] = (255, 0, 0)
    path = tmp_path / "blocks.png"
    Image.fromarray(pixels).save(path, dpi=(25400 / 0.5, 25400 / 0.5))
    library = SlideLibrary(tmp_path / "ws")
    sid = library.add_file(path).id
    folder = _analyse_as(library, sid, "bundled-s96", path, "bundled")
    features = json.loads(folder.regions_geojson.read_text())["features"]
    assert len(features) == 3
    areas = [f["properties"]["area_mm2"] for f in features]
    assert areas == sorted(areas, reverse=True)
    assert [f["properties"]["name"] for f in features] == ["tumour region #1", "tumour region #2", "tumour region #3"]
    assert [f["properties"]["region"] for f in features] == [1, 2, 3]
    assert [r["id"] for r in regions(folder)] == [1, 2, 3]  # the page's and the viewer's numbers
    store = ReviewStore(tmp_path / "ws" / "reviews.sqlite")
    store.add_review(ReviewTarget.slide_region(REVIEW_SOURCE, sid, region="2"), "artefact", "Dr A", note="fold",
                     model=ModelCall.at(0.9, 0.5, "bundled"))
    store.add_review(ReviewTarget.slide_region(REVIEW_SOURCE, sid, x=480, y=512), "agree", "Dr B",
                     model=ModelCall.at(0.8, 0.5, "bundled"))
    store.add_review(ReviewTarget.slide_region(REVIEW_SOURCE, sid, region="1"), "agree", "Dr C",
                     model=ModelCall.at(0.9, 0.5, "/elsewhere/another-run"))  # another model's region #1: not this map's
    said = slide_reviews(store, [sid], run="bundled")
    assert [(r["region"], r["x"], r["reviewer"]) for r in said] == [(2, None, "Dr A"), (None, 480, "Dr B")]
    geojson = regions_geojson(folder, said, window_px=96 * 0.972 / 0.5)
    second = geojson["features"][1]["properties"]
    assert second["name"] == "tumour region #2" and second["reviews"][0]["verdict"] == "artefact"
    assert "fold" in second["review"] and "reviews" not in geojson["features"][0]["properties"]
    window = geojson["features"][3]
    assert window["properties"]["name"] == "reviewed window at 480, 512 (level-0 px, top-left)"
    assert window["geometry"]["coordinates"][0][0] == [480, 512]
    from pcam_core.slides.report import render_report

    text = " ".join(" ".join(_parse_text(render_report(folder, reviews=said)).text).split())
    assert "artefact “fold”: Dr A" in text and "region #2" in text and "window at 480, 512 (level-0 px, top-left)" in text


def test_the_report_says_when_the_analysis_finished_with_the_time_zone(tmp_path):
    import re

    slide = _png_slide(tmp_path / "block.png", (1200, 900), tissue=(100, 100, 1100, 800), red=(300, 300, 600, 500))
    _analyse(slide, tmp_path / "out", mpp=0.5, region_px=256)
    text = AnalysisFolder(tmp_path / "out").report_html.read_text(encoding="utf-8")  # written by the analysis itself
    zone = r"\d{4}-\d\d-\d\d \d\d:\d\d \S+ \(UTC[+-]\d\d:\d\d\)"
    assert re.search(f"Report made {zone}; analysis finished {zone};", text), text[:2000]
    assert "finished now" not in text


def _parse_text(html_text: str) -> _Checker:
    checker = _Checker()
    checker.feed(html_text)
    checker.close()
    return checker
