"""Slides: a whole slide with its tumour map (`pcam slide`'s analysis), from the whole section down to full
resolution; the slide's figures; its tumour regions, largest or most probable first, each one click away in the
viewer; the 96-px window under a click with its probability and Grad-CAM; and the analysis files to download."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from pcam_app import heatmaps, notes, shell
from pcam_app.components.slide_viewer import slide_viewer
from pcam_app.sidebar import BUNDLED_CHOICE, switch_page
from pcam_core.bundled import BUNDLED_DIR, is_bundled
from pcam_core.runs import RunDir
from pcam_core.slides.index import SlideIndex, ViewerSlide
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
from pcam_core.slides.reader import open_slide
from pcam_core.workspace.gallery import outline_centre

SIZE_CLASSES = {"none": "none", "itc": "isolated tumour cells (≤ 0.2 mm)", "micro": "micrometastasis (≤ 2 mm)",
                "macro": "macrometastasis (> 2 mm)"}
SORTS = {"size": "Largest first", "probability": "Most probable first"}
REGIONS_LISTED = 30
SYNTHETIC_SLIDE = "SYNTHETIC demo slide, not real tissue."


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


ctx = shell.context()
st.title("Slides")
st.caption("A whole slide with the model's tumour map: pan and zoom from the section down to full resolution, walk the "
           "tumour regions, and click the slide to see the 96-pixel window the model scored there.")

index = SlideIndex(ctx.workspace.root / "slides")  # TODO(slides-library): the workspace's slide library
try:
    entries = index.entries()
except (OSError, ValueError, KeyError) as err:
    shell.fail(f"Cannot read the list of slides in {index.file}: {err}")
if not entries:
    st.info("No slides yet. Make the SYNTHETIC demo slide and analyse it, then register it:\n\n"
            "```\npcam demo-slide --out slides/demo && pcam slide --run bundled --input slides/demo/slide.tif --out maps/demo\n```",
            icon=":material/biotech:")
    st.stop()

by_id = {entry.slide_id: entry for entry in entries}
chosen = st.selectbox("Slide", list(by_id), key="slide", bind="query-params",
                      format_func=lambda i: f"{by_id[i].name} · SYNTHETIC" if by_id[i].synthetic else by_id[i].name)
slide: ViewerSlide = by_id[chosen]
if not slide.path.is_file():
    shell.fail(f"The file of slide {slide.name!r} is missing: {slide.path}")

folder = slide.analysis
summary, region_list = None, []
if folder is not None and folder.is_complete():
    try:
        summary, region_list = _analysis(str(folder.path), folder.summary_json.stat().st_mtime_ns)
        lattice = lattice_of(summary)
    except (OSError, ValueError, KeyError) as err:
        shell.fail(f"Cannot read the analysis of {slide.name} in {folder.path}: {err}")
synthetic = slide.synthetic or is_synthetic(slide.path, summary)
notes.synthetic_banner(synthetic, SYNTHETIC_SLIDE)

if summary is None:
    # TODO(slides-library): the analysis' state (queued, running with windows/s and time left, failed, stopped)
    st.info(f"{slide.name} has no complete analysis yet: the slide is shown without a tumour map.", icon=":material/hourglass_top:")
    try:
        with open_slide(slide.path) as opened:
            (width, height), mpp = opened.dimensions, opened.mpp
    except (OSError, ValueError) as err:
        shell.fail(f"Cannot open slide {slide.name}: {err}")
    slide_viewer(slide.slide_id, width=width, height=height, mpp=mpp, heatmap=None, tissue=None, threshold=0.5, regions=[],
                 key=f"viewer-{slide.slide_id}")
    st.stop()

threshold = float(summary["threshold"])
score = float(summary["slide_score"])
cols = st.columns(6)
cols[0].metric("Slide score", f"{score:.3f}", help="The highest cell probability on the slide.")
cols[1].metric(f"Call at {threshold:g}", "tumour" if score >= threshold else "no tumour",
               help="Tumour when the slide score reaches the analysis threshold.")
cols[2].metric("Tumour area", f"{summary['tumour_area_mm2']:.3f} mm²")
cols[3].metric("Regions", summary["regions"])
cols[4].metric("Largest diameter", f"{summary['largest_diameter_mm']:.2f} mm")
cols[5].metric("Size class", summary["size_class"], help=SIZE_CLASSES.get(summary["size_class"], ""))
st.caption(f"Model {summary.get('model')} ({'bundled' if is_bundled(str(summary.get('run'))) else summary.get('run')}), "
           f"stride {lattice.stride} PCam px (cells of {lattice.cell_mm * 1000:.0f} µm), threshold {threshold:g}; "
           f"{summary['windows_scored']:,} windows scored. Diameters measured on cells run up to one cell larger than the truth.")

state_key = f"slides_view_{slide.slide_id}"
view = st.session_state.setdefault(state_key, {"goto": None, "point": None})
heat = load_heat(folder)
extents = overlay_extents(folder, lattice)
window = None
if view["point"] is not None:
    try:
        window = window_at(slide.path, heat, lattice, *view["point"])
    except (OSError, ValueError) as err:
        st.warning(f"Cannot read the window there: {err}")
clicked = slide_viewer(
    slide.slide_id, width=lattice.width, height=lattice.height, mpp=lattice.mpp,
    heatmap=extents["heatmap"], tissue=extents["tissue"],
    threshold=threshold, regions=[{k: r[k] for k in ("id", "rings", "bbox", "longest_diameter_mm")} for r in region_list],
    goto=view["goto"], marker=(window["x"], window["y"], window["size"]) if window else None, key=f"viewer-{slide.slide_id}")
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
            if st.button("Open Explain with this model", icon=":material/center_focus_strong:", key="to_explain"):
                switch_page("pages/explain.py", {"run": BUNDLED_CHOICE if is_bundled(run.path) else run.run_id})

st.subheader("Tumour regions")
if not region_list:
    st.caption(f"No cell reaches the threshold {threshold:g}: no regions.")
else:
    order = st.segmented_control("Sort", list(SORTS), format_func=SORTS.get, default="size", key="region_sort",
                                 label_visibility="collapsed") or "size"
    key = "area_mm2" if order == "size" else "max_probability"
    ranked = sorted(region_list, key=lambda r: -r[key])
    for region in ranked[:REGIONS_LISTED]:
        c = st.columns([1, 2, 2, 2, 2], vertical_alignment="center")
        if c[0].button(f"Go to #{region['id']}", key=f"goto-{region['id']}", icon=":material/my_location:"):
            view["goto"] = {"bbox": region["bbox"], "nonce": time.time()}
            st.rerun()
        c[1].write(f"**{region['longest_diameter_mm']:.2f} mm** longest diameter")
        c[2].write(f"{region['area_mm2']:.3f} mm²")
        c[3].write(f"max probability {region['max_probability']:.3f}")
        c[4].write(f"{region['cells']} cells")
    if len(ranked) > REGIONS_LISTED:
        st.caption(f"{len(ranked) - REGIONS_LISTED} smaller regions are in the GeoJSON.")
    with st.expander("All regions as a table"):
        st.dataframe(pd.DataFrame(ranked).drop(columns=["rings"]), hide_index=True)

st.subheader("Downloads")
d = st.columns(3)
for column, path, label, mime in ((d[0], folder.regions_geojson, "Regions (GeoJSON, for QuPath)", "application/geo+json"),
                                  (d[1], folder.heatmap_tif, "Heat map (pyramidal TIFF)", "image/tiff"),
                                  (d[2], folder.tiles_csv, "Windows (tiles.csv)", "text/csv")):
    if path.is_file():
        column.download_button(label, path.read_bytes(), file_name=f"{slide.slide_id}-{path.name}", mime=mime,
                               on_click="ignore", icon=":material/download:")
# TODO(slides-library): the printable report (pcam_core.slides.report) once it is merged
if synthetic:
    st.caption(f"**{SYNTHETIC_SLIDE}** Everything on this page was computed on generated pixels.")
