"""A run's predictions on a split, and every figure at a chosen decision threshold.

The validation split is scored by the trainer itself at the best epoch (`valid_predictions.csv`).
Other labelled splits are scored by `pcam evaluate` in a background job whose files live in the run
folder, beside the checkpoints they came from (`RunDir.evaluation_files`, `RunDir.evaluations`; the
layout is `pcam_core.runs.folder`'s).

A file older than the run's best checkpoint is stale (the run trained on) and is not used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..decision import DEFAULT_THRESHOLD, check_threshold
from ..metrics import binary_metrics, choose_threshold, pr_points, roc_points
from ..runs import RunDir, resolve_run
from ..runs.jobs import JobStatus, job_status, start_job

TRAINER_SPLIT = "valid"


def scorable_splits(run: RunDir) -> list[str]:
    """Labelled splits of the run's data: "valid" first (scored during training), then the others. The
    bundled model has one: "valid", its held-out patches (the ensemble's: every patch, out of fold), whose predictions
    ship with it (not their pixels). A cross-validation's "valid" is every patch of its pool (the "train" split), out
    of fold: "train" itself, which every one of its members but one trained on, is not offered."""
    from ..data import available_splits, detect_format, split_files  # the readers import torch

    if resolve_run(run).bundled:
        return [TRAINER_SPLIT]
    data = Path(run.config().data.path)
    if not data.exists():
        return [TRAINER_SPLIT]
    fmt = detect_format(data)
    if fmt == "h5":
        others = [s for s in available_splits(data) if s != TRAINER_SPLIT and split_files(data, s)["y"].exists()]
    else:  # Kaggle: only train/ is labelled (it includes the run's validation patches)
        others = ["train"] if (data / "train").is_dir() else []
    if run.is_cross_validation:
        others = [s for s in others if s != "train"]  # `cv_pool`: the ensemble's figures on it would flatter it
    return [TRAINER_SPLIT, *others]


def _fresh(path: Path, run: RunDir) -> bool:
    if not path.exists():
        return False
    try:
        return path.stat().st_mtime >= run.checkpoint("best").stat().st_mtime
    except FileNotFoundError:
        return False


def predictions_file(run: RunDir, split: str) -> Path:
    """Where the per-patch predictions of `split` for `run` are (or will be) written."""
    return run.valid_predictions_path if split == TRAINER_SPLIT else run.evaluation_files(split)[1]


def score_files(run: RunDir, split: str) -> tuple[Path, Path]:
    """The files `split_predictions` depends on: the predictions, and the checkpoint they must not be
    older than (the best one; the last one while no epoch has finished)."""
    try:
        checkpoint = run.checkpoint("best")
    except FileNotFoundError:
        checkpoint = run.best_checkpoint  # none yet: the version says so
    return predictions_file(run, split), checkpoint


def split_predictions(run: RunDir, split: str) -> pd.DataFrame | None:
    """id, label, probability, index of every patch of `split`, or None when not scored (or stale)."""
    path = predictions_file(run, split)
    if split == TRAINER_SPLIT:
        if not path.exists():
            return None
    elif not _fresh(path, run):
        return None
    frame = pd.read_csv(path, dtype={"id": str})
    missing = {"label", "probability", "index"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path} lacks column(s) {', '.join(sorted(missing))}; was it written by pcam_core?")
    return frame


def scored_splits(run: RunDir) -> list[str]:
    """The splits of `scorable_splits` with current predictions to read (the validation split once the
    trainer wrote its predictions; another split once scored with the run's best checkpoint)."""
    return [split for split in scorable_splits(run)
            if (run.valid_predictions_path.exists() if split == TRAINER_SPLIT else _fresh(run.evaluation_files(split)[1], run))]


def locate(predictions: pd.DataFrame, ids: list[str]) -> pd.DataFrame:
    """The rows of `predictions` whose patch `id` is among `ids` (the ids of a dataset's patches, in its
    order), with `index` their position there: the bundled model's held-out predictions ship without
    pixels, and a registered Kaggle folder holding those patches supplies them."""
    position = {str(pid): i for i, pid in enumerate(ids)}
    rows = predictions[predictions["id"].astype(str).isin(position)].copy()
    rows["index"] = rows["id"].astype(str).map(position).astype(np.int64)
    return rows


def start_scoring(run: RunDir, split: str, *, tta: bool = True) -> JobStatus:
    """Score `split` of the run's data with its best checkpoint in the background (`pcam evaluate`),
    averaging the 8 symmetries of each patch unless `tta` is False (as `pcam evaluate` does)."""
    if split == TRAINER_SPLIT:
        raise ValueError("the validation split is scored by the trainer; it needs no separate job")
    if split not in scorable_splits(run):
        raise ValueError(f"run {run.run_id} cannot be scored on {split!r}; labelled splits: {', '.join(scorable_splits(run))}")
    run.checkpoint("best")  # fails clearly before a process is started for nothing
    metrics_path, predictions_path = run.evaluation_files(split)
    args = ["evaluate", "--run", str(run.path), "--data", run.config().data.path, "--split", split,
            "--out", str(metrics_path), "--workers", "0", "--tta" if tta else "--no-tta"]
    return start_job(run.evaluations, f"score-{split}", args, outputs=[metrics_path, predictions_path])


def scoring_status(run: RunDir, split: str) -> JobStatus | None:
    return job_status(run.evaluations, f"score-{split}")


# The ROC and PR curves are drawn through the points at least this far apart (metrics.thin_curve): a
# thousandth of the axis, under half a pixel of the dashboard's charts. A 32,768-patch split's PR curve
# has about 30,000 points (1.7 MB of chart data, sent again on every move of the threshold); thinned, a
# few thousand at most. The AUCs and every figure at the threshold use all the predictions.
CURVE_RESOLUTION = 1e-3


@dataclass(frozen=True)
class ThresholdReport:
    """Every figure of a scored split at one decision threshold (a patch is called tumour when its
    probability is >= threshold). `metrics` is `binary_metrics`; the curves do not depend on it (they
    are thinned for drawing, `CURVE_RESOLUTION`)."""

    threshold: float
    metrics: dict[str, Any]
    confusion: pd.DataFrame  # rows: true class, columns: called class; "count" and "rate" (share of the true class)
    roc: dict[str, list[float]] | None
    pr: dict[str, list[float]] | None
    operating_point: dict[str, float | None]  # fpr, tpr (ROC) and recall, precision (PR) at the threshold


def threshold_report(labels: np.ndarray, probs: np.ndarray, threshold: float) -> ThresholdReport:
    """Metrics, confusion counts and rates, ROC and PR curves with the point the threshold selects."""
    metrics = binary_metrics(labels, probs, threshold)
    c = metrics["confusion"]
    rows = []
    for truth, cells in (("normal", (("normal", c["tn"]), ("tumour", c["fp"]))), ("tumour", (("normal", c["fn"]), ("tumour", c["tp"])))):
        total = sum(n for _, n in cells)
        rows += [{"true": truth, "called": called, "count": n, "rate": n / total if total else None} for called, n in cells]
    negatives, positives = c["tn"] + c["fp"], c["tp"] + c["fn"]
    point = {
        "fpr": c["fp"] / negatives if negatives else None,
        "tpr": c["tp"] / positives if positives else None,
        "recall": metrics["recall"] if positives else None,
        "precision": metrics["precision"] if (c["tp"] + c["fp"]) else None,
    }
    both = metrics["roc_auc"] is not None
    return ThresholdReport(threshold, metrics, pd.DataFrame(rows),
                           roc_points(labels, probs, resolution=CURVE_RESOLUTION) if both else None,
                           pr_points(labels, probs, resolution=CURVE_RESOLUTION) if both else None, point)


OWN_THRESHOLD = "the run's own"  # the name of the run's own threshold among the suggestions


def suggested_thresholds(run: RunDir, own: float = DEFAULT_THRESHOLD) -> dict[str, float]:
    """The run's `own` threshold (`pcam_core.loading.run_threshold`: the one every face calls with by
    default), and thresholds chosen on the run's validation predictions (never on the split being judged):
    Youden's J, and the highest giving 95% sensitivity."""
    out = {OWN_THRESHOLD: check_threshold(own, "the run's own threshold")}
    valid = split_predictions(run, TRAINER_SPLIT)
    if valid is None or valid["label"].nunique() < 2:
        return out
    labels, probs = valid["label"].to_numpy(), valid["probability"].to_numpy()
    out["Youden (validation)"] = choose_threshold(labels, probs, "youden")
    out["95% sensitivity (validation)"] = choose_threshold(labels, probs, "sensitivity", value=0.95)
    return out
