"""The Slides page with Streamlit's AppTest on real files: no slides; a slide without an analysis; a slide of real
lymph-node patches analysed with the bundled model (figures, the viewer's data, regions sorted and "go to", the window under a
click with its Grad-CAM, downloads). The library's own states (queued, running, failed) are
tests/test_slide_library.py's; here the page's words for one that is not done. A SYNTHETIC demo slide and a real skin
scan analysed with the bundled model are out of its scope: the page says so, with no call and no size class."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import numpy as np

from helpers import REPO, analysed_real_slide, mosaic_truth_geojson, real_mosaic_slide
from pcam_app.patches import probability_text
from pcam_app.slide_library import slide_labels
from pcam_core.workspace.slides import SlideEntry, SlideLibrary
from pcam_core.slides.viewer import lattice_of, load_heat, load_summary
from pcam_core.workspace import ENV_VAR

APP = str(REPO / "streamlit_app.py")
PAGE = "pages/slides.py"


def _workspace(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "sources.json").write_text(json.dumps({"version": 1, "sources": []}))  # initialised: no first start
    return root


@pytest.fixture(scope="module")
def analysed_workspace(tmp_path_factory) -> tuple[Path, str]:
    """A workspace whose slide library holds a slide of real lymph-node patches analysed with the bundled model at
    stride 32 (the page's analyses): (workspace, slide id)."""
    root = _workspace(tmp_path_factory.mktemp("ws-slides-app"))
    _, _, sid = analysed_real_slide(root, stride=32, size=(1536, 1024), mode="dense")  # the quickest; the page draws any mode alike
    return root, sid


def open_slides(root: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv(ENV_VAR, str(root))
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("title", "subheader", "markdown", "caption", "info", "warning", "error") for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def viewer_data(at: AppTest) -> dict:
    [element] = [e for e in at.get("bidi_component") if e.proto.component_name == "pcam_slide_viewer"]
    return json.loads(element.proto.json)


def test_no_slides_says_how_to_make_one(tmp_path, monkeypatch):
    at = open_slides(_workspace(tmp_path / "ws"), monkeypatch)
    assert [t.value for t in at.title] == ["Slides"]
    assert "No slides yet" in texts(at)
    assert not [e for e in at.get("bidi_component") if e.proto.component_name == "pcam_slide_viewer"]


def test_a_slide_without_analysis_is_shown_without_a_map(analysed_workspace, tmp_path, monkeypatch):
    root = _workspace(tmp_path / "ws")
    from pcam_core.slides.demo import DemoSlideSpec, make_demo_slide

    make_demo_slide(tmp_path / "demo", DemoSlideSpec(width=1024, height=768))
    sid = SlideLibrary(root).add_file(tmp_path / "demo" / "slide.tif").id
    at = open_slides(root, monkeypatch)
    assert "has not been analysed yet" in texts(at)
    assert "SYNTHETIC demo slide" in texts(at)
    data = viewer_data(at)
    assert data["dzi"] == f"slides-api/{sid}.dzi?v={SlideLibrary(root).entry(sid).version}" and data["heatmap"] is None
    assert data["regions"] == []


def test_an_analysed_slide_shows_its_figures_viewer_regions_and_downloads(analysed_workspace, monkeypatch):
    root, sid = analysed_workspace
    at = open_slides(root, monkeypatch)
    folder = SlideLibrary(root).analysis_folder(sid)
    summary = load_summary(folder)
    shown = texts(at)
    assert "SYNTHETIC demo slide" not in shown and summary["scope"]["in_scope"]
    assert "Trained on lymph-node H&E at 0.972 µm/px (PatchCamelyon) only." in shown
    assert f"{summary['scope']['out_of_scope_fraction']:.1%} of this slide's scored tissue lies outside it" in shown
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Slide score"] == f"{summary['slide_score']:.3f}"
    # the slide decision's call and reported regions (pcam_core.slides.decision), not the highest cell's
    assert metrics[f"Call at {summary['slide_threshold']:g}"] == ("tumour" if summary["slide_score"] >= summary["slide_threshold"]
                                                                   else "no tumour")
    assert metrics["Regions"] == str(summary["regions_reported"]) and metrics["Size class"] == summary["size_class"]
    assert metrics["Largest diameter"] == f"{summary['largest_diameter_mm']:.2f} mm"
    # the bundled model's triage (fitted on its held-out patches) calls every scored cell
    from pcam_core.calibration import run_triage
    from pcam_core.triage import triage_calls

    heat = load_heat(folder)
    scored = heat[np.isfinite(heat) & (heat >= 0)]
    calls = triage_calls(scored, run_triage("bundled", 0.98))
    for call in ("tumour", "refer", "normal"):
        assert metrics[f"Cells called {call}"] == f"{int((calls == call).sum()):,}"
    assert metrics["Slide by triage"] == ("tumour" if (calls == "tumour").any() else "refer" if (calls == "refer").any() else "normal")
    data = viewer_data(at)
    assert (data["width"], data["height"], data["mpp"]) == (1536, 1024, pytest.approx(summary["mpp"]))
    version = folder.version()
    assert data["heatmap"]["url"] == f"slides-api/{sid}/bundled-s32/heatmap.png?v={version}" and data["heatmap"]["width"] >= 1536
    assert data["tissue"]["url"] == f"slides-api/{sid}/bundled-s32/tissue.png?v={version}" and data["threshold"] == 0.5
    assert [r["id"] for r in data["regions"]] == list(range(1, summary["regions"] + 1)) and data["goto"] is None
    labels = [b.label for b in at.get("download_button")]
    assert labels[:3] == ["Regions (GeoJSON, for QuPath)", "Heat map (pyramidal TIFF)", "Windows (tiles.csv)"]
    # regions by probability, then "go to" the first: the viewer gets its box
    at.segmented_control(key="region_sort").set_value("probability").run()
    buttons = [b for b in at.button if (b.key or "").startswith("goto-")]
    by_probability = sorted(summary["region_list"], key=lambda r: (not r["reported"], -r["max_probability"]))  # reported first
    assert len(buttons) == min(summary["regions"], 30) >= 1  # the 30 first are listed, the rest in the GeoJSON
    assert buttons[0].label == f"#{by_probability[0]['region']}"  # the region's one number, as in the GeoJSON
    buttons[0].click().run()
    goto = viewer_data(at)["goto"]
    ring = by_probability[0]
    assert goto["bbox"][0] <= ring["centroid_x"] <= goto["bbox"][0] + goto["bbox"][2]


def test_a_click_on_the_slide_shows_its_window_probability_and_grad_cam(analysed_workspace, monkeypatch):
    root, sid = analysed_workspace
    at = open_slides(root, monkeypatch)
    folder = SlideLibrary(root).analysis_folder(sid)
    lattice = lattice_of(load_summary(folder))
    heat = load_heat(folder)
    i, j = np.unravel_index(np.nanargmax(heat), heat.shape)
    point = (int((j + 0.5) * lattice.cell_px), int((i + 0.5) * lattice.cell_px))
    at.session_state[f"slides_view_{sid}"] = {"goto": None, "point": point}  # what a click on the viewer stores
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    wx, wy = (int(round(float(v))) for v in lattice.window_origin(i, j))
    assert f"The window at {wx:,}, {wy:,} (level-0 px, top-left)" in texts(at)  # one position: the window's top-left
    captions = [c for image in at.image for c in image.captions]
    assert any(f"map probability **{float(heat[i, j]):.3f}**" in c for c in captions), captions
    grad_cam = [c for c in captions if c.startswith("Grad-CAM")]
    assert grad_cam and not re.search(r"0\.\d{3}", grad_cam[0]), grad_cam  # one figure: no second probability
    assert viewer_data(at)["marker"][:2] == [pytest.approx(v) for v in lattice.window_origin(i, j)]
    # the window goes to Explain, explained there with the same model
    [to_explain] = [b for b in at.button if b.label == "Open this window in Explain"]
    to_explain.click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "A window from the Slides page" in [h.value for h in at.subheader]
    # Explain opened the same window by its address, and names it by the same position and the map's figure
    address = {k: at.query_params[k] for k in ("window_slide", "window_x", "window_y", "window_stride")}
    assert address == {"window_slide": sid, "window_x": str(wx), "window_y": str(wy), "window_stride": "32"}
    [caption] = [c for image in at.image for c in image.captions if " at (" in c]
    assert f" at ({wx:,}, {wy:,}) · {probability_text(float(heat[i, j]))} · focus " in caption


@pytest.mark.slow  # three slides written: outside the fast lane
def test_a_link_to_a_slide_opens_it_and_the_address_follows_the_choice(tmp_path, monkeypatch):
    """?slide=<id> opens that slide among several (it once opened the first whatever the link said); choosing another
    puts it in the address, and an id that is not in the library is passed over for the first slide."""
    root = _workspace(tmp_path / "ws")
    library = SlideLibrary(root)
    ids = [library.add_file(real_mosaic_slide(tmp_path / name, cols=3, rows=2, tumour=None, seed=seed)[0]).id
           for seed, name in enumerate(("first", "second", "third"))]
    monkeypatch.setenv(ENV_VAR, str(root))
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["slide"] = ids[1]
    at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="slide").value == ids[1]
    at.selectbox(key="slide").set_value(ids[2]).run()
    assert at.selectbox(key="slide").value == ids[2] and at.query_params["slide"] == ids[2]
    at.run()  # and it stays chosen
    assert at.selectbox(key="slide").value == ids[2]
    stray = AppTest.from_file(APP, default_timeout=120)
    stray.query_params["slide"] = "0123456789abcdef"
    stray.switch_page(PAGE).run()
    assert not stray.exception and stray.selectbox(key="slide").value in ids


def test_a_click_on_a_window_without_a_probability_names_why(analysed_workspace, monkeypatch):
    """A window the map gives no probability (glass, or the guard's out of scope) is shown with the reason in place of
    one, and still with its Grad-CAM; the page does not break over the missing figure."""
    from pcam_core.slides.viewer import OUT_OF_SCOPE

    root, sid = analysed_workspace
    at = open_slides(root, monkeypatch)
    folder = SlideLibrary(root).analysis_folder(sid)
    lattice = lattice_of(load_summary(folder))
    heat = load_heat(folder)
    reasons = {"not scored (too little tissue)": np.isnan(heat), "**out of scope**": heat == OUT_OF_SCOPE}
    found = {reason: np.argwhere(cells)[0] for reason, cells in reasons.items() if cells.any()}
    assert found, "the slide has no window without a probability to click"
    for reason, (i, j) in found.items():
        point = (int((j + 0.5) * lattice.cell_px), int((i + 0.5) * lattice.cell_px))
        at.session_state[f"slides_view_{sid}"] = {"goto": None, "point": point}
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        captions = [c for image in at.image for c in image.captions]
        assert any(reason in c and "map probability" not in c for c in captions), (reason, captions)
        gradcam = [c for c in captions if c.startswith("Grad-CAM")]
        assert gradcam and "no probability" in gradcam[0] and "probability is the map's" not in gradcam[0], captions


def _wait_for(library: SlideLibrary, sid: str, states: tuple[str, ...], timeout: float = 240.0, run: str | Path = "bundled") -> str:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        state = library.analysis(sid, run).state
        if state in states:
            return state
        time.sleep(0.5)
    raise AssertionError(f"{sid} never reached {states} (now {library.analysis(sid, run).state})")


@pytest.mark.slow  # a real background analysis
def test_the_shipped_fast_scanner_can_analyse_a_slide_from_the_page_and_its_analysis_is_shown(tmp_path, monkeypatch):
    """Beside the sidebar's run, the page offers the exactly-scanning candidate (candidates/pcamscan) for new analyses,
    with what each costs; chosen, Analyse queues the ticked slide with it, and its finished analysis is the one shown."""
    from pcam_app.slide_library import SCANNER

    root = _workspace(tmp_path / "ws")
    source, _ = real_mosaic_slide(tmp_path / "source", cols=6, rows=4, tumour=(1, 3, 2, 4))
    sid = SlideLibrary(root).add_file(source).id
    at = open_slides(root, monkeypatch)
    choice = at.radio(key="slide_analysis_model")
    assert choice.value == "bundled"  # the sidebar's run until another is chosen
    assert choice.options == ["bundled model (real tissue)", "pcamscan (fast scan)"], choice.options
    assert "hours" in " ".join(choice.proto.captions) and "minutes" in " ".join(choice.proto.captions)
    assert "with its own slide decision" in choice.proto.captions[1]  # candidates/pcamscan/slide_decision.json
    choice.set_value(str(SCANNER)).run()
    assert "Analyse uses pcamscan" in "\n".join(e.label for e in at.expander)
    assert "with pcamscan" in texts(at)  # not analysed yet: press Analyse (with pcamscan)
    at.checkbox(key=f"slide-pick-{sid}").check().run()
    [analyse] = [b for b in at.button if b.label.startswith("Analyse 1 slide")]
    analyse.click().run()
    assert not at.exception, [e.value for e in at.exception]
    library = SlideLibrary(root)
    assert library.analysis(sid).state == "none"  # nothing with the bundled model
    _wait_for(library, sid, ("done",), run=SCANNER)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert {m.label for m in at.metric} >= {"Slide score", "Regions", "Size class"}
    assert viewer_data(at)["heatmap"]["url"].startswith(f"slides-api/{sid}/pcamscan-s32/heatmap.png")


def _damage_overview(path: Path) -> None:
    """Overwrite the JPEG tiles of the slide's coarsest levels with zeros (the file still opens)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        spans = [(o, n) for page in tif.pages[1:] for o, n in zip(page.dataoffsets, page.databytecounts)]
    with open(path, "r+b") as handle:
        for offset, count in spans:
            handle.seek(offset)
            handle.write(bytes(count))


@pytest.mark.slow
def test_the_page_follows_real_analyses_queued_running_done_and_failed(tmp_path, monkeypatch):
    """Real background analyses (the library's queue runner and `pcam slide` processes, one at a time): a slide
    waiting its turn is shown queued, the one at work as being analysed, then done with its figures; a slide
    whose overview level is damaged while it waits in the queue fails, and the page says why."""
    import shutil
    import time

    root = _workspace(tmp_path / "ws")
    source, _ = real_mosaic_slide(tmp_path / "source", cols=6, rows=4, tumour=(1, 3, 2, 4))  # small: three analyses in turn
    first, second, broken = (tmp_path / "slides" / name for name in ("a.tif", "b.tif", "c.tif"))
    first.parent.mkdir()
    for path in (first, second, broken):
        shutil.copyfile(source, path)
    library = SlideLibrary(root)
    ids = [library.add_file(path).id for path in (first, second, broken)]
    library.slides()  # listed once, as the page does: metadata and thumbnails cached
    library.start(ids)
    _damage_overview(broken)  # the last in the queue is damaged before its turn
    at = open_slides(root, monkeypatch)
    at.selectbox(key="slide").set_value(ids[1]).run()
    shown = texts(at)
    assert "is queued for analysis" in shown or "is being analysed" in shown or library.analysis(ids[1]).state == "done", shown
    _wait_for(library, ids[0], ("running", "done"))
    at.selectbox(key="slide").set_value(ids[0]).run()
    assert "is being analysed" in texts(at) or library.analysis(ids[0]).state == "done"
    _wait_for(library, ids[1], ("done",))
    at.selectbox(key="slide").set_value(ids[1]).run()
    assert not at.exception, [e.value for e in at.exception]
    assert {m.label for m in at.metric} >= {"Slide score", "Regions", "Size class"}
    # the damage shows either when the slide is listed (its overview no longer reads: listed with the error, not
    # offered for viewing) or when its analysis reads it (failed, with the reason): the page says so either way
    deadline = time.time() + 240
    while not library.entry(ids[2]).error and library.analysis(ids[2]).state != "failed" and time.time() < deadline:
        time.sleep(0.5)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    errors = "\n".join(e.value for e in at.error)
    entry = library.entry(ids[2])
    if entry.error:
        assert entry.error in errors and "c.tif" in entry.error, (entry.error, errors)
        assert ids[2] not in at.selectbox(key="slide").options
    else:
        at.selectbox(key="slide").set_value(ids[2]).run()
        assert "c.tif could not be analysed" in "\n".join(e.value for e in at.error)


def _copy_analysis(source_root: Path, source_id: str, root: Path, sid: str) -> None:
    import shutil

    shutil.copytree(SlideLibrary(source_root).analysis_folder(source_id).path, SlideLibrary(root).analysis_folder(sid).path)


def test_a_slide_analysed_by_the_bundled_model_shows_its_map_whatever_run_the_sidebar_selects(analysed_workspace, tmp_path, monkeypatch):
    from helpers import running_run

    source_root, source_id = analysed_workspace
    root = _workspace(tmp_path / "ws")
    sid = SlideLibrary(root).add_file(SlideLibrary(source_root).entry(source_id).path).id
    _copy_analysis(source_root, source_id, root, sid)
    running_run(root / "runs", "still-training")  # a run of this workspace, selected in the sidebar
    at = open_slides(root, monkeypatch)
    at.selectbox(key="run").set_value("still-training").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "has not been analysed" not in texts(at)
    assert "Slide score" in {m.label for m in at.metric} and "bundled model" in texts(at)
    assert viewer_data(at)["heatmap"]["url"].startswith(f"slides-api/{sid}/bundled-s32/heatmap.png")
    assert "Analyse uses still-training" in "\n".join(e.label for e in at.expander)


def test_the_same_slide_uploaded_and_in_a_folder_shows_its_origin_and_opens_the_analysis_of_either(analysed_workspace, tmp_path,
                                                                                                    monkeypatch):
    source_root, source_id = analysed_workspace
    root = _workspace(tmp_path / "ws")
    library = SlideLibrary(root)
    path = Path(SlideLibrary(source_root).entry(source_id).path)
    library.add_folder(path.parent)
    in_folder = next(e for e in library.slides() if e.path == str(path))
    _copy_analysis(source_root, source_id, root, in_folder.id)
    uploaded = library.add_upload("slide.tif", path.read_bytes())
    at = open_slides(root, monkeypatch)
    box = at.selectbox(key="slide")
    labels = box.options  # two entries, told apart by where they come from
    assert len(labels) == len(set(labels)) == 2
    upload_label = next(label for label in labels if "· uploaded" in label)
    assert "same slide as slide.tif (in a registered folder" in upload_label
    box.set_value(uploaded.id).run()
    assert not at.exception, [e.value for e in at.exception]
    assert "has not been analysed" not in texts(at) and "Slide score" in {m.label for m in at.metric}
    assert viewer_data(at)["heatmap"]["url"].startswith(f"slides-api/{in_folder.id}/bundled-s32/")


def test_slides_registered_appear_at_once_unreadable_ones_are_counted_and_slides_can_be_removed(tmp_path, monkeypatch):
    from pcam_core.slides.demo import DemoSlideSpec, make_demo_slide

    folder = tmp_path / "slides"
    make_demo_slide(folder / "demo", DemoSlideSpec(width=1024, height=768))
    (folder / "demo" / "slide.tif").rename(folder / "one.tif")
    (folder / "broken.tif").write_bytes(b"not a slide" * 100)
    root = _workspace(tmp_path / "ws")
    at = open_slides(root, monkeypatch)
    [field] = [t for t in at.text_input if t.label == "Folder of slides"]
    field.input(str(folder))
    [submit] = [b for b in at.button if b.label == "Register the folder"]
    submit.click().run()
    assert not at.exception, [e.value for e in at.exception]
    shown = texts(at)
    assert f"Registered {folder}" in "\n".join(s.value for s in at.success)
    assert "one.tif" in shown and "broken.tif" in shown  # listed in the same run, no reload
    assert any("Library: 2 slide(s), 1 unreadable" in e.label for e in at.expander)
    one = next(e for e in SlideLibrary(root).slides() if e.name == "one.tif")
    [remove] = [b for b in at.button if b.key == f"slide-remove-{one.id}"]
    remove.click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Removed one.tif from the library; the file stays" in "\n".join(s.value for s in at.success)
    assert "one.tif" not in " ".join(m.value for m in at.markdown) and (folder / "one.tif").exists()
    assert any("Library: 1 slide(s), 1 unreadable" in e.label for e in at.expander)


@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
@pytest.mark.parametrize("kind", ["synthetic", "skin"])
def test_a_slide_out_of_the_models_scope_is_not_assessed(kind, tmp_path, monkeypatch):
    """The SYNTHETIC demo slide and a real Aperio scan of skin (CC0), analysed with the bundled model: the page says
    the model was not made for them, gives no call, no slide score and no size class."""
    from pcam_core.scoring_options import ScoringOptions
    from pcam_core.slides.batch import analyse
    from pcam_core.slides.demo import DemoSlideSpec, make_demo_slide

    root = _workspace(tmp_path / "ws")
    if kind == "synthetic":
        make_demo_slide(tmp_path / "demo", DemoSlideSpec(width=1536, height=1024))
        path = tmp_path / "demo" / "slide.tif"
    else:
        path = REPO / "tests" / "data" / "slides" / "CMU-1-Small-Region.svs"
    library = SlideLibrary(root)
    sid = library.add_file(path).id
    analyse("bundled", path, library.analysis_folder(sid, stride=96).path, ScoringOptions(device="cpu", workers=0, tta=False), stride=96)
    at = open_slides(root, monkeypatch)
    errors = [e.value for e in at.error]
    assert any("Not assessed: the model was not made for this slide" in e for e in errors), errors
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Size class"] == metrics["Call at 0.5"] == metrics["Slide score"] == "—"  # none: the error says why
    # nor an area, regions or diameter: "0.000 mm²" would read as a negative finding (and a region listed beside it)
    assert metrics["Tumour area, mm²"] == metrics["Regions"] == metrics["Largest diameter"] == "—"
    fraction = load_summary(library.analysis_folder(sid, stride=96))["scope"]["out_of_scope_fraction"]
    assert f"{fraction:.1%} of this slide's scored tissue lies outside it" in texts(at)  # one figure, said alike twice
    assert f"{fraction:.1%} of the scored tissue is unlike" in " ".join(errors) or fraction <= 0.5
    assert "(stride 96): done, not assessed (out of the model's scope)" in texts(at)  # the library's line: no score
    summary = load_summary(library.analysis_folder(sid, stride=96))
    assert summary["call"] == summary["size_class"] == "not assessed"
    assert all(region["size_class"] is None for region in summary["region_list"])  # not even a reported region's
    # nor "Tumor" annotations in QuPath (QA: three on this skin slide): the GeoJSON says the slide was not assessed
    regions = json.loads(library.analysis_folder(sid, stride=96).regions_geojson.read_text())
    assert regions["properties"]["call"] == "not assessed" and (regions["features"] or kind == "synthetic")
    for feature in regions["features"]:
        props = feature["properties"]
        assert props["classification"]["name"] == "Not assessed (out of scope)" and props["assessed"] is False
        assert props["name"].endswith("(slide not assessed: out of the model's scope)")
    assert "Trained on lymph-node H&E at 0.972 µm/px (PatchCamelyon) only." in texts(at)


def test_the_case_view_groups_slides_into_a_patient_with_its_pn_stage(analysed_workspace, monkeypatch):
    """The form saves a case; the table shows its stage by the CAMELYON17 rules, the slide that decides it, and a slide
    listed but not analysed keeps the stage provisional."""
    from pcam_core.workspace.slide_cases import library_cases, load_cases, save_case

    root, sid = analysed_workspace
    library = SlideLibrary(root)
    try:
        at = open_slides(root, monkeypatch)
        [patient] = [t for t in at.text_input if t.label == "Patient"]
        patient.set_value("patient_004")
        [select] = [m for m in at.multiselect if "lymph-node slides" in m.label]
        select.set_value([sid])
        [save] = [b for b in at.button if b.label == "Save case"]
        save.click().run()
        assert not at.exception, [e.value for e in at.exception]
        assert load_cases(library.root) == {"patient_004": [sid]}
        [case] = library_cases(library, stride=32)
        summary = json.loads(library.analysis(sid, stride=32).folder.summary_json.read_text())
        assert case.classes == {library.entry(sid).name: summary["size_class"]} and not case.provisional
        table = at.dataframe[0].value
        assert list(table["patient"]) == ["patient_004"] and table["pN stage"][0] == case.stage

        save_case(library.root, "patient_004", [sid, "0123456789abcdef"])  # a slide no longer in the library
        at = open_slides(root, monkeypatch)
        assert at.dataframe[0].value["pN stage"][0] == f"{case.stage} (provisional)"
        with pytest.raises(ValueError, match="cannot hold a comma"):
            save_case(library.root, "a,b", [sid])
    finally:
        save_case(library.root, "patient_004", [])


@pytest.mark.slow
def test_a_case_report_prints_the_stage_why_it_is_provisional_the_reviews_a_sign_off_and_each_slide(analysed_workspace,
                                                                                                     tmp_path, monkeypatch):
    """The case view offers each case's report; the report (what the button downloads) opens with the case: the pN
    stage, provisional because a SYNTHETIC demo slide is not assessed (out of the model's scope), the reviews, a
    sign-off with name, date and signature lines; then each slide's own report."""
    from helpers import analysed_demo_slide
    from pcam_core.workspace.case_report import case_report_html
    from pcam_core.workspace.reviews import ModelCall, ReviewStore, ReviewTarget
    from pcam_core.workspace.slide_cases import library_cases, save_case
    from pcam_core.workspace.slide_reviews import REVIEW_SOURCE

    source_root, source_id = analysed_workspace
    root = _workspace(tmp_path / "ws")
    library = SlideLibrary(root)
    sid = library.add_file(SlideLibrary(source_root).entry(source_id).path).id
    _copy_analysis(source_root, source_id, root, sid)
    _, _, demo = analysed_demo_slide(root, width=512, height=512)
    save_case(library.root, "patient_007", [sid, demo])
    store = ReviewStore(root / "reviews.sqlite")
    store.add_review(ReviewTarget.slide_region(REVIEW_SOURCE, sid, region="1"), "agree", "Dr Ada", note="clear tumour",
                     model=ModelCall.at(0.9, 0.5, "bundled"))
    [case] = library_cases(library, stride=32)
    assert case.provisional and case.unread == ["slide.tif"]

    at = open_slides(root, monkeypatch)
    line = next(m.value for m in at.markdown if m.value.startswith("**patient_007**"))
    assert f"pN stage **{case.stage}** (provisional: slide.tif not assessed)" in line
    assert [b for b in at.get("download_button") if b.label == "Case report (HTML, printable)"]

    report = case_report_html(library, "patient_007", stride=32, reviews=store)
    cover, *slides = report.split('<div class="section-break"><h1>')
    assert "Case report: patient_007" in cover and f"{case.stage} (provisional)" in cover
    assert "slide.tif: not assessed (the model was not made for this slide" in cover
    assert "SYNTHETIC" in cover and "the stage can only rise" in cover
    assert "region #1" in cover and "agree “clear tumour”: Dr Ada" in cover
    assert "Pathologist's sign-off" in cover and all(f"<span>{w}</span>" in cover for w in ("Name", "Date", "Signature"))
    assert [s.split("<", 1)[0] for s in slides] == ["Slide report: slide.tif"] * 2  # each slide's report, in the case's order
    assert "agree “clear tumour”: Dr Ada" in slides[0] and "No size class is given" in slides[1]
    with pytest.raises(KeyError, match="no case for patient 'nobody'"):
        case_report_html(library, "nobody")


@pytest.mark.slow
def test_truth_loaded_for_a_slide_is_drawn_over_its_map_matched_with_its_regions(analysed_workspace, tmp_path, monkeypatch):
    """A QuPath GeoJSON of the slide's tumour, given by path: the viewer gets the lesion's outline and the regions
    the slide reports, matched by the FROC rule (the library's overlay, unchanged), the page counts them; a wrong file is
    refused."""
    from pcam_core.evaluation.overlay import read_truth_file, truth_overlay
    from pcam_core.slides.viewer import regions

    root, sid = analysed_workspace
    truth = mosaic_truth_geojson(tmp_path / "mosaic.geojson")
    at = open_slides(root, monkeypatch)
    assert viewer_data(at)["truth"] is None
    at.text_input(key=f"slide_truth_{sid}_path").input(str(truth))
    at.button(key=f"slide_truth_{sid}_load").click().run()
    assert not at.exception, [e.value for e in at.exception]
    folder = SlideLibrary(root).analysis_folder(sid)
    lattice = lattice_of(load_summary(folder))
    reported = [r for r in regions(folder) if r["reported"]]  # a region below the reporting threshold claims nothing
    assert len(reported) < len(regions(folder))
    expected = truth_overlay(read_truth_file(truth, lattice.width, lattice.height), reported, mpp=lattice.mpp,
                             width=lattice.width, height=lattice.height)
    drawn = viewer_data(at)["truth"]
    assert drawn["features"] == json.loads(json.dumps(expected["features"]))
    [lesion] = [f["properties"] for f in drawn["features"] if f["properties"]["kind"] == "lesion"]
    assert lesion["match"] == "found" and lesion["size_class"] == "micro"  # the model finds the 0.7 x 0.5 mm block
    assert set(drawn["colours"]) == set(drawn["words"]) >= {"found", "miss", "true_positive", "false_alarm", "itc"}
    counts = expected["counts"]
    [said] = [s.value for s in at.success if s.value.startswith("Truth from")]
    assert f"1 of 1 lesion(s) found, 0 missed; {counts['true_positive']} region(s) on a lesion, {counts['false_alarm']} false alarm(s)" in said
    # a file of another kind is refused, and the viewer draws no truth
    other = tmp_path / "notes.txt"
    other.write_text("tumour")
    at.text_input(key=f"slide_truth_{sid}_path").input(str(other))
    at.button(key=f"slide_truth_{sid}_load").click().run()
    assert any("not a truth file" in e.value for e in at.error) and viewer_data(at)["truth"] is None


def test_slides_that_would_read_alike_in_the_picker_are_told_apart():
    """Two uploads both named slide.tif: the picker adds their size, and their id where the size is the same too;
    a slide with no namesake keeps its short label."""
    def entry(id_: str, width: int, name: str = "slide.tif") -> SlideEntry:
        return SlideEntry(id=id_, path=f"/uploads/{id_}/{name}", name=name, file_size=3 * 1024**2, origin="upload",
                          width=width, height=576, mpp=0.972, levels=1)

    a, b, c, other = entry("a" * 16, 672), entry("b" * 16, 1344), entry("c" * 16, 1344), entry("d" * 16, 672, "lymph.svs")
    by_id = {e.id: e for e in (a, b, c, other)}
    labels = slide_labels(by_id)
    assert len(set(labels.values())) == 4
    assert labels[a.id] == "slide.tif · uploaded · 672 × 576 px, 3.0 MB"
    assert labels[b.id] == "slide.tif · uploaded · 1,344 × 576 px, 3.0 MB · id bbbbbbbb"
    assert labels[other.id] == "lymph.svs · uploaded"
