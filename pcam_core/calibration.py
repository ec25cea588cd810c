"""Calibrated probabilities: temperature scaling (Guo et al. 2017) with a bias (Platt 1999, on the logit), fitted on
a run's validation predictions.

The model's logit z = logit(p) is divided by a temperature T and shifted by a bias b, both fitted to minimise the
negative log-likelihood (NLL) of the validation labels: p_cal = sigmoid(z / T + b). T > 1 softens an over-confident
model, T < 1 sharpens an under-confident one. The bias undoes the trainer's class-balanced loss (`pos_weight`, the
positive class weighted by negatives / positives), which leans every logit towards tumour by about log(pos_weight):
temperature alone cannot take that lean out (the 54-epoch bundled ensemble: out-of-fold ECE 0.038 -> 0.041 with T
alone, 0.010 with T and b, cross-fitted). Both are monotone, so the ranking of patches, hence ROC-AUC, every
threshold-free figure and the triage's calls, does not change; but a patch called tumour at the model's threshold
(0.5 on the raw probability, the class-balanced operating point) can have a calibrated probability under 0.5.
T is searched on log T, so it stays positive. Calibration records written before the bias was fitted hold T alone
(`bias` 0), and are applied as they were fitted.

The fitted temperature and bias are kept in the run folder (`calibration.json`, `RunDir.calibration_path`) with
what it was fitted on and the NLL, ECE and Brier score before and after. The trainer fits it when a run
ends; `pcam calibrate --run RUN` fits it for an existing run. The bundled model ships the predictions on its
600 held-out patches and their temperature (`scripts/bundled_calibration.py`), so it has both a temperature
and triage thresholds (`run_triage` fits those on the same file). docs/trust.md says what calibration does and does not promise.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit, log_expit, logit

from .fileio import atomic_write_json
from .metrics import _check, expected_calibration_error, reliability_points
from .runs import RunArg, RunDir, resolve_run
from .triage import DEFAULT_FPR, TriageThresholds, fit_triage

EPS = 1e-6  # probabilities are clipped to [EPS, 1 - EPS] before the logit: a float32 sigmoid saturates at 0 and 1
LOG_T_BOUNDS = (-4.0, 4.0)  # T within [0.018, 55]
BIAS_BOUNDS = (-5.0, 5.0)  # on the logit
BOUND_TOLERANCE = 0.01  # a fitted log T or bias this close to a bound sits at it (`Calibration.warning`)
MIN_CALIBRATION_PATCHES = 100  # a fit on fewer is warned about (`Calibration.warning`): two parameters, few patches
METHOD = "temperature and bias"


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
    from scipy.optimize import minimize_scalar  # here: a process that only applies a calibration does not import it

    result = minimize_scalar(lambda log_t: nll(labels, z / np.exp(log_t)), bounds=LOG_T_BOUNDS, method="bounded",
                             options={"xatol": 1e-6})
    return float(np.exp(result.x))


def fit_temperature_and_bias(labels: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """The temperature T and bias b minimising the NLL of `labels` under sigmoid(logit(probs) / T + b)."""
    labels, probs = _check(labels, probs)
    if np.unique(labels).size < 2:
        raise ValueError("calibration needs validation patches of both classes")
    z = to_logits(probs)
    start = np.log(fit_temperature(labels, probs))
    from scipy.optimize import minimize

    result = minimize(lambda w: nll(labels, z / np.exp(w[0]) + w[1]), x0=[start, 0.0], method="L-BFGS-B",
                      bounds=[LOG_T_BOUNDS, BIAS_BOUNDS])
    return float(np.exp(result.x[0])), float(result.x[1])


def apply_temperature(probs: np.ndarray, temperature: float, bias: float = 0.0) -> np.ndarray:
    """Calibrated probabilities sigmoid(logit(probs) / T + b)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return expit(to_logits(probs) / temperature + bias)


def calibration_scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """The negative log-likelihood, expected calibration error and Brier score of `probs` against `labels`: the figures
    a calibration is judged by, before and after."""
    return {"nll": nll(labels, to_logits(probs)), "ece": expected_calibration_error(labels, probs),
            "brier": float(np.mean((probs - labels) ** 2))}


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and bias and their record: what they were fitted on, and the NLL, ECE and Brier score of
    those predictions before and after."""

    temperature: float
    fitted_on: str  # the file of validation predictions
    split: str
    n: int
    before: dict[str, float]
    after: dict[str, float]
    fitted_at: str
    method: str = "temperature scaling"  # what records written before the bias was fitted say
    bias: float = 0.0

    def apply(self, probs: np.ndarray) -> np.ndarray:
        return apply_temperature(probs, self.temperature, self.bias)

    @property
    def describe(self) -> str:
        """"temperature 1.057, bias -0.387" (the bias left out where the record has none)."""
        return f"temperature {self.temperature:.3f}" + (f", bias {self.bias:+.3f}" if self.bias else "")

    @property
    def formula(self) -> str:
        """How the calibrated probability is made, in symbols."""
        return "sigmoid(logit(p) / T + b)" if self.bias else "sigmoid(logit(p) / T)"

    @property
    def warning(self) -> str | None:
        """What to distrust in this fit, in one sentence, or None: a fit on fewer than `MIN_CALIBRATION_PATCHES`
        patches, or a temperature or bias at the edge of its search
        (`LOG_T_BOUNDS`, `BIAS_BOUNDS`) means the NLL wanted to go further, so the fit says more about the model
        than a correction would. At the largest temperature the validation predictions told the labels apart too
        little to be scaled: every calibrated probability lies near sigmoid(b), the share of tumour it saw."""
        problems = []
        log_t = np.log(self.temperature)
        if log_t >= LOG_T_BOUNDS[1] - BOUND_TOLERANCE:
            problems.append(f"the temperature is the largest the fit allows ({self.temperature:.1f}): the validation "
                            f"predictions separate the classes too little to be scaled, so every calibrated probability "
                            f"lies near {expit(self.bias):.2f}")
        elif log_t <= LOG_T_BOUNDS[0] + BOUND_TOLERANCE:
            problems.append(f"the temperature is the smallest the fit allows ({self.temperature:.3f}): the fit would "
                            f"sharpen the probabilities further still")
        if abs(self.bias) >= BIAS_BOUNDS[1] - BOUND_TOLERANCE:
            problems.append(f"the bias is at the edge of its range ({self.bias:+.2f})")
        few = self.n < MIN_CALIBRATION_PATCHES
        if not problems and not few:
            return None
        if not problems:  # QA: temperatures of 0.258 and 9.417 fitted on 16 patches, served without a word
            return (f"Calibration fitted on only {self.n:,} patches (fewer than {MIN_CALIBRATION_PATCHES}): a temperature "
                    "and bias fitted on so few follow those patches and can make new ones' probabilities worse; "
                    "validate on more patches before reading calibrated probabilities from this run.")
        return ("Calibration at its limit: " + "; and ".join(problems) + f". Fitted on {self.n:,} patches; train longer "
                "or on more data before reading calibrated probabilities from this run.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def fit_calibration(labels: np.ndarray, probs: np.ndarray, *, fitted_on: str, split: str = "valid") -> Calibration:
    """Fit a temperature and a bias on labelled predictions and record the scores before and after."""
    labels, probs = _check(labels, probs)
    temperature, bias = fit_temperature_and_bias(labels, probs)
    return Calibration(temperature, fitted_on, split, int(labels.size), calibration_scores(labels, probs),
                       calibration_scores(labels, apply_temperature(probs, temperature, bias)),
                       _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), METHOD, bias)


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
    if not path.exists():
        return None
    try:  # written atomically, so a file that does not parse was damaged by hand or by the disk: not "no calibration"
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not readable JSON; fit it again (`pcam calibrate --run {path.parent}`) or delete it") from err
    if not data:
        return None
    try:
        return Calibration.from_dict(data)
    except TypeError as err:
        raise ValueError(f"{path} is not a calibration record: {err}") from err


def calibration_report(labels: np.ndarray, probs: np.ndarray, calibration: Calibration, n_bins: int = 10) -> dict[str, Any]:
    """ECE and Brier score of labelled predictions before and after a calibration, and the reliability
    diagram's points of both (observed frequency against mean predicted probability per bin)."""
    labels, probs = _check(labels, probs)
    calibrated = calibration.apply(probs)
    return {"temperature": calibration.temperature, "bias": calibration.bias, "describe": calibration.describe,
            "warning": calibration.warning,
            "before": calibration_scores(labels, probs), "after": calibration_scores(labels, calibrated),
            "reliability_before": reliability_points(labels, probs, n_bins),
            "reliability_after": reliability_points(labels, calibrated, n_bins)}
