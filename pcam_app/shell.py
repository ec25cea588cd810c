"""The app shell's guard and the page context: what every page calls first (`context`), the
selections the sidebar made, and the errors and requirements that end a page's run.

Pages are files in `pages/`, run by `streamlit_app.py` (the shell: workspace, navigation, sidebar).
Streamlit decides when its server starts that an app with a `pages/` folder uses its old multipage
mode until the first `st.navigation` call, so the first request of a new server process for a page's
URL (a reload of /train after the app restarted) runs that page's file alone. `context()`, the first
call of every page, notices (the shell marks the page runs it makes) and runs the shell in its place,
which opens the page the URL names.
"""

from __future__ import annotations

import runpy
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import streamlit as st
from PIL import Image
from streamlit.navigation.page import StreamlitPage

from pcam_core.bundled import LABEL as BUNDLED_LABEL
from pcam_core.bundled import model_card
from pcam_core.workspace.gallery import outline_centre
from pcam_core.runs import RunDir, RunSummary, checkpoint_path, resolve_run
from pcam_core.workspace import DataSource, Workspace

SHELL = "streamlit_app.py"
SHELL_PATH = Path(__file__).resolve().parents[1] / SHELL
_IN_SHELL: ContextVar[bool] = ContextVar("pcam_app_in_shell", default=False)


def fail(message: str) -> NoReturn:
    """Show `message` as an error and end this page's run."""
    st.error(message, icon=":material/error:")
    st.stop()


def _folder(path: str) -> str:
    """A folder as one spelling: absolute, links resolved."""
    try:
        return str(Path(path).expanduser().resolve())
    except (OSError, RuntimeError):
        return path


@dataclass
class Context:
    """What the sidebar selected, for the page being drawn."""

    workspace: Workspace
    sources: list[DataSource]
    source: DataSource | None
    runs: list[RunSummary]
    run: RunDir | None

    def source_names(self) -> dict[str, str]:
        """Data path -> source name, to show runs' data by name: a run's data path as its config spells it
        (relative, through a link, with a trailing slash) names the source registered at the same folder."""
        names = {s.path: s.name for s in self.sources}
        by_folder = {_folder(s.path): s.name for s in self.sources}
        for run in self.runs:
            if run.data not in names and (name := by_folder.get(_folder(run.data))):
                names[run.data] = name
        return names

    @property
    def bundled(self) -> bool:
        """Whether the selected run is the bundled model (`pcam_core.bundled`): no run folder of this workspace."""
        return self.run is not None and resolve_run(self.run).bundled

    def run_synthetic(self, run: RunDir | None = None) -> bool:
        run = run or self.run
        return bool(run and run.raw_status().get("synthetic_data"))


def favicon() -> Image.Image:
    """The browser tab's icon, drawn here: a pink tissue-like tile with the central box. (A Material icon
    as page icon is fetched from Google's font servers; nothing the app shows may need the internet.)"""
    tile = np.empty((96, 96, 3), dtype=np.uint8)
    tile[:] = (236, 176, 208)
    return Image.fromarray(outline_centre(tile, width=10, colour=(123, 63, 140)))


def open_workspace() -> Workspace:
    try:
        workspace = Workspace()
        workspace.root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fail(f"Cannot use the workspace folder: {err}. Set PCAM_WORKSPACE to a folder you can write to.")
    return workspace


def first_start(workspace: Workspace) -> None:
    """A new workspace: generate the synthetic demo data with a progress bar, then start over."""
    st.title(":material/biotech: PCam metastasis detection")
    st.info(
        f"First start in `{workspace.root}`: generating a small **SYNTHETIC** demo dataset so that you can try "
        "everything at once. It imitates H&E colours only and is **not real tissue**. Your own PCam or Kaggle "
        "data can be added afterwards on the Overview page.", icon=":material/science:")
    bar = st.progress(0.0, text="Generating synthetic demo patches...")
    try:
        workspace.bootstrap(progress=lambda fraction, message: bar.progress(min(1.0, fraction), text=f"SYNTHETIC demo data: {message}"))
    except (OSError, ValueError) as err:
        fail(f"Could not set up the workspace: {err}")
    st.rerun()


def run_page(page: StreamlitPage) -> None:
    """Run the page the navigation chose, marked as run through the shell (see `context`)."""
    token = _IN_SHELL.set(True)
    try:
        page.run()
    finally:
        _IN_SHELL.reset(token)


def _run_shell_instead() -> NoReturn:
    """This page file runs without the shell: Streamlit's first request of a server process for a page's
    URL (see the module docstring). Run the shell now, in this same script run: its `st.navigation`
    leaves the old multipage mode and opens the page the URL names (this page, run again inside the
    shell and marked), keeping the query parameters and widget values; then end this bare run."""
    runpy.run_path(str(SHELL_PATH), run_name="__main__")
    st.stop()


def context() -> Context:
    """The selections the sidebar made in this script run. Every page calls it first, at its top level
    (a fragment rerun does not pass the shell; use the values the page captured instead). In a page run
    without the shell, the shell runs instead and this call does not return."""
    if not _IN_SHELL.get():
        _run_shell_instead()
    ctx = st.session_state.get("_context")
    if ctx is None:
        fail(f"Open the dashboard through {SHELL} (`streamlit run {SHELL}`).")
    return ctx


def require_source(ctx: Context) -> DataSource:
    if ctx.source is None:
        st.info("No data source yet. Add a PCam HDF5 folder or a Kaggle folder on the Overview page.", icon=":material/database:")
        st.page_link("pages/overview.py", label="Go to Overview", icon=":material/home:")
        st.stop()
    if not ctx.source.exists():
        fail(f"The folder of data source {ctx.source.name!r} no longer exists: {ctx.source.path}. "
             "Restore it, or remove the source on the Overview page.")
    return ctx.source


def require_run(ctx: Context, *, checkpoint: bool = False) -> RunDir:
    """The selected run (one of the workspace's, or the bundled model: its package folder holds its
    checkpoint, calibration and held-out predictions, its "valid" split), or the page ends saying why
    there is none."""
    if ctx.run is None:
        st.info("No run selected. Start one on the Train page, or choose the bundled model in the sidebar.",
                icon=":material/model_training:")
        st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
        st.stop()
    if checkpoint:
        try:
            checkpoint_path(ctx.run, "best")
        except FileNotFoundError:
            st.info(f"Run {ctx.run.run_id} has no checkpoint yet: it appears when the first epoch ends.",
                    icon=":material/hourglass_top:")
            st.stop()
    return ctx.run


def run_label(run: RunDir) -> str:
    """How a page names a run: its id, or the bundled model's name."""
    return resolve_run(run).label


def require_scored_splits(run: RunDir) -> list[str]:
    """The splits of `run` with current predictions (`scoring.scored_splits`), or the page ends saying
    why there are none."""
    from pcam_core.workspace import scoring

    try:
        splits = scoring.scored_splits(run)
    except (OSError, ValueError) as err:
        fail(f"Cannot read the data of run {run.run_id}: {err}")
    if not splits:
        st.info(f"Run {run.run_id} has no predictions yet: they are written when its first epoch ends.", icon=":material/hourglass_top:")
        st.stop()
    return splits


def bundled_note() -> None:
    """What the bundled model is, with its model card: shown where it scores patches."""
    st.caption(f"Model: the **{BUNDLED_LABEL}** that ships with pcam_core, trained on real PCam patches of "
               "Camelyon16 lymph-node slides (0.972 µm/px). For research, not a diagnosis.")
    with st.expander("Model card: data, recipe, figures, limits", icon=":material/description:"):
        try:
            st.markdown(model_card())
        except FileNotFoundError as err:
            st.error(str(err))
