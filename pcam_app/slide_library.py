"""The Slides page's library section: register a folder, upload a slide, the list of slides (thumbnail, size,
resolution, vendor, where it comes from, a copy of which other entry it is, and its analyses by every model);
remove a slide; analyse or stop the chosen ones, and the progress of the running one, which refreshes the page
when an analysis changes state. Everything is asked of `pcam_core.workspace.slide_library.SlideLibrary`; these
functions only draw it, so that the page (pages/slides.py, with the viewer) calls them where it wants:

    library = ctx.workspace.slide_library
    add_slides(library)
    chosen = slide_list(library, slides)      # the ids ticked in the list
    run = model_choice(selected)               # the sidebar's run, or the shipped fast scanner
    analysis_controls(library, chosen, run.arg)
    watch_analyses(library, slides)           # reruns the page when an analysis is queued, starts or ends
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pcam_core.runs import RunDir, RunRef, resolve_run
from pcam_core.slides.reader import MPP_RANGE
from pcam_core.workspace.slide_library import SlideEntry, SlideLibrary
from pcam_core.workspace.slide_queue import AnalysisState

STATE_LABELS = {"none": "not analysed", "queued": "queued", "running": "analysing", "done": "done",
                "failed": "failed", "stopped": "stopped (resumable)"}
NOTICE = "_slide_library_notice"  # a message to show after the rerun that lists a slide just added or removed
POLL_SECONDS = 2.0
# The exactly-scanning candidate that ships beside the package in a clone (candidates/pcamscan/README.md): offered
# for slides, where the bundled ensemble's five networks a window take hours on a CPU and it takes minutes.
SCANNER = Path(__file__).resolve().parents[1] / "candidates" / "pcamscan"
MODEL_KEY = "slide_analysis_model"


def _notice_then_rerun(message: str) -> None:
    st.session_state[NOTICE] = message
    st.rerun()


def add_slides(library: SlideLibrary) -> None:
    """Register a folder by its path, or upload one slide file (refused above the size limit). The page runs
    again at once, so that the slides added are listed."""
    if notice := st.session_state.pop(NOTICE, None):
        st.success(notice, icon=":material/check:")
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
                    _notice_then_rerun(f"Registered {folder}")
        with upload_tab:
            limit_gb = library.upload_max_bytes / 1024**3
            upload = st.file_uploader(f"A slide file, or a .zip of one scan's DICOM series (up to {limit_gb:.1f} GiB)",
                                      key="slide-upload",
                                      help="Larger slides: register the folder that holds them instead (a DICOM series' "
                                           "folder is one slide).")
            if upload is not None and st.button("Add the uploaded slide", key="slide-upload-add"):
                try:
                    entry = library.add_upload(upload.name, upload)
                except (OSError, ValueError) as err:
                    st.error(str(err))
                else:
                    _notice_then_rerun(f"Added {entry.name}")


def state_text(state: AnalysisState) -> str:
    """One analysis in words: its model, stride and where it stands."""
    text = f"{state.run_label} (stride {state.stride}): {STATE_LABELS[state.state]}"
    if state.state == "queued" and state.position:
        text += f" (#{state.position})"
    elif state.state == "running" and state.windows_total:
        text += f" {100 * state.fraction:.0f}%"
    elif state.state == "done" and state.summary:
        s = state.summary
        if not (s.get("scope") or {}).get("in_scope", True):  # a score of a slide out of scope would read as a finding
            text += ", not assessed (out of the model's scope)"
        else:
            text += f", score {s['slide_score']:.3f}, {s.get('regions_reported', s['regions'])} reported region(s)"
    return text


def _where(entry: SlideEntry, by_id: dict[str, SlideEntry] | None) -> str:
    """Where a slide comes from, and the copies of it the library holds elsewhere."""
    text = entry.origin_text
    if entry.copies and by_id:
        text += " · same slide as " + ", ".join(f"{by_id[c].name} ({by_id[c].origin_text})" for c in entry.copies if c in by_id)
    return text


def _file_size(entry: SlideEntry) -> str:
    return f"{entry.file_size / 1024**2:,.1f} MB"


def _size_text(entry: SlideEntry) -> str:
    return _file_size(entry) if entry.error or entry.width is None else f"{entry.width:,} × {entry.height:,} px, {_file_size(entry)}"


def slide_labels(by_id: dict[str, SlideEntry]) -> dict[str, str]:
    """Each slide's name with where it comes from, and the copies of it the library holds elsewhere, by id. Two
    slides that would read alike (two uploads named slide.tif) are told apart by their size, and by their id where
    that is the same too. Made for all slides at once: the picker asks for every option's label on each rerun."""
    base = {i: f"{entry.label} · {_where(entry, by_id)}" for i, entry in by_id.items()}
    alike: dict[str, list[str]] = {}
    for i, text in base.items():
        alike.setdefault(text, []).append(i)
    labels = {}
    for i, entry in by_id.items():
        group = alike[base[i]]
        if len(group) == 1:
            labels[i] = base[i]
            continue
        size = _size_text(entry)
        same_size = any(_size_text(by_id[j]) == size for j in group if j != i)
        labels[i] = f"{base[i]} · {size}" + (f" · id {entry.id[:8]}" if same_size else "")
    return labels


def count_text(slides: list[SlideEntry]) -> str:
    """How many slides the library holds, the unreadable ones counted and named as such."""
    broken = sum(1 for entry in slides if entry.error)
    return f"{len(slides)} slide(s)" + (f", {broken} unreadable" if broken else "")


def slide_list(library: SlideLibrary, slides: list[SlideEntry]) -> list[str]:
    """The slides with a thumbnail each, where each comes from, their analyses by every model and a Remove
    button; returns the ids ticked."""
    if not slides:
        st.info("No slides yet: register a folder of slides or upload one (Add slides).", icon=":material/biotech:")
        return []
    by_id = {entry.id: entry for entry in slides}
    chosen = []
    for entry in slides:
        with st.container(border=True):
            thumb, text, pick = st.columns([1, 4, 1], vertical_alignment="center")
            if entry.thumbnail:
                thumb.image(entry.thumbnail, width=120)
            text.markdown(f"**{entry.name}**" + (" · :orange-badge[SYNTHETIC]" if entry.synthetic else ""))
            text.caption(_describe(entry, by_id))
            if pick.button("Remove", key=f"slide-remove-{entry.id}", icon=":material/delete:",
                           help="Uploaded: the file is deleted with its analyses. From a registered folder or registered "
                                "alone: left where it is, only no longer listed."):
                try:
                    removed = library.remove(entry.id)
                except (OSError, ValueError) as err:
                    st.error(str(err))
                else:
                    _notice_then_rerun(f"Removed {removed.name}" + (" (the uploaded file is deleted)" if removed.origin == "upload"
                                                                      else f" from the library; the file stays at {removed.path}"))
            if entry.error:
                text.error(entry.error)
                continue
            states = library.analyses(entry)
            text.caption("Analyses: " + ("; ".join(state_text(s) for s in states) if states else "not analysed"))
            if pick.checkbox("choose", key=f"slide-pick-{entry.id}", label_visibility="collapsed"):
                chosen.append(entry.id)
    return chosen


def _describe(entry: SlideEntry, by_id: dict[str, SlideEntry]) -> str:
    size = _file_size(entry)
    where = _where(entry, by_id)
    if entry.error:
        return f"{size} · {entry.path} · {where}"
    resolution = ("resolution unknown: give it below" if entry.needs_mpp else
                  f"{entry.mpp:g} µm/px{' (given)' if entry.mpp_source == 'given' else ''}")
    return (f"{entry.width:,} × {entry.height:,} px · {resolution} · {entry.vendor} · {entry.levels} level(s) · "
            f"{size} · {where}")


MPP_PRESETS = {"40x: 0.25 µm/px": 0.25, "20x: 0.5 µm/px": 0.5}


def resolution_form(library: SlideLibrary, entry: SlideEntry) -> None:
    """Ask for the resolution of a slide whose file does not say it (presets for 40x and 20x scans, or a number):
    the tool never analyses a slide at a guessed scale."""
    given = entry.mpp_source == "given"
    with st.container(border=True):
        if not given:
            st.warning(f"{entry.name}: its file does not say its resolution (microns per pixel). Give it to analyse the "
                       "slide: the model needs the scale it was trained at, and it is never guessed.",
                       icon=":material/straighten:")
        else:
            st.caption(f"Resolution given: {entry.mpp:g} µm/px (its file does not say it). Change it here.")
        cols = st.columns([2, 2, 3, 2], vertical_alignment="bottom")
        for column, (label, value) in zip(cols, MPP_PRESETS.items()):
            if column.button(label, key=f"mpp-{entry.id}-{value}"):
                library.set_mpp(entry.id, value)
                _notice_then_rerun(f"{entry.name}: resolution {value:g} µm/px given")
        value = cols[2].number_input("Microns per pixel", min_value=MPP_RANGE[0], max_value=MPP_RANGE[1],
                                     value=entry.mpp if given else None, step=0.001, format="%.4f", key=f"mpp-{entry.id}")
        if cols[3].button("Use", key=f"mpp-{entry.id}-set", disabled=value is None):
            try:
                library.set_mpp(entry.id, value)
            except ValueError as err:
                st.error(str(err))
            else:
                _notice_then_rerun(f"{entry.name}: resolution {value:g} µm/px given")


def analysis_models(selected: RunRef) -> dict[str, RunRef]:
    """The models the Analyse button offers, by run argument: the sidebar's run, and the shipped exactly-scanning
    candidate where this clone has it (and it is not the sidebar's run already)."""
    models = {str(selected.arg): selected}
    if (SCANNER / "checkpoints").is_dir() and selected.folder.path.resolve() != SCANNER:
        models[str(SCANNER)] = resolve_run(SCANNER)
    return models


def analysis_model(selected: RunRef) -> RunRef:
    """The model new analyses use: the one chosen in `model_choice` this session, else the sidebar's run."""
    models = analysis_models(selected)
    return models.get(st.session_state.get(MODEL_KEY), selected)


def model_choice(selected: RunRef) -> RunRef:
    """Choose the model of new analyses where there is a choice (`analysis_models`), with what each costs."""
    models = analysis_models(selected)
    if len(models) == 1:
        return selected
    if st.session_state.get(MODEL_KEY) not in models:
        st.session_state[MODEL_KEY] = str(selected.arg)  # unset, or the sidebar run chosen before: the one now
    sidebar = "The sidebar's run."
    if selected.folder.is_ensemble:
        sidebar += (" An ensemble: every window costs each of its networks' time (the bundled one has 5), so on a 2-core "
                    "CPU a CAMELYON-size slide of real tissue takes hours (docs/slides.md).")
    decision = ("its own slide decision (fitted on out-of-fold slide maps of its recipe)"
                if RunDir(SCANNER).slide_decision_path.exists() else "the default slide decision (not fitted for it)")
    words = {str(selected.arg): sidebar,
             str(SCANNER): "One network whose dense scan is exact: minutes a CAMELYON-size slide on a CPU, at 0.011-0.014 "
                           f"less patch ROC-AUC than the bundled model (cross-validated), with {decision}."}
    picked = st.radio("Analyse with", list(models), key=MODEL_KEY,
                      format_func=lambda arg: models[arg].label + (" (fast scan)" if arg == str(SCANNER) else ""),
                      captions=[words[arg] for arg in models])
    return models[picked]


def analysis_controls(library: SlideLibrary, chosen: list[str], run: str | Path, *, stride: int = 32) -> None:
    """Analyse the chosen slides with `run` (`model_choice`'s), or stop their analyses."""
    left, right = st.columns(2)
    if left.button(f"Analyse {len(chosen)} slide(s)", disabled=not chosen, type="primary", icon=":material/play_arrow:"):
        try:
            library.start(chosen, run, stride=stride)
        except (OSError, ValueError) as err:
            st.error(str(err))
        else:
            st.rerun()  # the list shows them queued
    if right.button("Stop", disabled=not chosen, icon=":material/stop:"):
        for slide in chosen:
            library.stop(slide, run, stride=stride)
        st.rerun()


def _snapshot(library: SlideLibrary, slides: list[SlideEntry]) -> tuple[list[tuple[SlideEntry, AnalysisState]], tuple]:
    states = [(entry, state) for entry in slides if not entry.error for state in library.analyses(entry)]
    return states, tuple(sorted((s.slide_id, s.key, s.state, s.position or 0) for _, s in states))


def watch_analyses(library: SlideLibrary, slides: list[SlideEntry]) -> None:
    """The progress of the analyses under way, refreshed every POLL_SECONDS while one is queued or running; when
    any analysis changes state (queued, started, done, failed, stopped) the whole page runs again, so that the
    list and the viewer show it without a reload."""
    states, seen = _snapshot(library, slides)
    busy = any(s.state in ("queued", "running") for _, s in states)

    def watch() -> None:
        now, key = _snapshot(library, slides)
        if key != seen:
            st.rerun(scope="app")
        for entry, state in now:
            if state.state == "running":
                detail = "starting"
                if state.windows_total:
                    detail = f"{state.windows_done:,} of {state.windows_total:,} windows"
                    if state.windows_per_s:
                        detail += f", {state.windows_per_s:.0f} windows/s, {state.seconds_left:.0f} s left"
                st.progress(state.fraction, text=f"{entry.label} with {state.run_label}: {detail}")
            elif state.state == "failed":
                st.error(f"{entry.label} with {state.run_label}: the analysis failed: {state.error}")

    st.fragment(watch, run_every=POLL_SECONDS if busy else None)()
