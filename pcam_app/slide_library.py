"""The Slides page's library section: register a folder, upload a slide, the list of slides with their
thumbnail, size, resolution, vendor and the state of their analysis with the chosen run; analyse or stop
the chosen ones, and the progress of the running one. Everything is asked of
`pcam_core.workspace.slides.SlideLibrary`; these functions only draw it, so that the page
(pages/slides.py, with the viewer) calls them where it wants:

    library = ctx.workspace.slide_library
    add_slides(library)
    chosen = slide_list(library, run)      # the ids ticked in the list
    analysis_controls(library, chosen, run)
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pcam_core.workspace.slides import AnalysisState, SlideEntry, SlideLibrary

STATE_LABELS = {"none": "not analysed", "queued": "queued", "running": "analysing", "done": "done",
                "failed": "failed", "stopped": "stopped (resumable)"}


def add_slides(library: SlideLibrary) -> None:
    """Register a folder by its path, or upload one slide file (refused above the size limit)."""
    with st.expander("Add slides", icon=":material/add:"):
        folder_tab, upload_tab = st.tabs(["A folder on this machine", "Upload a file"])
        with folder_tab.form("add-slide-folder", clear_on_submit=True, border=False):
            path = st.text_input("Folder of slides", placeholder="/data/slides",
                                 help="Its slides are read where they are, never copied; the folder is listed again each time.")
            if st.form_submit_button("Register the folder"):
                try:
                    folder = library.add_folder(path)
                except (OSError, ValueError) as err:
                    st.error(str(err))
                else:
                    st.success(f"Registered {folder}")
        with upload_tab:
            limit_gb = library.upload_max_bytes / 1024**3
            upload = st.file_uploader(f"A slide file (up to {limit_gb:.1f} GiB)", key="slide-upload",
                                      help="Larger slides: register the folder that holds them instead.")
            if upload is not None and st.button("Add the uploaded slide", key="slide-upload-add"):
                try:
                    entry = library.add_upload(upload.name, upload)
                except (OSError, ValueError) as err:
                    st.error(str(err))
                else:
                    st.success(f"Added {entry.name}")


def _state_text(state: AnalysisState) -> str:
    text = STATE_LABELS[state.state]
    if state.state == "queued" and state.position:
        text += f" (#{state.position})"
    elif state.state == "running" and state.windows_total:
        text += f" {100 * state.fraction:.0f}%"
    elif state.state == "done" and state.summary:
        text += f": score {state.summary['slide_score']:.3f}, {state.summary['regions']} region(s)"
    return text


def slide_list(library: SlideLibrary, run: str | Path, *, stride: int = 32, slides: list[SlideEntry] | None = None) -> list[str]:
    """The slides (`slides`, as the caller listed them, else the library's) with a thumbnail each and the state
    of their analysis with `run`; returns the ids ticked."""
    if slides is None:
        try:
            slides = library.slides()
        except (OSError, ValueError) as err:
            st.error(f"Cannot list the slides: {err}")
            return []
    if not slides:
        st.info("No slides yet: register a folder of slides or upload one (Add slides).", icon=":material/biotech:")
        return []
    chosen = []
    for entry in slides:
        with st.container(border=True):
            thumb, text, pick = st.columns([1, 4, 1], vertical_alignment="center")
            if entry.thumbnail:
                thumb.image(entry.thumbnail, width=120)
            text.markdown(f"**{entry.name}**" + (" · :orange-badge[SYNTHETIC]" if entry.synthetic else ""))
            text.caption(_describe(entry))
            if entry.error:
                text.error(entry.error)
                continue
            state = library.analysis(entry.id, run, stride=stride)
            text.caption(f"Analysis: {_state_text(state)}")
            if pick.checkbox("choose", key=f"slide-pick-{entry.id}", label_visibility="collapsed"):
                chosen.append(entry.id)
    return chosen


def _describe(entry: SlideEntry) -> str:
    size = f"{entry.file_size / 1024**2:,.1f} MB"
    if entry.error:
        return f"{size} · {entry.path}"
    return (f"{entry.width:,} × {entry.height:,} px · {entry.mpp:g} µm/px · {entry.vendor} · {entry.levels} level(s) · "
            f"{size} · {entry.origin}")


def analysis_controls(library: SlideLibrary, chosen: list[str], run: str | Path, *, stride: int = 32) -> None:
    """Analyse or stop the chosen slides; the progress of the running analyses, refreshed every 2 s."""
    left, right = st.columns(2)
    if left.button(f"Analyse {len(chosen)} slide(s)", disabled=not chosen, type="primary", icon=":material/play_arrow:"):
        try:
            library.start(chosen, run, stride=stride)
        except (OSError, ValueError) as err:
            st.error(str(err))
    if right.button("Stop", disabled=not chosen, icon=":material/stop:"):
        for slide in chosen:
            library.stop(slide, run, stride=stride)
    _progress(library, run, stride)


@st.fragment(run_every=2.0)
def _progress(library: SlideLibrary, run: str | Path, stride: int) -> None:
    for entry in library.slides():
        if entry.error:
            continue
        state = library.analysis(entry.id, run, stride=stride)
        if state.state == "running":
            detail = "starting"
            if state.windows_total:
                detail = f"{state.windows_done:,} of {state.windows_total:,} windows"
                if state.windows_per_s:
                    detail += f", {state.windows_per_s:.0f} windows/s, {state.seconds_left:.0f} s left"
            st.progress(state.fraction, text=f"{entry.label}: {detail}")
        elif state.state == "failed":
            st.error(f"{entry.label}: the analysis failed: {state.error}")
