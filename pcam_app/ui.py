"""What every page of the dashboard shares: the app shell's guard, the sidebar and its selections,
cached datasets and models, the synthetic-data banner and patch tiles. Drawing only: every number comes
from `pcam_core`.

Pages are files in `pages/`, run by `streamlit_app.py` (the shell: workspace, navigation, sidebar).
Streamlit decides when its server starts that an app with a `pages/` folder uses its old multipage
mode until the first `st.navigation` call, so the first request of a new server process for a page's
URL (a reload of /train after the app restarted) runs that page's file alone. `context()`, the first
call of every page, notices (the shell marks the page runs it makes) and runs the shell in its place,
which opens the page the URL names.
"""

from __future__ import annotations

import base64
import io
import json
import runpy
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Sequence
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image
from streamlit.navigation.page import StreamlitPage

from pcam_core.workspace import scoring
from pcam_core.checkpoint import model_from_checkpoint
from pcam_core.config import ExperimentConfig
from pcam_core.data import PatchDataset
from pcam_core.workspace.gallery import LABEL_NAMES, colour_statistics, outline_centre
from pcam_core.workspace.monitor import STATE_ICONS, runs_table
from pcam_core.predict import dataset_for_split
from pcam_core.runs import RunDir, RunSummary, checkpoint_path
from pcam_core.workspace import DataSource, Workspace

SHELL = "streamlit_app.py"
SHELL_PATH = Path(__file__).resolve().parents[1] / SHELL
_IN_SHELL: ContextVar[bool] = ContextVar("pcam_app_in_shell", default=False)

CENTRE_NOTE = (
    "The green box marks the central 32×32 pixels. A patch is labelled **tumour** when that region holds "
    "at least one pixel of metastatic tissue; tumour outside the box does not count, though the model sees "
    "the whole patch as context."
)
PROBABILITY_NOTE = (
    "The **probability** is the model's score, from 0 to 1, that the central 32×32 region holds tumour. "
    "It is not a diagnosis, and it is not a calibrated risk for tissue unlike the training data (another "
    "lab, stain or scanner). The **threshold** turns it into a call: tumour at or above it, normal below."
)
SYNTHETIC_NOTE = (
    "The demo patches are generated to look roughly like H&E: nothing seen or measured on them, nor any "
    "model trained on them, says anything about real pathology."
)


# -- errors --------------------------------------------------------------------------------------------

def fail(message: str) -> NoReturn:
    """Show `message` as an error and end this page's run."""
    st.error(message, icon=":material/error:")
    st.stop()


# Plotly's mode bar (zoom, pan, PNG buttons) is built for every chart when a page renders: on the
# Runs page it was more than half the browser's plotly time (benchmarks/profile_dashboard_load.py).
# Without it charts still zoom by dragging and reset on a double click.
CHART_CONFIG = {"displayModeBar": False}
# Charts are drawn by a plotly.js bundle of just the trace types `figures` uses (scatter, bar, heatmap,
# histogram; built by scripts/plotly-bundle), served by Streamlit's static file serving from static/
# (`server.enableStaticServing`), instead of st.plotly_chart: that loads Streamlit's 4.7 MB bundle of all
# of plotly.js into every new tab, which compiling and running made the largest single cost of opening a
# page with a chart (benchmarks/bench_plotly_cost.py). Its plotly.js version is the one the Python
# package writes figures for (tests/e2e/test_charts.py checks).
PLOTLY_JS = "plotly-pcam.min.js"
STATIC_DIR = SHELL_PATH.parent / "static"
_chart_component = st.components.v2.component(
    "pcam_chart", js=(Path(__file__).parent / "chart.js").read_text(encoding="utf-8"), isolate_styles=False)


def chart(figure: Any, *, key: str, where: Any = st) -> None:
    """Draw a plotly figure the way every page does: the container's width, the figure's height."""
    with where.container():
        _chart_component(key=key, data={"figure": figure.to_json(), "config": CHART_CONFIG,
                                        "src": f"app/static/{PLOTLY_JS}"})


_TABLE_CSS = """
.pcam-table { overflow: auto; border: 1px solid rgba(49, 51, 63, 0.15); border-radius: 0.5rem; }
.pcam-table table { border-collapse: collapse; width: 100%; font-size: 0.875rem; }
.pcam-table th, .pcam-table td { padding: 0.3rem 0.6rem; text-align: left; white-space: nowrap;
  border-bottom: 1px solid rgba(49, 51, 63, 0.1); }
.pcam-table th { position: sticky; top: 0; background: var(--st-secondary-background-color, #f6f1f7); }
.pcam-table th button { all: unset; cursor: pointer; font-weight: 600; }
.pcam-table th button:focus-visible { outline: 2px solid var(--st-primary-color); outline-offset: 2px; }
.pcam-table .pcam-num { text-align: right; font-variant-numeric: tabular-nums; }
.pcam-table tbody tr:hover { background: rgba(49, 51, 63, 0.04); }
"""
_table_component = st.components.v2.component(
    "pcam_table", js=(Path(__file__).parent / "table.js").read_text(encoding="utf-8"), css=_TABLE_CSS, isolate_styles=False)


def _cell(value: Any, fmt: Any) -> tuple[str, Any]:
    """(text shown, sort key) of one table cell; empty cells show a dash and sort last."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "–", None
    if isinstance(value, (bool, np.bool_)):
        return ("yes" if value else "no"), int(value)
    if isinstance(value, pd.Timestamp):
        return (fmt(value) if callable(fmt) else value.strftime("%Y-%m-%d %H:%M")), value.timestamp()
    if isinstance(value, (int, float, np.integer, np.floating)):
        return (fmt(value) if callable(fmt) else (fmt or "{}").format(value)), float(value)
    text = fmt(value) if callable(fmt) else str(value)
    return text, text


def sortable_table(frame: pd.DataFrame, formats: dict[str, Any] | None = None, *, key: str, height: int = 420,
                   caption: str | None = None) -> None:
    """A table that sorts by any column with a click on its header (numbers largest first, then the
    other way), scrolling beyond `height` pixels; each column formatted by a format string or a function.
    One element of plain HTML (pcam_app/table.js): Streamlit's data grid cost a new tab 0.2 s."""
    formats = formats or {}
    cells = [[_cell(value, formats.get(column)) for column, value in zip(frame.columns, row)]
             for row in frame.itertuples(index=False)]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
               or pd.api.types.is_datetime64_any_dtype(frame[c]) for c in frame.columns]
    _table_component(key=key, data={"columns": [str(c) for c in frame.columns], "numeric": numeric,
                                    "rows": [[text for text, _ in row] for row in cells],
                                    "keys": [[sort for _, sort in row] for row in cells],
                                    "height": height, "caption": caption})


RECENT_RUNS = 5  # the runs the Overview page lists; the Runs page has them all, sortable


def runs_summary_table(runs: Sequence[RunSummary], source_names: dict[str, str], *, key: str, caption: str,
                       height: int = 420) -> None:
    """Runs in a short form (run, state, model, data, epochs, best ROC-AUC, created), sortable."""
    frame = runs_table(runs, source_names)
    sortable_table(frame[["run", "state", "model", "data", "epochs", "ROC-AUC", "created"]], {"ROC-AUC": "{:.3f}"},
                   key=key, caption=caption, height=height)


def recent_runs_table(runs: Sequence[RunSummary], source_names: dict[str, str]) -> None:
    """The newest runs (a table), and where the others are."""
    runs_summary_table(runs[:RECENT_RUNS], source_names, key="recent_runs", caption="The newest runs")
    if len(runs) > RECENT_RUNS:
        st.caption(f"The {RECENT_RUNS} newest of {len(runs)} runs; all of them, sortable, are on the Runs page.")


def synthetic_banner(synthetic: bool, headline: str = "SYNTHETIC demo data, not real tissue.") -> None:
    """The warning every view of synthetic data, or of a model trained on it, carries."""
    if synthetic:
        st.warning(f"**{headline}** {SYNTHETIC_NOTE}", icon=":material/science:")


# -- workspace and selections -----------------------------------------------------------------------------

@dataclass
class Context:
    """What the sidebar selected, for the page being drawn."""

    workspace: Workspace
    sources: list[DataSource]
    source: DataSource | None
    runs: list[RunSummary]
    run: RunDir | None

    def source_names(self) -> dict[str, str]:
        """Data path -> source name, to show runs' data by name."""
        return {s.path: s.name for s in self.sources}

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


def _apply_pending(key: str, options: list[str]) -> None:
    pending = st.session_state.pop(f"_select_{key}", None)
    if pending in options:
        st.session_state[key] = pending
    elif st.session_state.get(key) not in options:
        st.session_state.pop(key, None)


SIDEBAR_SELECTIONS = ("dataset", "run")  # widgets bound to the address (see `sidebar`)


def switch_page(page: str, query: dict[str, str]) -> NoReturn:
    """Open `page` in this session with `query` in its address, as a page link would. The sidebar's own
    selections among them are made through the sidebar: Streamlit refuses to set a query parameter that
    a widget is bound to."""
    for key in SIDEBAR_SELECTIONS:
        if key in query:
            st.session_state[f"_select_{key}"] = query[key]
    st.switch_page(page, query_params={k: v for k, v in query.items() if k not in SIDEBAR_SELECTIONS})


def select_run(run_id: str) -> None:
    """Make `run_id` the selected run from the next rerun on (the sidebar is drawn before pages)."""
    st.session_state["_select_run"] = run_id


def sidebar(workspace: Workspace) -> Context:
    """Draw the sidebar (workspace, active dataset, selected run) and return the selections."""
    try:
        sources = workspace.sources()
    except ValueError as err:
        fail(str(err))
    runs = workspace.runs()
    with st.sidebar:
        st.markdown(f"**Workspace**  \n`{workspace.root}`",
                    help="One folder for data sources and runs. Start the app with PCAM_WORKSPACE=/path to use another.")
        names = [s.name for s in reversed(sources)]  # the newest first: a source just added opens by default
        _apply_pending("dataset", names)
        by_name = {s.name: s for s in sources}
        chosen = st.selectbox("Active dataset", names, key="dataset", bind="query-params",
                              format_func=lambda n: by_name[n].label, placeholder="No data source",
                              help="The data the Overview, Dataset and Train pages use. Add sources on the Overview page.")
        source = by_name.get(chosen) if chosen else None
        if source is not None:
            if source.synthetic:
                st.badge("SYNTHETIC demo data", icon=":material/science:", color="orange")
            if not source.exists():
                st.badge("folder missing", icon=":material/error:", color="red")
        run_ids = [r.run_id for r in runs]
        _apply_pending("run", run_ids)
        by_id = {r.run_id: r for r in runs}
        picked = st.selectbox("Selected run", run_ids, key="run", bind="query-params", placeholder="No runs yet",
                              help="The run the Train, Runs and Predict pages show (newest first).")
        run = None
        if picked:
            summary = by_id[picked]
            run = RunDir(summary.path)
            best = (summary.best or {}).get("roc_auc")
            st.caption(f"{STATE_ICONS.get(summary.state, '')} {summary.state} · {summary.model} · "
                       f"{summary.epochs_done}/{summary.epochs_total} epochs"
                       + (f" · best ROC-AUC {best:.3f}" if best is not None else ""))
            if run.raw_status().get("synthetic_data"):
                st.badge("trained on SYNTHETIC data", icon=":material/science:", color="orange")
    context = Context(workspace, sources, source, runs, run)
    st.session_state["_context"] = context
    return context


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
    if ctx.run is None:
        st.info("No training run yet. Start one on the Train page.", icon=":material/model_training:")
        st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
        st.stop()
    if checkpoint:
        try:
            checkpoint_path(ctx.run.path, "best")
        except FileNotFoundError:
            st.info(f"Run {ctx.run.run_id} has no checkpoint yet: it appears when the first epoch ends.",
                    icon=":material/hourglass_top:")
            st.stop()
    return ctx.run


# -- cached data and models -------------------------------------------------------------------------------

@st.cache_resource(max_entries=8, show_spinner="Opening the split...")
def _open_split(path: str, fmt: str, split: str, version: float) -> PatchDataset:
    return DataSource("", path, fmt).open(split)


def open_split(source: DataSource, split: str) -> PatchDataset:
    """One split of a source, opened once per process (labels and metadata only; pixels on demand)."""
    try:
        return _open_split(source.path, source.format, split, source.version(split))
    except (OSError, ValueError) as err:
        fail(f"Cannot open split {split!r} of {source.name}: {err}")


@st.cache_resource(max_entries=8, show_spinner="Opening the split...")
def _run_split(data: str, split: str, config_json: str, version: float) -> PatchDataset:
    return dataset_for_split(data, split, ExperimentConfig.from_dict(json.loads(config_json)))


def run_split(run: RunDir, split: str) -> PatchDataset:
    """The split of the run's own data a predictions file refers to (for Kaggle data, the run's seeded
    validation split rebuilt)."""
    try:
        config = run.config()
        data = Path(config.data.path)
        return _run_split(str(data), split, config.to_json(), data.stat().st_mtime)
    except (OSError, ValueError) as err:
        fail(f"Cannot open the {split} data of run {run.run_id}: {err}")


@st.cache_data(max_entries=16, show_spinner="Measuring colours on a sample...")
def _colour_stats(path: str, fmt: str, split: str, version: float, per_class: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    return colour_statistics(_open_split(path, fmt, split, version), per_class=per_class)


def colour_stats(source: DataSource, split: str, per_class: int = 256) -> tuple[pd.DataFrame, pd.DataFrame]:
    return _colour_stats(source.path, source.format, split, source.version(split), per_class)


@st.cache_resource(max_entries=4, show_spinner="Loading the model...")
def _model(checkpoint: str, mtime: float) -> tuple[Any, Any, dict[str, Any]]:
    return model_from_checkpoint(checkpoint, "cpu")


def load_model(run: RunDir) -> tuple[Any, Any, dict[str, Any]]:
    """The run's best model on the CPU in eval mode, loaded once per checkpoint file version (never modified)."""
    try:
        path = checkpoint_path(run.path, "best")
        return _model(str(path), path.stat().st_mtime)
    except (OSError, ValueError) as err:
        fail(f"Cannot load the model of run {run.run_id}: {err}")


def _version(*paths: Path) -> tuple[tuple[int, int, int] | None, ...]:
    """Identifies the current content of files: a file replaced (written atomically: a new inode) or
    modified in place (mtime, size) gets a new version."""
    versions = []
    for path in paths:
        try:
            info = path.stat()
        except FileNotFoundError:
            versions.append(None)
        else:
            versions.append((info.st_ino, info.st_mtime_ns, info.st_size))
    return tuple(versions)


def _scores_version(run: RunDir, split: str) -> tuple:
    return _version(*scoring.score_files(run, split))


@st.cache_data(max_entries=16, show_spinner="Reading the predictions...")
def _split_predictions(run_path: str, split: str, version: tuple) -> pd.DataFrame | None:
    return scoring.split_predictions(RunDir(run_path), split)


def split_predictions(run: RunDir, split: str) -> pd.DataFrame | None:
    """`scoring.split_predictions`, read once per version of its file (32,768 rows for PCam's validation
    split): the Runs and Explain pages use them on every rerun."""
    return _split_predictions(str(run.path), split, _scores_version(run, split))


@st.cache_data(max_entries=64, show_spinner=False)
def _threshold_report(run_path: str, split: str, version: tuple, threshold: float) -> scoring.ThresholdReport:
    predictions = _split_predictions(run_path, split, version)
    return scoring.threshold_report(predictions["label"].to_numpy(), predictions["probability"].to_numpy(), threshold)


def threshold_report(run: RunDir, split: str, threshold: float) -> scoring.ThresholdReport:
    """`scoring.threshold_report` of a scored split, computed once per threshold and version of the scores."""
    return _threshold_report(str(run.path), split, _scores_version(run, split), threshold)


@st.cache_data(max_entries=16, show_spinner=False)
def _suggested_thresholds(run_path: str, version: tuple) -> dict[str, float]:
    return scoring.suggested_thresholds(RunDir(run_path))


def suggested_thresholds(run: RunDir) -> dict[str, float]:
    """`scoring.suggested_thresholds`, once per version of the run's validation predictions."""
    return _suggested_thresholds(str(run.path), _version(run.valid_predictions_path))


# -- patches ---------------------------------------------------------------------------------------------

def label_name(label: int) -> str:
    return LABEL_NAMES.get(int(label), str(label))


def patch_tiles(pixels: np.ndarray, captions: Sequence[str], *, box: bool = True, width: int | str = 120, scale: int = 2) -> None:
    """A flowing grid of patches, enlarged `scale` times, the central region outlined when `box`."""
    if len(pixels) == 0:
        return
    tiles = outline_centre(pixels, scale=scale, width=scale if box else 0)
    st.image(list(tiles), caption=list(captions), width=width)


def image_cards(images: Sequence[np.ndarray], captions: Sequence[str], *, width: int) -> None:
    """Images in a flowing row with gaps between them, each captioned."""
    with st.container(horizontal=True, gap="small"):
        for image, caption in zip(images, captions):
            with st.container(width=width, gap=None):
                st.image(image, caption=caption, width=width)


def png_data_url(image: np.ndarray) -> str:
    """An image as a PNG data URL (lossless: what a pathologist sees is the patch's own pixels)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


_PATCH_LINKS_CSS = """
.pcam-patch-links { display: flex; flex-wrap: wrap; gap: 0.5rem; }
.pcam-patch-links figure { margin: 0; text-align: center; }
.pcam-patch-links img { display: block; }
.pcam-patch-links figcaption { font-size: 0.875rem; opacity: 0.6; margin: 0.25rem 0 0.1rem; }
.pcam-patch-links a { font-size: 0.875rem; color: var(--st-primary-color); text-decoration: none; }
.pcam-patch-links a:hover { text-decoration: underline; }
"""
_patch_links = st.components.v2.component(
    "pcam_patch_links", js=(Path(__file__).parent / "patch_links.js").read_text(encoding="utf-8"), css=_PATCH_LINKS_CSS,
    isolate_styles=False)


def _ignore() -> None:
    """A component's trigger is read from its result; registering it needs a callback."""


def patch_cards(pixels: np.ndarray, captions: Sequence[str], page: str, links: Sequence[dict[str, str]], *,
                label: str, key: str, width: int = 192) -> None:
    """Patches in a flowing row, the central region outlined, each captioned and with a link `label` to
    `page` with its own query parameters (for instance the patch to open there). One element draws the
    whole row (a Streamlit image, caption and page link per patch cost a new tab of the Runs page 0.2 s):
    a click on a link switches page in this session, as `st.page_link` does, and its address opens the
    same view in a new tab or from a bookmark. Patches are shown `width` pixels wide, without smoothing
    at whole multiples of their 96 pixels."""
    if not len(pixels):
        return
    url_path = st.Page(page).url_path
    cards = [{"src": png_data_url(tile), "caption": caption, "href": f"{url_path}?{urlencode(query)}"}
             for tile, caption, query in zip(outline_centre(pixels), captions, links)]
    result = _patch_links(key=key, data={"cards": cards, "label": label, "width": width}, on_open_change=_ignore)
    chosen = result.open
    if isinstance(chosen, int) and 0 <= chosen < len(cards):
        switch_page(page, links[chosen])
