"""What every page of the dashboard shares: the sidebar and its selections, cached datasets and models,
the synthetic-data banner, patch tiles and the plotly figures. Drawing only: every number comes from
`pcam_core`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from pcam_core.checkpoint import model_from_checkpoint
from pcam_core.config import ExperimentConfig
from pcam_core.data import PatchDataset
from pcam_core.gallery import LABEL_NAMES, colour_statistics, outline_centre
from pcam_core.monitor import CURVE_METRICS, STATE_ICONS
from pcam_core.predict import checkpoint_path, dataset_for_split
from pcam_core.runs import RunDir, RunSummary
from pcam_core.scoring import ThresholdReport
from pcam_core.workspace import DataSource, Workspace

TUMOUR_COLOUR = "#c2185b"
NORMAL_COLOUR = "#00897b"
CLASS_COLOURS = {"tumour": TUMOUR_COLOUR, "normal": NORMAL_COLOUR, "unlabelled": "#9e9e9e"}
CHANNEL_COLOURS = {"red": "#d32f2f", "green": "#388e3c", "blue": "#1976d2"}
BOUNDED_METRICS = ("roc_auc", "pr_auc", "accuracy", "f1")

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


def context() -> Context:
    """The selections the sidebar made in this script run."""
    ctx = st.session_state.get("_context")
    if ctx is None:
        fail("Open the dashboard through streamlit_app.py (`streamlit run streamlit_app.py`).")
    return ctx


def require_source(ctx: Context) -> DataSource:
    if ctx.source is None:
        st.info("No data source yet. Add a PCam HDF5 folder or a Kaggle folder on the Overview page.", icon=":material/database:")
        st.page_link("app_pages/overview.py", label="Go to Overview", icon=":material/home:")
        st.stop()
    if not ctx.source.exists():
        fail(f"The folder of data source {ctx.source.name!r} no longer exists: {ctx.source.path}. "
             "Restore it, or remove the source on the Overview page.")
    return ctx.source


def require_run(ctx: Context, *, checkpoint: bool = False) -> RunDir:
    if ctx.run is None:
        st.info("No training run yet. Start one on the Train page.", icon=":material/model_training:")
        st.page_link("app_pages/train.py", label="Go to Train", icon=":material/model_training:")
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


# -- patches ---------------------------------------------------------------------------------------------

def label_name(label: int) -> str:
    return LABEL_NAMES.get(int(label), str(label))


def patch_tiles(pixels: np.ndarray, captions: Sequence[str], *, box: bool = True, width: int | str = 120, scale: int = 2) -> None:
    """A flowing grid of patches, enlarged `scale` times, the central region outlined when `box`."""
    if len(pixels) == 0:
        return
    tiles = outline_centre(pixels, scale=scale, width=scale if box else 0)
    st.image(list(tiles), caption=list(captions), width=width)


# -- figures ---------------------------------------------------------------------------------------------

def _layout(fig: go.Figure, title: str, height: int = 320, **kwargs: Any) -> go.Figure:
    fig.update_layout(title=dict(text=title, font=dict(size=15)), height=height, margin=dict(l=10, r=10, t=40, b=10),
                      template="plotly_white", legend=dict(orientation="h", yanchor="top", y=-0.22, x=0), **kwargs)
    return fig


def _epoch_axis(fig: go.Figure, epochs: pd.Series) -> go.Figure:
    """Whole epochs on the x axis (at most about ten ticks)."""
    last = int(epochs.max()) if len(epochs) and epochs.notna().any() else 1
    fig.update_xaxes(tick0=1, dtick=max(1, round(last / 10)))
    return fig


def balance_figure(counts: pd.DataFrame) -> go.Figure:
    """Stacked bars of patches per class, one bar per split (`split`, `normal`, `tumour`, `unlabelled`)."""
    fig = go.Figure()
    for name in ("normal", "tumour", "unlabelled"):
        if name in counts and counts[name].sum():
            share = counts[name] / counts[["normal", "tumour", "unlabelled"]].sum(axis=1).clip(lower=1)
            fig.add_bar(x=counts["split"], y=counts[name], name=name, marker_color=CLASS_COLOURS[name],
                        customdata=share, hovertemplate="%{x}: %{y:,} " + name + " (%{customdata:.1%})<extra></extra>")
    return _layout(fig, "Patches per split and class", barmode="stack", yaxis_title="patches")


def colour_figures(summary: pd.DataFrame, hist: pd.DataFrame) -> tuple[go.Figure, go.Figure]:
    """Mean channel value per class (with standard deviation), and the channel histograms per class."""
    bars = go.Figure()
    for name, group in summary.groupby("class", sort=False):
        bars.add_bar(x=group["channel"], y=group["mean"], error_y=dict(type="data", array=group["std"]),
                     name=f"{name} ({int(group['patches'].iloc[0])} patches)", marker_color=CLASS_COLOURS[name])
    _layout(bars, "Mean pixel value per channel (± standard deviation)", barmode="group", yaxis=dict(range=[0, 255]))
    lines = go.Figure()
    for (name, channel), group in hist.groupby(["class", "channel"], sort=False):
        lines.add_scatter(x=group["intensity"], y=group["share"], mode="lines", name=f"{name} · {channel}",
                          line=dict(color=CHANNEL_COLOURS[channel], dash="solid" if name == "tumour" else "dot"))
    _layout(lines, "Pixel intensity per channel (solid: tumour, dotted: normal)", xaxis_title="intensity (0-255)",
            yaxis_title="share of pixels")
    return bars, lines


def curves_figure(frame: pd.DataFrame, metric: str, *, title: str | None = None, height: int = 320) -> go.Figure:
    """One line per run of an epoch metric from `monitor.epoch_frame`."""
    fig = go.Figure()
    for run_id, group in frame.groupby("run", sort=False):
        fig.add_scatter(x=group["epoch"], y=group[metric], mode="lines+markers", name=run_id)
    _layout(fig, title or CURVE_METRICS[metric], height=height, xaxis_title="epoch",
            yaxis_title=CURVE_METRICS[metric], showlegend=frame["run"].nunique() > 1)
    values = frame[metric].dropna()
    if metric in BOUNDED_METRICS and len(values):  # scores in [0, 1]: never an axis beyond 1
        fig.update_yaxes(range=[max(0.0, float(values.min()) - 0.02), 1.002])
    return _epoch_axis(fig, frame["epoch"])


def loss_figure(steps: pd.DataFrame, epochs: pd.DataFrame) -> go.Figure:
    """Training loss every few steps and validation loss per epoch, against epochs."""
    fig = go.Figure()
    if len(steps):
        fig.add_scatter(x=steps["epoch"], y=steps["loss"], mode="lines+markers", name="training loss (recent steps)",
                        line=dict(color="#7b3f8c"), marker=dict(size=4))
    if len(epochs):
        fig.add_scatter(x=epochs["epoch"], y=epochs["loss"], mode="lines+markers", name="validation loss",
                        line=dict(color="#ef6c00"))
    _layout(fig, "Loss", xaxis_title="epoch", yaxis_title="loss")
    return _epoch_axis(fig, epochs["epoch"] if len(epochs) else steps["epoch"])


def _curve_figure(report: ThresholdReport, curve: dict[str, list[float]] | None, x: str, y: str, name: str,
                  hover: str) -> go.Figure:
    """A curve from `scoring` (keys `x`, `y`, `threshold`) and, as a black cross, the point the
    report's threshold selects on it (`report.operating_point` uses the same keys)."""
    fig = go.Figure()
    if curve is not None:
        fig.add_scatter(x=curve[x], y=curve[y], mode="lines", name=name, line=dict(color="#7b3f8c"),
                        customdata=curve["threshold"], hovertemplate=hover + "<br>threshold %{customdata:.3f}<extra></extra>")
    px, py = report.operating_point[x], report.operating_point[y]
    if px is not None and py is not None:
        fig.add_scatter(x=[px], y=[py], mode="markers", name=f"threshold {report.threshold:.2f}",
                        marker=dict(size=12, color="black", symbol="x"))
    return fig


_UNIT_AXIS = dict(range=[-0.01, 1.01])


def roc_figure(report: ThresholdReport) -> go.Figure:
    fig = _curve_figure(report, report.roc, "fpr", "tpr", "ROC", "1 - specificity %{x:.3f}<br>sensitivity %{y:.3f}")
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#bdbdbd", dash="dash"), name="chance", hoverinfo="skip")
    auc = report.metrics["roc_auc"]
    return _layout(fig, f"ROC curve (AUC {auc:.3f})" if auc is not None else "ROC curve (needs both classes)", height=340,
                   xaxis_title="1 - specificity (false positive rate)", yaxis_title="sensitivity (recall)",
                   xaxis=_UNIT_AXIS, yaxis=_UNIT_AXIS)


def pr_figure(report: ThresholdReport) -> go.Figure:
    fig = _curve_figure(report, report.pr, "recall", "precision", "PR", "recall %{x:.3f}<br>precision %{y:.3f}")
    prevalence = report.metrics["prevalence"]
    fig.add_hline(y=prevalence, line=dict(color="#bdbdbd", dash="dash"), annotation_text=f"prevalence {prevalence:.2f}")
    ap = report.metrics["pr_auc"]
    return _layout(fig, f"Precision-recall curve (AP {ap:.3f})" if ap is not None else "Precision-recall curve", height=340,
                   xaxis_title="recall (sensitivity)", yaxis_title="precision", xaxis=_UNIT_AXIS, yaxis=_UNIT_AXIS)


def confusion_figure(report: ThresholdReport) -> go.Figure:
    """2x2 heat map coloured by the rate within each true class, annotated with counts and rates."""
    table = report.confusion
    order = ["normal", "tumour"]
    rate = table.pivot(index="true", columns="called", values="rate").reindex(index=order, columns=order)
    count = table.pivot(index="true", columns="called", values="count").reindex(index=order, columns=order)
    names = {("normal", "normal"): "true negative", ("normal", "tumour"): "false positive",
             ("tumour", "normal"): "false negative", ("tumour", "tumour"): "true positive"}
    text = [[f"{names[(t, c)]}<br><b>{int(count.loc[t, c]):,}</b><br>{rate.loc[t, c]:.1%} of {t}"
             if rate.loc[t, c] == rate.loc[t, c] else f"{names[(t, c)]}<br>0" for c in order] for t in order]
    fig = go.Figure(go.Heatmap(z=rate.fillna(0).to_numpy(), x=[f"called {c}" for c in order], y=[f"truly {t}" for t in order],
                               text=text, texttemplate="%{text}", colorscale="Purples", zmin=0, zmax=1, showscale=False,
                               hoverinfo="skip"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, f"Confusion matrix at threshold {report.threshold:.2f}", height=340)


def probability_figure(predictions: pd.DataFrame, threshold: float) -> go.Figure:
    """Histogram of probabilities per true class, with the threshold."""
    fig = go.Figure()
    for value, name in ((0, "normal"), (1, "tumour")):
        probs = predictions.loc[predictions["label"] == value, "probability"]
        fig.add_histogram(x=probs, name=f"truly {name}", marker_color=CLASS_COLOURS[name], opacity=0.65,
                          xbins=dict(start=0, end=1.0001, size=0.025))
    fig.add_vline(x=threshold, line=dict(color="black", width=2), annotation_text=f"threshold {threshold:.2f}")
    return _layout(fig, "Probabilities by true class", height=340, barmode="overlay", xaxis_title="tumour probability",
                   yaxis_title="patches")
