"""Slides: a whole slide with its tumour map (`pcam slide`'s analysis), from the whole section down to full
resolution; the slide's figures; its tumour regions, largest or most probable first, each one click away in the
viewer; the 96-px window under a click with its probability and Grad-CAM; and the analysis files to download."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import streamlit as st

from pathlib import Path

from pcam_app import heatmaps, notes, patches, reviews, shell
from pcam_app.slide_library import add_slides, analysis_controls, slide_list
from pcam_app.components.slide_viewer import slide_viewer
from pcam_app.sidebar import BUNDLED_CHOICE, switch_page
from pcam_core.bundled import BUNDLED, BUNDLED_DIR, is_bundled
from pcam_core.calibration import run_triage
from pcam_core.triage import triage_calls
from pcam_core.runs import RunDir
from pcam_core.slides.viewer import (
    is_synthetic,
    lattice_of,
    load_heat,
    load_summary,
    overlay_extents,
    regions,
    window_at,
)
from pcam_core.slides.folder import AnalysisFolder
from pcam_core.staging import SIZE_CLASS_WORDS
from pcam_core.workspace.reviews import ModelCall, ReviewTarget
from pcam_core.workspace.slides import SlideEntry
from pcam_core.workspace.gallery import outline_centre

SORTS = {"size": "Largest first", "probability": "Most probable first"}
REGIONS_LISTED = 30
STRIDE = 32  # the library's analyses
SYNTHETIC_SLIDE = "SYNTHETIC demo slide, not real tissue."
REVIEW_SOURCE = "slides"  # the data name slide windows and regions are reviewed under


@st.cache_data(max_entries=16, show_spinner=False)
def _analysis(path: str, version: int) -> tuple[dict, list[dict]]:
    folder = AnalysisFolder(path)
    return load_summary(folder), regions(folder)


def _run_of(summary: dict) -> RunDir | None:
    """The run that made the analysis, to explain its windows with (None when it is gone)."""
    run = str(summary.get("run", ""))
    if is_bundled(run):
        return RunDir(BUNDLED_DIR)
    return RunDir(run) if run and RunDir(run).path.is_dir() else None


def triage_cells(heat: np.ndarray, summary: dict) -> None:
    """The cells of the map called normal / refer / tumour by the run's split-conformal triage (the calls of
    `pcam predict --triage` and the Predict page), and the slide's call from them."""
    target = st.select_slider("Target sensitivity", [0.9, 0.95, 0.98, 0.99], value=0.98, key="slide_triage_target")
    try:
        thresholds = run_triage(str(summary.get("run")), target)
    except (OSError, ValueError) as err:
        st.caption(f"No triage for this model: {err}")
        return
    scored = heat[np.isfinite(heat) & (heat >= 0)]
    calls = triage_calls(scored, thresholds)
    counts = {call: int((calls == call).sum()) for call in ("tumour", "refer", "normal")}
    slide_call = "tumour" if counts["tumour"] else "refer" if counts["refer"] else "normal"
    c = st.columns(4)
    c[0].metric("Slide by triage", slide_call, help="tumour when a cell is called tumour; else refer when a cell is "
                "referred; else normal.")
    for column, call in zip(c[1:], ("tumour", "refer", "normal")):
        column.metric(f"Cells called {call}", f"{counts[call]:,}")
    st.caption(f"normal below {thresholds.normal_below:.3f}, tumour above {thresholds.tumour_above:.3f}. "
               f"{thresholds.guarantee()} The promise is per patch: a slide has thousands of cells, so a normal slide "
               "is rarely called normal at a high target; read the referred cells, not the slide's word alone.")


ctx = shell.context()
st.title("Slides")
st.caption("A whole slide with the model's tumour map: pan and zoom from the section down to full resolution, walk the "
           "tumour regions, and click the slide to see the 96-pixel window the model scored there.")

library = ctx.workspace.slide_library
run = BUNDLED if ctx.run is None or ctx.bundled else str(ctx.run.path)  # the sidebar's run; the bundled model without one
try:
    listed = library.slides()
except (OSError, ValueError) as err:
    shell.fail(f"Cannot list the slides of {library.root}: {err}")
entries = [entry for entry in listed if not entry.error]
with st.expander(f"Library: {len(entries)} slide(s), analyses with {'the bundled model' if run == BUNDLED else Path(run).name}",
                 expanded=not entries, icon=":material/folder_open:"):
    add_slides(library)
    chosen_ids = slide_list(library, run, stride=STRIDE, slides=listed)
    analysis_controls(library, chosen_ids, run, stride=STRIDE)
if not entries:
    st.stop()

by_id = {entry.id: entry for entry in entries}
chosen = st.selectbox("Slide", list(by_id), key="slide", bind="query-params", format_func=lambda i: by_id[i].label)
slide: SlideEntry = by_id[chosen]
state = library.analysis(slide.id, run, stride=STRIDE)
summary, region_list = None, []
if state.state == "done":
    try:
        summary, region_list = _analysis(str(state.folder.path), state.folder.summary_json.stat().st_mtime_ns)
        lattice = lattice_of(summary)
    except (OSError, ValueError, KeyError) as err:
        shell.fail(f"Cannot read the analysis of {slide.name} in {state.folder.path}: {err}")
synthetic = slide.synthetic or is_synthetic(slide.path, summary)
notes.synthetic_banner(synthetic, SYNTHETIC_SLIDE)

if summary is None:
    waiting = {"none": "has not been analysed with this model yet: choose it in the library above and press Analyse",
               "queued": f"is queued for analysis (#{state.position})", "running": "is being analysed",
               "stopped": "was stopped during its analysis (Analyse resumes it)",
               "failed": f"could not be analysed: {state.error}"}[state.state]
    (st.error if state.state == "failed" else st.info)(f"{slide.name} {waiting}. The slide is shown without a tumour map.",
                                                       icon=":material/hourglass_top:")
    slide_viewer(slide.id, width=slide.width, height=slide.height, mpp=slide.mpp, analysis=None, heatmap=None, tissue=None,
                 threshold=0.5, regions=[], key=f"viewer-{slide.id}")
    st.stop()
folder = state.folder

threshold = float(summary["threshold"])
score = float(summary["slide_score"])
cols = st.columns(6)
cols[0].metric("Slide score", f"{score:.3f}", help="The highest cell probability on the slide.")
cols[1].metric(f"Call at {threshold:g}", "tumour" if score >= threshold else "no tumour",
               help="Tumour when the slide score reaches the analysis threshold.")
cols[2].metric("Tumour area, mm²", f"{summary['tumour_area_mm2']:.3f}", help="The area of the cells at or above the threshold.")
cols[3].metric("Regions", summary["regions"])
cols[4].metric("Largest diameter", f"{summary['largest_diameter_mm']:.2f} mm")
cols[5].metric("Size class", summary["size_class"], help=SIZE_CLASS_WORDS.get(summary["size_class"], ""))
st.caption(f"Model {summary.get('model')} ({'bundled' if is_bundled(str(summary.get('run'))) else summary.get('run')}), "
           f"stride {lattice.stride} PCam px (cells of {lattice.cell_mm * 1000:.0f} µm), threshold {threshold:g}; "
           f"{summary['windows_scored']:,} windows scored. Diameters measured on cells run up to one cell larger than the truth.")

heat = load_heat(folder)
with st.expander("Triage of the map's cells (target sensitivity)", icon=":material/rule:"):
    triage_cells(heat, summary)

state_key = f"slides_view_{slide.id}"
view = st.session_state.setdefault(state_key, {"goto": None, "point": None})
extents = overlay_extents(folder, lattice)
window = None
if view["point"] is not None:
    try:
        window = window_at(slide.path, heat, lattice, *view["point"])
    except (OSError, ValueError) as err:
        st.warning(f"Cannot read the window there: {err}")
clicked = slide_viewer(
    slide.id, width=lattice.width, height=lattice.height, mpp=lattice.mpp, analysis=state.key,
    heatmap=extents["heatmap"], tissue=extents["tissue"],
    threshold=threshold, regions=[{k: r[k] for k in ("id", "rings", "bbox", "longest_diameter_mm")} for r in region_list],
    goto=view["goto"], marker=(window["x"], window["y"], window["size"]) if window else None, key=f"viewer-{slide.id}")
if clicked is not None:
    view["point"] = (clicked["x"], clicked["y"])
    st.rerun()

if window is not None:
    st.subheader(f"The window at ({view['point'][0]:,}, {view['point'][1]:,})")
    left, right = st.columns([1, 2])
    what = {"scored": f"probability **{window['probability']:.3f}**", "not scored": "not scored (too little tissue)",
            "unreadable": "unreadable in the slide file"}[window["state"]]
    left.image(outline_centre(window["pixels"], scale=2, width=2), width=192,
               caption=f"cell ({window['row']}, {window['col']}): {what}", output_format="PNG")
    run = _run_of(summary)
    with right:
        if run is None:
            st.caption(f"The model that made this map ({summary.get('run')}) is not in this workspace: no Grad-CAM.")
        else:
            explanation = heatmaps.explain(run, window["pixels"][None])
            st.image(heatmaps.side_by_side(window["pixels"][None], explanation)[0], width=392, output_format="PNG",
                     caption=f"Grad-CAM (the window beside its heat map); probability in this pass "
                             f"{explanation.probabilities[0]:.3f}; the box is the central 32×32 the label describes.")
            if st.button("Open this window in Explain", icon=":material/center_focus_strong:", key="to_explain",
                         help="Explain shows it with every method, layer and scale, with this model."):
                sent = st.session_state.setdefault(patches.SLIDE_WINDOWS, [])
                name = f"{Path(slide.name).stem} x{int(window['x'])} y{int(window['y'])}"
                sent[:] = [w for w in sent if w["name"] != name][-(patches.SLIDE_WINDOWS_KEPT - 1):]
                sent.append({"name": name, "pixels": window["pixels"]})
                switch_page("pages/explain.py", {"run": BUNDLED_CHOICE if is_bundled(run.path) else run.run_id})
    if window["state"] == "scored":
        with left:
            reviews.review_widget(ctx.workspace.reviews(), ReviewTarget.slide_region(REVIEW_SOURCE, slide.id, x=window["x"], y=window["y"]),
                                  ModelCall.at(window["probability"], threshold, str(summary.get("run"))),
                                  key=f"window_{slide.id}", compact=True)

st.subheader("Tumour regions")
if not region_list:
    st.caption(f"No cell reaches the threshold {threshold:g}: no regions.")
else:
    order = st.segmented_control("Sort", list(SORTS), format_func=SORTS.get, default="size", key="region_sort",
                                 label_visibility="collapsed") or "size"
    key = "area_mm2" if order == "size" else "max_probability"
    ranked = sorted(region_list, key=lambda r: -r[key])
    for region in ranked[:REGIONS_LISTED]:
        c = st.columns([1, 2, 2, 2, 2, 1], vertical_alignment="center")
        if c[0].button(f"Go to #{region['id']}", key=f"goto-{region['id']}", icon=":material/my_location:"):
            view["goto"] = {"bbox": region["bbox"], "nonce": time.time()}
            st.rerun()
        c[1].write(f"**{region['longest_diameter_mm']:.2f} mm** longest diameter")
        c[2].write(f"{region['area_mm2']:.3f} mm²")
        c[3].write(f"max probability {region['max_probability']:.3f}")
        c[4].write(f"{region['cells']} cells")
        with c[5]:
            reviews.review_widget(ctx.workspace.reviews(), ReviewTarget.slide_region(REVIEW_SOURCE, slide.id, region=str(region["id"])),
                                  ModelCall.at(region["max_probability"], threshold, str(summary.get("run"))),
                                  key=f"region_{slide.id}_{region['id']}", compact=True)
    if len(ranked) > REGIONS_LISTED:
        st.caption(f"{len(ranked) - REGIONS_LISTED} smaller regions are in the GeoJSON.")
    with st.expander("All regions as a table"):
        st.dataframe(pd.DataFrame(ranked).drop(columns=["rings"]), hide_index=True)

st.subheader("Downloads")
d = st.columns(4)
for column, path, label, mime in ((d[0], folder.regions_geojson, "Regions (GeoJSON, for QuPath)", "application/geo+json"),
                                  (d[1], folder.heatmap_tif, "Heat map (pyramidal TIFF)", "image/tiff"),
                                  (d[2], folder.tiles_csv, "Windows (tiles.csv)", "text/csv"),
                                  (d[3], folder.report_html, "Report (HTML, printable)", "text/html")):
    if path.is_file():
        column.download_button(label, path.read_bytes(), file_name=f"{Path(slide.name).stem}-{path.name}", mime=mime,
                               on_click="ignore", icon=":material/download:")
if synthetic:
    st.caption(f"**{SYNTHETIC_SLIDE}** Everything on this page was computed on generated pixels.")
