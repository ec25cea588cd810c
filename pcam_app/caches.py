"""Datasets, models, predictions and threshold reports, cached per process and keyed on the version of
the files they come from: the pages read them on every rerun."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from pcam_core.workspace import scoring
from pcam_core.config import ExperimentConfig
from pcam_core.data import PatchDataset
from pcam_core.workspace.gallery import colour_statistics
from pcam_core.data.loader import dataset_for_split
from pcam_core.scope import scope_features
from pcam_core.fileio import file_versions
from pcam_core.loading import RunModel, load_run_model, posthoc_version, run_threshold
from pcam_core.runs import RunDir, resolve_run
from pcam_core.slides.folder import AnalysisFolder
from pcam_core.slides.viewer import lattice_of, load_heat, load_summary, window_from_corner
from pcam_core.workspace import DataSource, Workspace
from pcam_core import stats
from pcam_core.workspace import trust

from .shell import fail


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
def _run_split(data: str, split: str, config_json: str, out_of_fold: bool, version: float) -> PatchDataset:
    return dataset_for_split(data, split, ExperimentConfig.from_dict(json.loads(config_json)), out_of_fold=out_of_fold)


def run_split(run: RunDir, split: str) -> PatchDataset:
    """The split of the run's own data a predictions file refers to (for Kaggle data, the run's seeded
    validation split rebuilt; for a cross-validation, its whole pool, scored out-of-fold)."""
    try:
        config = run.config()
        data = Path(config.data.path)
        return _run_split(str(data), split, config.to_json(), run.is_cross_validation, data.stat().st_mtime)
    except (OSError, ValueError) as err:
        fail(f"Cannot open the {split} data of run {run.run_id}: {err}")


@st.cache_data(max_entries=8, show_spinner=False)
def _located(run_path: str, split: str, version: tuple, source_path: str, fmt: str, source_version: float) -> pd.DataFrame:
    dataset = _open_split(source_path, fmt, "train", source_version)
    return scoring.locate(_split_predictions(run_path, split, version), list(dataset.ids))


def patches_of(run: RunDir, split: str, source: DataSource | None) -> tuple[PatchDataset | None, pd.DataFrame]:
    """The dataset that holds the pixels of a scored split's patches, and the predictions whose pixels it
    holds (their `index` its positions). A run's own split: all of them. The bundled model's held-out
    patches ship without pixels: those the active dataset holds, when it is a Kaggle folder (its `train/`
    files are named by patch id); else (None, no rows)."""
    predictions = split_predictions(run, split)
    if not resolve_run(run).bundled:
        return run_split(run, split), predictions
    if source is None or source.format != "kaggle" or not source.exists() or "train" not in source.splits():
        return None, predictions.iloc[:0]
    try:
        located = _located(str(run.path), split, _scores_version(run, split), source.path, source.format, source.version("train"))
        return _open_split(source.path, source.format, "train", source.version("train")), located
    except (OSError, ValueError) as err:
        fail(f"Cannot open the train split of {source.name}: {err}")


@st.cache_data(max_entries=16, show_spinner="Reading the window...")
def _slide_window(slide_path: str, analysis: str, version: int, x: float, y: float) -> dict[str, Any]:
    folder = AnalysisFolder(analysis)
    return window_from_corner(slide_path, load_heat(folder), lattice_of(load_summary(folder)), x, y)


def slide_window(workspace: Workspace, run: RunDir, slide: str, x: float, y: float, *, stride: int) -> dict[str, Any]:
    """The 96-pixel window of a slide of the library whose top-left is level-0 point (x, y), as the analysis of it
    with `run` at `stride` read and scored it (`slides.viewer.window_from_corner`: `pixels`, the map's `probability`, `state`,
    `row`, `col`, and `slide`, the slide's entry), read once per analysis version. `KeyError`: no such slide;
    `FileNotFoundError`: no finished analysis of it with this run; `ValueError`: a point outside the slide."""
    library = workspace.slide_library
    entry = library.lookup(slide)
    state = library.analysis(entry.id, resolve_run(run).arg, stride=stride)
    if state.state != "done":
        raise FileNotFoundError(f"{entry.name} has no finished analysis with this model at stride {stride} ({state.state})")
    version = state.folder.summary_json.stat().st_mtime_ns
    return {**_slide_window(str(entry.path), str(state.folder.path), version, float(x), float(y)), "slide": entry}


@st.cache_data(max_entries=16, show_spinner="Measuring colours on a sample...")
def _colour_stats(path: str, fmt: str, split: str, version: float, per_class: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    return colour_statistics(_open_split(path, fmt, split, version), per_class=per_class)


def colour_stats(source: DataSource, split: str, per_class: int = 256) -> tuple[pd.DataFrame, pd.DataFrame]:
    return _colour_stats(source.path, source.format, split, source.version(split), per_class)


@st.cache_resource(max_entries=4, show_spinner="Loading the model...")
def _model(run: str, checkpoint: str, mtime: float, posthoc: tuple) -> RunModel:
    return load_run_model(run, device="cpu")


def best_checkpoint(run: RunDir) -> tuple[str, str, float]:
    """The run as a run argument, its best checkpoint and that file's version (to key the caches on)."""
    ref = resolve_run(run.path)
    path = ref.checkpoint("best")
    return ref.arg, str(path), path.stat().st_mtime


def load_model(run: RunDir) -> RunModel:
    """The run's best model on the CPU in eval mode with its threshold and calibration
    (`pcam_core.loading.load_run_model`, as every face loads it), loaded again when the checkpoint or a refitted
    calibration or guard is newer."""
    try:
        return _model(*best_checkpoint(run), posthoc_version(run.path))
    except (OSError, ValueError, RuntimeError) as err:
        fail(f"Cannot load the model of run {run.run_id}: {err}")


def in_scope(run: RunDir, pixels: np.ndarray) -> np.ndarray | None:
    """Whether each patch (N, 96, 96, 3) lies within the run's out-of-scope guard (`pcam_core.scope`); None when the
    run has no guard. One forward pass of the patches."""
    loaded = load_model(run)
    if loaded.scope is None:
        return None
    return loaded.scope.in_scope(loaded.scope.distance(scope_features(loaded.model, loaded.model_name, pixels)))


@st.cache_data(max_entries=32, show_spinner=False)
def _run_threshold(run: str, checkpoint: str, mtime: float) -> float:
    return run_threshold(run)


def own_threshold(run: RunDir) -> float:
    """The run's own threshold (`pcam_core.loading.run_threshold`: the one `pcam predict` and `pcam serve`
    call with), read once per version of its best checkpoint."""
    try:
        return _run_threshold(*best_checkpoint(run))
    except (OSError, ValueError, RuntimeError) as err:
        fail(f"Cannot read the threshold of run {run.run_id}: {err}")


def _scores_version(run: RunDir, split: str) -> tuple:
    return file_versions(*scoring.score_files(run, split))


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
def _suggested_thresholds(run_path: str, version: tuple, own: float) -> dict[str, float]:
    return scoring.suggested_thresholds(RunDir(run_path), own)


def suggested_thresholds(run: RunDir) -> dict[str, float]:
    """`scoring.suggested_thresholds` with the run's own threshold, once per version of the run's validation
    predictions."""
    return _suggested_thresholds(str(run.path), file_versions(run.valid_predictions_path), own_threshold(run))


@st.cache_data(max_entries=64, show_spinner=False)
def _metric_intervals(run_path: str, split: str, version: tuple, threshold: float) -> dict[str, Any]:
    predictions = _split_predictions(run_path, split, version)
    return stats.metric_intervals(predictions["label"].to_numpy(), predictions["probability"].to_numpy(), threshold, pr_auc=False)


@st.cache_data(max_entries=16, show_spinner="Bootstrapping the PR-AUC...")
def _pr_auc_interval(run_path: str, split: str, version: tuple) -> dict[str, Any] | None:
    predictions = _split_predictions(run_path, split, version)
    labels = predictions["label"].to_numpy()
    if min((labels == 1).sum(), (labels == 0).sum()) < 2:
        return None
    return stats.pr_auc_interval(labels, predictions["probability"].to_numpy())


def metric_intervals(run: RunDir, split: str, threshold: float) -> dict[str, Any]:
    """`stats.metric_intervals` of a scored split, once per threshold and version of the scores; the PR-AUC's
    bootstrap (200 sorts of the split) does not depend on the threshold, and is computed once per version."""
    version = _scores_version(run, split)
    return {**_metric_intervals(str(run.path), split, version, threshold),
            "pr_auc": _pr_auc_interval(str(run.path), split, version)}


@st.cache_data(max_entries=32, show_spinner=False)
def _triage_view(run_path: str, split: str, version: tuple, valid_version: tuple, target: float, fpr: float) -> dict[str, Any] | None:
    predictions = _split_predictions(run_path, split, version)
    return trust.triage_view(RunDir(run_path), split, predictions, target, fpr)


def triage_view(run: RunDir, split: str, target: float, fpr: float) -> dict[str, Any] | None:
    """`trust.triage_view` of a scored split, once per target, rate and version of the scores."""
    return _triage_view(str(run.path), split, _scores_version(run, split), file_versions(run.valid_predictions_path), target, fpr)


@st.cache_data(max_entries=16, show_spinner="Comparing the runs...")
def _compare_runs(run_paths: tuple[str, ...], split: str, versions: tuple, threshold: float) -> dict[str, Any]:
    return trust.compare_runs([RunDir(p) for p in run_paths], split, threshold)


def compare_runs(runs: list[RunDir], split: str, threshold: float) -> dict[str, Any]:
    """`trust.compare_runs`, once per threshold and version of every run's scores."""
    return _compare_runs(tuple(str(r.path) for r in runs), split, tuple(_scores_version(r, split) for r in runs), threshold)
