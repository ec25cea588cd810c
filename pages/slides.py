"""Slides: a whole slide with its tumour map (`pcam slide`'s analysis), from the whole section down to full
resolution; the slide's figures; its tumour regions, largest or most probable first, each one click away in the
viewer; the 96-px window under a click with its probability and Grad-CAM; and the analysis files to download."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import streamlit as st

from pathlib import Path

from pcam_app import heatmaps, notes, patches, reviews, shell
from pcam_app.slide_cases import case_view
from pcam_app.slide_truth import truth_loader
from pcam_app.slide_library import (add_slides, analysis_controls, analysis_model, count_text, model_choice,
                                   resolution_form, slide_labels, slide_list, watch_analyses)
from pcam_app.components.slide_viewer import slide_viewer
from pcam_app.sidebar import BUNDLED_CHOICE, switch_page
from pcam_core.bundled import BUNDLED
from pcam_core.calibration import run_triage
from pcam_core.decision import DEFAULT_THRESHOLD, REFER, call
from pcam_core.triage import triage_calls
from pcam_core.runs import RunDir, resolve_run
from pcam_core.slides.analysis import WINDOW
from pcam_core.slides.decision import SLIDE_CALL_WORDS, rule_words
from pcam_core.slides.regions import region_name
from pcam_core.slides.scope_map import SCOPE_LINE
from pcam_core.slides.report import local_time, review_text, window_label
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
from pcam_core.workspace.slide_library import SlideEntry
from pcam_core.workspace.slide_queue import AnalysisState, run_key
from pcam_core.workspace.slide_reviews import REVIEW_SOURCE, regions_geojson, report_html, slide_reviews
from pcam_core.workspace.gallery import outline_centre

SORTS = {"size": "Largest first", "probability": "Most probable first"}
REGIONS_LISTED = 30
STRIDE = 32  # the library's analyses
SYNTHETIC_SLIDE = "SYNTHETIC demo slide, not real tissue."


@st.cache_data(max_entries=16, show_spinner=False)
def _analysis(path: str, version: str) -> tuple[dict, list[dict]]:
    folder = AnalysisFolder(path)
    return load_summary(folder), regions(folder)


def _run_of(summary: dict) -> RunDir | None:
    """The run that made the analysis, to explain its windows with (None when it is gone)."""
    try:
        return resolve_run(str(summary.get("run", ""))).folder
    except (OSError, ValueError):
        return None


def _shown_analysis(states: list[AnalysisState], run: str) -> AnalysisState | None:
    """The analysis to show: a choice among the slide's finished ones (any model; the one Analyse uses first), else
    the one under way, else None."""
    done = {f"{s.slide_id}/{s.key}": s for s in states if s.state == "done"}
    if done:
        mine = [k for k, s in done.items() if s.key == run_key(run, STRIDE)]
        order = mine + [k for k in done if k not in mine]
        if len(order) == 1:
            return done[order[0]]
        pick = st.selectbox("Analysis", order, key=f"slide-analysis-{states[0].slide_id}",
                            format_func=lambda k: f"{done[k].run_label}, stride {done[k].stride}",
                            help="Every finished analysis of this slide, by any model; the one Analyse uses first.")
        return done[pick]
    return states[0] if states else None


def triage_cells(heat: np.ndarray, summary: dict) -> None:
    """The cells of the map called normal / refer / tumour by the run's split-conformal triage (the calls of
    `pcam predict --triage` and the Predict page), and the slide's call from them."""
    target = st.select_slider("Target sensitivity", [0.9, 0.95, 0.98, 0.99], value=0.98, key="slide_triage_target")
    try:
        thresholds = run_triage(str(summary.get("run")), target, tta=bool(summary.get("tta")))
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
selected = resolve_run(ctx.run.path if ctx.run is not None else BUNDLED)  # the sidebar's run
model = analysis_model(selected)  # what Analyse uses: the sidebar's run, or the shipped fast scanner chosen below
try:
    listed = library.slides()
except (OSError, ValueError) as err:
    shell.fail(f"Cannot list the slides of {library.root}: {err}")
entries = [entry for entry in listed if not entry.error]
with st.expander(f"Library: {count_text(listed)}; Analyse uses {model.label}", expanded=not entries,
                 icon=":material/folder_open:", key="slide-library"):  # keyed: stays open as its label changes
    add_slides(library)
    chosen_ids = slide_list(library, listed)
    model = model_choice(selected)
    analysis_controls(library, chosen_ids, model.arg, stride=STRIDE)
watch_analyses(library, listed)
if not entries:
    st.stop()
case_view(library, entries, model.arg, stride=STRIDE, reviews=ctx.workspace.reviews())

by_id = {entry.id: entry for entry in entries}
# The slide is in the address (?slide=<id>), kept by hand: Streamlit's own binding matches an address against the
# options' labels, not their values, and so ignored every link to a slide.
asked = st.query_params.get("slide")
if asked in by_id and asked != st.session_state.get("slide"):
    st.session_state["slide"] = asked  # a link opened, or the address edited
labels = slide_labels(by_id)
chosen = st.selectbox("Slide", list(by_id), key="slide", format_func=labels.__getitem__,
                      on_change=lambda: st.query_params.update(slide=st.session_state["slide"]))
if st.query_params.get("slide") != chosen:
    st.query_params["slide"] = chosen
slide: SlideEntry = by_id[chosen]
if slide.mpp_source == "given" or slide.needs_mpp:
    resolution_form(library, slide)
state = _shown_analysis(library.analyses(slide), model.arg)
summary, region_list = None, []
if state is not None and state.state == "done":
    try:
        summary, region_list = _analysis(str(state.folder.path), state.version)
        lattice = lattice_of(summary)
    except (OSError, ValueError, KeyError) as err:
        shell.fail(f"Cannot read the analysis of {slide.name} in {state.folder.path}: {err}")
    slide = by_id.get(state.slide_id, slide)  # the copy (same content) the analysis was made of
synthetic = slide.synthetic or is_synthetic(slide.path, summary)
notes.synthetic_banner(synthetic, SYNTHETIC_SLIDE)

if summary is None:
    if state is None:
        waiting = f"has not been analysed yet: tick it in the library above and press Analyse (with {model.label})"
    else:
        waiting = {"queued": f"is queued for analysis with {state.run_label} (#{state.position})",
                   "running": f"is being analysed with {state.run_label}",
                   "stopped": f"was stopped during its analysis with {state.run_label} (Analyse resumes it)",
                   "failed": f"could not be analysed with {state.run_label}: {state.error}"}[state.state]
    (st.error if state is not None and state.state == "failed" else st.info)(
        f"{slide.name} {waiting}. The slide is shown without a tumour map.", icon=":material/hourglass_top:")
    st.caption(f"{SCOPE_LINE} Tissue unlike it is flagged out of scope when the slide is analysed (docs/scope.md).")
    slide_viewer(slide.id, width=slide.width, height=slide.height, mpp=slide.mpp, analysis=None, heatmap=None, tissue=None,
                 threshold=DEFAULT_THRESHOLD, regions=[], version=slide.version, key=f"viewer-{slide.id}")
    st.stop()
folder = state.folder
store = ctx.workspace.reviews()
try:
    said = slide_reviews(store, [slide.id, *slide.copies], run=state.run)
except (OSError, ValueError) as err:
    st.warning(f"Cannot read the reviews of this slide: {err}")
    said = []

threshold = float(summary["threshold"])
score = float(summary["slide_score"])
scope = summary.get("scope") or {}
assessed = scope.get("in_scope", True)
if not assessed:
    st.error(f"{scope.get('reason', 'Not assessed.')} The map is shown for inspection only: no call and no size class.",
             icon=":material/block:")
st.caption(f"{scope.get('line') or SCOPE_LINE} "
           + (f"{scope['out_of_scope_fraction']:.1%} of this slide's scored tissue lies outside it (hatched grey on the map)."
              if scope.get("checked") else "This model has no out-of-scope guard: its tissue was not checked."))
slide_call = summary.get("call") or call(score, threshold)
cols = st.columns(6)
cols[0].metric("Slide score", f"{score:.3f}" if assessed else "—",
               help=f"The slide's tumour score: {summary.get('slide_score_method', 'the highest cell probability')}, "
                    f"of the cells within the model's scope. Its highest cell: {summary.get('slide_max_cell', score):.3f}.")
NONE = "—"  # not assessed: the words are in the error above, whole (a metric's value is cut at about 12 characters)
slide_threshold = float(summary.get("slide_threshold", threshold))
cols[1].metric(f"Call at {slide_threshold:g}", SLIDE_CALL_WORDS.get(slide_call, NONE),
               help="Tumour when the slide score reaches the slide decision's threshold and a region is reported; refer "
                    "when it reaches it with no region to show; none (not assessed) when the slide is out of the model's scope.")
if slide_call == REFER:
    st.warning(f"Refer: {summary.get('call_reason') or 'no region to show'}.", icon=":material/visibility:")
# not assessed, a slide has no tumour area, regions or diameter to report: "0.000" would read as a negative finding
cols[2].metric("Tumour area, mm²", f"{summary['tumour_area_mm2']:.3f}" if assessed else NONE, help="The area of the reported regions.")
below = int(summary.get("regions_below_threshold", 0))
cols[3].metric("Regions", summary.get("regions_reported", summary["regions"]) if assessed else NONE,
               help=(f"Reported regions; {below} more below the reporting threshold (listed below, no size class). "
                     + rule_words((summary.get("decision") or {}).get("rule")) + "." if assessed else
                     "Not assessed: the regions below are outlined on the map for inspection only."))
cols[4].metric("Largest diameter", f"{summary['largest_diameter_mm']:.2f} mm" if assessed else NONE,
               help="Of the largest reported region.")
cols[5].metric("Size class", summary["size_class"] if assessed else NONE,
               help=SIZE_CLASS_WORDS.get(summary["size_class"], "Not assessed: the slide is out of the model's scope."))
st.caption(f"Model {summary.get('model')} ({state.run_label}), "
           f"stride {lattice.stride} PCam px (cells of {lattice.cell_mm * 1000:.0f} µm), threshold {threshold:g}; "
           f"{summary['windows_scored']:,} windows scored; analysis finished {local_time(folder.summary_json.stat().st_mtime)}. "
           "Diameters measured on cells run up to one cell larger than the truth.")

heat = load_heat(folder)
with st.expander("Triage of the map's cells (target sensitivity)", icon=":material/rule:"):
    if assessed:
        triage_cells(heat, summary)
    else:
        st.caption("Not assessed: the slide is out of the model's scope, so its cells are not triaged.")

state_key = f"slides_view_{slide.id}"
view = st.session_state.setdefault(state_key, {"goto": None, "point": None})
extents = overlay_extents(folder, lattice)
window = None
if view["point"] is not None:
    try:
        window = window_at(slide.path, heat, lattice, *view["point"])
    except (OSError, ValueError) as err:
        st.warning(f"Cannot read the window there: {err}")
# truth is matched against the regions the tool reports: one below the reporting threshold claims nothing
truth = truth_loader(slide.id, [r for r in region_list if r["reported"]], mpp=lattice.mpp, width=lattice.width, height=lattice.height, version=state.version)
clicked = slide_viewer(
    slide.id, width=lattice.width, height=lattice.height, mpp=lattice.mpp, analysis=state.key,
    heatmap=extents["heatmap"], tissue=extents["tissue"],
    threshold=threshold, regions=[{k: r[k] for k in ("id", "rings", "bbox", "longest_diameter_mm", "reported")} for r in region_list],
    goto=view["goto"], marker=(window["x"], window["y"], window["size"]) if window else None, key=f"viewer-{slide.id}",
    version=slide.version, analysis_version=state.version, truth=truth)
if clicked is not None:
    view["point"] = (clicked["x"], clicked["y"])
    st.rerun()

if window is not None:
    # one position (the window's top-left, level-0 px) and one figure (the map's value for its cell) everywhere:
    # here, the marker, its reviews and what goes to Explain
    wx, wy = int(round(window["x"])), int(round(window["y"]))
    st.subheader(f"The {window_label(wx, wy)}")
    left, right = st.columns([1, 2])
    what = (f"map probability **{window['probability']:.3f}**" if window["state"] == "scored" else  # only a scored one has one
            {"not scored": "not scored (too little tissue)", "unreadable": "unreadable in the slide file",
             "out of scope": "**out of scope**: unlike the tissue the model was trained on, so no probability is given"}[window["state"]])
    left.image(outline_centre(window["pixels"], scale=2, width=2), width=192,
               caption=f"cell ({window['row']}, {window['col']}): {what}", output_format="PNG")
    run = _run_of(summary)
    with right:
        if run is None:
            st.caption(f"The model that made this map ({summary.get('run')}) is not in this workspace: no Grad-CAM.")
        else:
            explanation = heatmaps.explain(run, window["pixels"][None])
            st.image(heatmaps.side_by_side(window["pixels"][None], explanation)[0], width=392, output_format="PNG",
                     caption="Grad-CAM (the window beside its heat map); the box is the central 32×32 the label describes. "
                             + ("The window's probability is the map's, beside it." if window["state"] == "scored" else
                                "The map gives this window no probability (beside it, why): the heat map shows where the "
                                "model looked, not a call."))
            if st.button("Open this window in Explain", icon=":material/center_focus_strong:", key="to_explain",
                         help="Explain shows it with every method, layer and scale, with this model."):
                ref = resolve_run(run.path)  # the window by its address: the slide, its top-left, the analysis' stride
                switch_page("pages/explain.py", {"run": BUNDLED_CHOICE if ref.bundled else run.run_id, "window_slide": state.slide_id,
                                                 "window_x": str(wx), "window_y": str(wy),
                                                 "window_stride": str(lattice.stride)})
    if window["state"] == "scored":
        with left:
            reviews.review_widget(store, ReviewTarget.slide_region(REVIEW_SOURCE, slide.id, x=wx, y=wy),
                                  ModelCall.at(window["probability"], threshold, str(summary.get("run"))),
                                  key=f"window_{slide.id}", compact=True)

st.subheader("Tumour regions" if assessed else "Tumour regions (not assessed: no size class)")
if not region_list:
    st.caption(f"No cell reaches the threshold {threshold:g}: no regions.")
else:
    order = st.segmented_control("Sort", list(SORTS), format_func=SORTS.get, default="size", key="region_sort",
                                 label_visibility="collapsed") or "size"
    key = "area_mm2" if order == "size" else "max_probability"
    ranked = sorted(region_list, key=lambda r: (not r["reported"], -r[key]))  # reported first
    if not any(r["reported"] for r in region_list):
        st.caption(f"No region is reported: all {len(region_list)} are below the reporting threshold (no size class).")
    region_reviews = {}
    for review in said:
        if review["region"] is not None:
            region_reviews.setdefault(review["region"], []).append(review_text(review))
    for rank, region in enumerate(ranked[:REGIONS_LISTED]):
        number = region["id"]
        if not region["reported"] and (rank == 0 or ranked[rank - 1]["reported"]):
            st.caption(f"Below the reporting threshold ({sum(not r['reported'] for r in region_list)}): listed for "
                       "inspection, not reported, no size class.")
        c = st.columns([1, 2.4, 1.2, 1.7, 0.9, 1.3], vertical_alignment="center")  # the last: room for "Review"
        if c[0].button(f"#{number}", key=f"goto-{number}", icon=":material/my_location:",
                       help=f"Show {region_name(number)} in the viewer (its name in the GeoJSON and the report)"):
            view["goto"] = {"bbox": region["bbox"], "nonce": time.time()}
            st.rerun()
        c[1].write(f"**{region['longest_diameter_mm']:.2f} mm** longest diameter, "
                   + (f"{region['size_class']}" if region["reported"] and assessed else
                      "below the reporting threshold" if not region["reported"] else "not assessed"))
        c[2].write(f"{region['area_mm2']:.3f} mm²")
        c[3].write(f"max probability {region['max_probability']:.3f}")
        c[4].write(f"{region['cells']} cell{'s' if region['cells'] != 1 else ''}")
        with c[5]:
            reviews.review_widget(store, ReviewTarget.slide_region(REVIEW_SOURCE, slide.id, region=str(number)),
                                  ModelCall.at(region["max_probability"], threshold, str(summary.get("run"))),
                                  key=f"region_{slide.id}_{number}", compact=True)
        if region_reviews.get(number):
            st.caption(f"Reviews of #{number}: " + "; ".join(region_reviews[number]))
    if len(ranked) > REGIONS_LISTED:
        st.caption(f"{len(ranked) - REGIONS_LISTED} more regions are in the GeoJSON.")
    with st.expander("All regions as a table"):
        table = pd.DataFrame(ranked).drop(columns=["rings"]).rename(columns={"id": "region"})
        table["reviews"] = [" · ".join(region_reviews.get(n, [])) for n in table["region"]]
        st.dataframe(table, hide_index=True)
windows_said = [r for r in said if r["region"] is None]
if windows_said:
    st.caption("Reviews of windows: " + "; ".join(f"{window_label(r['x'], r['y'])}: {review_text(r)}" for r in windows_said))

st.subheader("Downloads")
d = [*st.columns(2), *st.columns(2)]  # two rows: four in one cut their labels short
stem = Path(slide.name).stem
window_px = WINDOW * lattice.f
d[0].download_button("Regions (GeoJSON, for QuPath)",
                     lambda: json.dumps(regions_geojson(folder, said, window_px=window_px), indent=1).encode(),
                     file_name=f"{stem}-{folder.regions_geojson.name}", mime="application/geo+json", on_click="ignore",
                     icon=":material/download:", disabled=not folder.regions_geojson.is_file())
for column, path, label, mime in ((d[1], folder.heatmap_tif, "Heat map (pyramidal TIFF)", "image/tiff"),
                                  (d[2], folder.tiles_csv, "Windows (tiles.csv)", "text/csv")):
    if path.is_file():
        column.download_button(label, path.read_bytes(), file_name=f"{stem}-{path.name}", mime=mime,
                               on_click="ignore", icon=":material/download:")
d[3].download_button("Report (HTML, printable)", lambda: report_html(folder, said).encode("utf-8"),
                     file_name=f"{stem}-{folder.report_html.name}", mime="text/html", on_click="ignore",
                     icon=":material/download:")
if synthetic:
    st.caption(f"**{SYNTHETIC_SLIDE}** Everything on this page was computed on generated pixels.")
