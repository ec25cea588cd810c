"""How far to trust a run's calls on a scored split: calibration before and after its temperature, the
conformal triage (thresholds fitted on the validation split, judged on the split shown), confidence
intervals, per-patch uncertainty, and comparison with other runs scored on the same patches.

Everything reads the scored splits of `scoring` and the run's `calibration.json`; no model code.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..calibration import Calibration, calibration_report, load_calibration
from ..decision import DEFAULT_THRESHOLD
from ..metrics import roc_points
from ..runs import RunDir
from ..stats import compare_predictions
from ..triage import DEFAULT_FPR, fit_triage, triage_curve, triage_outcome
from .scoring import CURVE_RESOLUTION, TRAINER_SPLIT, split_predictions


def uncertainty_by_id(run: RunDir, split: str) -> pd.Series | None:
    """The TTA uncertainty (standard deviation of the 8 views' probabilities) of every patch of a scored
    split, indexed by patch id; None when the split is not scored, or was scored with one pass (the
    trainer scores the validation split so: score it with `pcam evaluate` for an uncertainty)."""
    frame = split_predictions(run, split)
    if frame is None or "uncertainty" not in frame.columns or frame["uncertainty"].isna().all():
        return None
    return frame.drop_duplicates("id").set_index("id")["uncertainty"]


def calibration_view(run: RunDir, predictions: pd.DataFrame) -> tuple[Calibration | None, dict[str, Any] | None]:
    """The run's temperature and, on `predictions` (a scored split), ECE and Brier before and after with
    both reliability diagrams (`calibration.calibration_report`); (None, None) without a temperature."""
    calibration = load_calibration(run.path)
    if calibration is None:
        return None, None
    return calibration, calibration_report(predictions["label"].to_numpy(), predictions["probability"].to_numpy(), calibration)


def triage_view(run: RunDir, split: str, predictions: pd.DataFrame, target_sensitivity: float,
                fpr: float = DEFAULT_FPR) -> dict[str, Any] | None:
    """The triage of a scored split: thresholds fitted on the run's validation predictions at
    `target_sensitivity` and `fpr`, what they do on `predictions` (miss, false-positive and referral rates),
    and the curve of referral and miss rates against the target. `in_sample` says the split judged is the
    one the thresholds were fitted on (its figures then are not a test of the guarantee). None when the
    run has no validation predictions of both classes."""
    valid = split_predictions(run, TRAINER_SPLIT)
    if valid is None or valid["label"].nunique() < 2:
        return None
    fit_labels, fit_probs = valid["label"].to_numpy(), valid["probability"].to_numpy()
    labels, probs = predictions["label"].to_numpy(), predictions["probability"].to_numpy()
    thresholds = fit_triage(fit_labels, fit_probs, target_sensitivity, fpr)
    return {"thresholds": thresholds, "outcome": triage_outcome(labels, probs, thresholds),
            "curve": triage_curve(fit_labels, fit_probs, labels, probs, fpr=fpr), "in_sample": split == TRAINER_SPLIT,
            "guarantee": thresholds.guarantee()}


def comparable_runs(run: RunDir, others: list[RunDir], split: str) -> list[RunDir]:
    """The runs of `others` (not `run`) with current predictions of `split` holding the same patch ids."""
    mine = split_predictions(run, split)
    if mine is None:
        return []
    ids = set(mine["id"].astype(str))
    out = []
    for other in others:
        if other.path == run.path:
            continue
        try:
            theirs = split_predictions(other, split)
        except (OSError, ValueError):
            continue
        if theirs is not None and set(theirs["id"].astype(str)) == ids:
            out.append(other)
    return out


def compare_runs(runs: list[RunDir], split: str, threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """`stats.compare_predictions` of the runs' predictions of `split` (the first run is the reference),
    with each run's ROC curve thinned for drawing."""
    frames = {}
    for run in runs:
        frame = split_predictions(run, split)
        if frame is None:
            raise ValueError(f"run {run.run_id} has no current predictions of the {split} split; score it first")
        frames[run.run_id] = frame
    result = compare_predictions(frames, threshold)
    labels = result.pop("labels")
    result["roc"] = {name: roc_points(labels, probs, resolution=CURVE_RESOLUTION)
                     for name, probs in result.pop("probabilities").items()}
    return result


def uncertainty_note(predictions: pd.DataFrame) -> str | None:
    """Why a scored split has no uncertainty to sort by, or None when it has one."""
    if "uncertainty" in predictions.columns and not predictions["uncertainty"].isna().all():
        return None
    return ("These predictions were made with one pass per patch (the trainer scores the validation split so), which "
            "measures no spread; a split scored with test-time augmentation (the Score button, `pcam evaluate`) carries "
            "the uncertainty of each patch.")


def has_uncertainty(predictions: pd.DataFrame) -> bool:
    return uncertainty_note(predictions) is None


__all__ = ["calibration_view", "comparable_runs", "compare_runs", "has_uncertainty", "triage_view", "uncertainty_by_id",
           "uncertainty_note"]
