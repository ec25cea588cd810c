"""Calibrated probabilities: temperature scaling (Guo et al. 2017) fitted on a run's validation predictions.

The model's logit z = logit(p) is divided by one number T fitted to minimise the negative log-likelihood
(NLL) of the validation labels: p_cal = sigmoid(z / T). T > 1 softens an over-confident model, T < 1
sharpens an under-confident one; the ranking of patches, hence ROC-AUC and every threshold-free figure,
does not change. T is searched on log T (scipy's bounded scalar minimiser), so it stays positive.

The fitted temperature is kept in the run folder (`calibration.json`, `RunDir.calibration_path`) with
what it was fitted on and the NLL, ECE and Brier score before and after. The trainer fits it when a run
ends; `pcam calibrate --run RUN` fits it for an existing run. The bundled model ships the predictions on its
600 held-out patches and their temperature (`scripts/bundled_calibration.py`), so it has both a temperature
and triage thresholds (`run_triage` fits those on the same file). docs/trust.md says what calibration does and does not promise.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_expit, logit

from .fileio import atomic_write_json, read_json
from .metrics import _check, expected_calibration_error, reliability_points
from .runs import RunArg, RunDir, resolve_run
from .triage import DEFAULT_FPR, TriageThresholds, fit_triage

EPS = 1e-6  # probabilities are clipped to [EPS, 1 - EPS] before the logit: a float32 sigmoid saturates at 0 and 1
LOG_T_BOUNDS = (-4.0, 4.0)  # T within [0.018, 55]


def to_logits(probs: np.ndarray) -> np.ndarray:
    """logit(p) with p clipped to [EPS, 1 - EPS]."""
    return logit(np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS))


def nll(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean negative log-likelihood (log loss) of 0/1 labels under sigmoid(logits), computed stably."""
    return float(-np.mean(labels * log_expit(logits) + (1 - labels) * log_expit(-logits)))


def fit_temperature(labels: np.ndarray, probs: np.ndarray) -> float:
    """The temperature T minimising the NLL of `labels` under sigmoid(logit(probs) / T)."""
    labels, probs = _check(labels, probs)
    if np.unique(labels).size < 2:
        raise ValueError("temperature scaling needs validation patches of both classes")
    z = to_logits(probs)
    result = minimize_scalar(lambda log_t: nll(labels, z / np.exp(log_t)), bounds=LOG_T_BOUNDS, method="bounded",
                             options={"xatol": 1e-6})
    return float(np.exp(result.x))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities sigmoid(logit(probs) / T)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return expit(to_logits(probs) / temperature)


def _scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    return {"nll": nll(labels, to_logits(probs)), "ece": expected_calibration_error(labels, probs),
            "brier": float(np.mean((probs - labels) ** 2))}


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and its record: what it was fitted on, and the NLL, ECE and Brier score of
    those predictions before and after."""

    temperature: float
    fitted_on: str  # the file of validation predictions
    split: str
    n: int
    before: dict[str, float]
    after: dict[str, float]
    fitted_at: str
    method: str = "temperature scaling"

    def apply(self, probs: np.ndarray) -> np.ndarray:
        return apply_temperature(probs, self.temperature)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def fit_calibration(labels: np.ndarray, probs: np.ndarray, *, fitted_on: str, split: str = "valid") -> Calibration:
    """Fit a temperature on labelled predictions and record the scores before and after."""
    labels, probs = _check(labels, probs)
    temperature = fit_temperature(labels, probs)
    return Calibration(temperature, fitted_on, split, int(labels.size), _scores(labels, probs),
                       _scores(labels, apply_temperature(probs, temperature)),
                       _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def _run_dir(run_dir: RunArg) -> RunDir:
    """The run folder, or the bundled model's package folder (it ships the predictions on its held-out
    patches as `valid_predictions.csv` and their temperature: `scripts/bundled_calibration.py`)."""
    return resolve_run(run_dir, must_exist=False).folder


def _no_validation(run_dir: str | Path) -> str:
    return f"{_run_dir(run_dir).valid_predictions_path} not found: calibration needs the run's validation predictions"


def validation_predictions(run_dir: str | Path, *, tta: bool = False) -> pd.DataFrame:
    """The run's validation predictions (id, label, probability, index; for the bundled model its held-out
    patches, for a cross-validated run or ensemble its out-of-fold ones), or a clear error: a run has none until
    its first epoch ends. With `tta`, those scored with TTA where the run has them (`RunDir.valid_predictions_for`)."""
    path = _run_dir(run_dir).valid_predictions_for(tta=tta)
    if not path.exists():
        raise FileNotFoundError(_no_validation(run_dir))
    return pd.read_csv(path, dtype={"id": str})


def calibrate_run(run_dir: str | Path, *, tta: bool = False) -> Calibration:
    """Fit the temperature of a run on its validation predictions and write `calibration.json`; with `tta`, on
    its TTA predictions into `calibration_tta.json` (only runs with a TTA file have one: `RunDir.valid_predictions_for`)."""
    run = _run_dir(run_dir)
    source = run.valid_predictions_for(tta=tta)
    if tta and source != run.valid_predictions_tta_path:
        raise FileNotFoundError(f"{run.valid_predictions_tta_path} not found: this run has no TTA validation predictions")
    frame = validation_predictions(run_dir, tta=tta)
    calibration = fit_calibration(frame["label"].to_numpy(), frame["probability"].to_numpy(), fitted_on=source.name)
    atomic_write_json(run.calibration_tta_path if tta else run.calibration_path, calibration.to_dict())
    return calibration


def run_triage(run_dir: str | Path, target_sensitivity: float, fpr: float = DEFAULT_FPR, *, tta: bool = False) -> TriageThresholds:
    """The split-conformal triage thresholds of a run (`triage.fit_triage`), fitted on its validation predictions
    of the scoring mode applied (`tta`: the TTA ones where the run has them)."""
    frame = validation_predictions(run_dir, tta=tta)
    return fit_triage(frame["label"].to_numpy(), frame["probability"].to_numpy(), target_sensitivity, fpr)


def load_calibration(run_dir: str | Path, *, tta: bool = False) -> Calibration | None:
    """The run's fitted temperature (the bundled model's is shipped with it), or None when none was fitted; with
    `tta`, the one fitted on TTA predictions where the run has one (`RunDir.calibration_for`)."""
    path = _run_dir(run_dir).calibration_for(tta=tta)
    data = read_json(path, default=None)
    if not data:
        return None
    try:
        return Calibration.from_dict(data)
    except TypeError as err:
        raise ValueError(f"{path} is not a calibration record: {err}") from err


def calibration_report(labels: np.ndarray, probs: np.ndarray, calibration: Calibration, n_bins: int = 10) -> dict[str, Any]:
    """ECE and Brier score of labelled predictions before and after a temperature, and the reliability
    diagram's points of both (observed frequency against mean predicted probability per bin)."""
    labels, probs = _check(labels, probs)
    calibrated = calibration.apply(probs)
    return {"temperature": calibration.temperature, "before": _scores(labels, probs), "after": _scores(labels, calibrated),
            "reliability_before": reliability_points(labels, probs, n_bins),
            "reliability_after": reliability_points(labels, calibrated, n_bins)}
