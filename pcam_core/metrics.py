"""Evaluation metrics: pure functions of numpy arrays, built on scikit-learn.

`labels` are 0/1 (1 = tumour in the central region); `probs` are predicted probabilities of label 1.
Metrics that are undefined for the data given (ROC-AUC with one class present) are `None`, never a crash.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .decision import DEFAULT_THRESHOLD, check_threshold, is_tumour

THRESHOLD_METHODS = ("fixed", "youden", "sensitivity")


def _sklearn_metrics() -> Any:
    """scikit-learn's metrics module, imported on first use: importing scikit-learn is slow, and the
    dashboard's first page and the commands that compute no metric need not pay for it."""
    from sklearn import metrics

    return metrics


def _check(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    if labels.shape != probs.shape:
        raise ValueError(f"{labels.size} labels but {probs.size} probabilities")
    if labels.size == 0:
        raise ValueError("no samples to evaluate")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1 (unlabelled samples cannot be scored)")
    if not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1:
        raise ValueError("probabilities must be finite and within [0, 1]")
    return labels.astype(np.int64), probs


def confusion(labels: np.ndarray, probs: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> dict[str, int]:
    """Counts at a threshold: a patch is called tumour when its probability is >= threshold."""
    skm = _sklearn_metrics()
    labels, probs = _check(labels, probs)
    tn, fp, fn, tp = skm.confusion_matrix(labels, is_tumour(probs, threshold).astype(int), labels=[0, 1]).ravel()
    return {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    """ECE: the sample-weighted mean gap between predicted probability and observed frequency,
    over equal-width probability bins."""
    labels, probs = _check(labels, probs)
    bins = np.minimum((probs * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(probs[mask].mean() - labels[mask].mean())
    return float(ece)


def binary_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """Every headline figure at once: accuracy, precision, recall (sensitivity), specificity, F1,
    ROC-AUC, PR-AUC (average precision), Brier score, calibration error, confusion counts."""
    skm = _sklearn_metrics()
    labels, probs = _check(labels, probs)
    preds = is_tumour(probs, threshold).astype(int)
    both = np.unique(labels).size == 2
    c = confusion(labels, probs, threshold)
    out: dict[str, Any] = {
        "n": int(labels.size),
        "prevalence": float(labels.mean()),
        "threshold": float(threshold),
        "accuracy": float(skm.accuracy_score(labels, preds)),
        "precision": float(skm.precision_score(labels, preds, zero_division=0)),
        "recall": float(skm.recall_score(labels, preds, zero_division=0)),
        "specificity": float(c["tn"] / (c["tn"] + c["fp"])) if (c["tn"] + c["fp"]) else None,
        "f1": float(skm.f1_score(labels, preds, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(labels, probs)) if both else None,
        "pr_auc": float(skm.average_precision_score(labels, probs)) if both else None,
        "brier": float(skm.brier_score_loss(labels, probs)),
        "ece": expected_calibration_error(labels, probs),
        "confusion": c,
    }
    return out


def thin_curve(x: np.ndarray, y: np.ndarray, resolution: float) -> np.ndarray:
    """Indices of the points of a curve (x and y in [0, 1], in drawing order) worth drawing at `resolution`:
    the first, the last, and each point that enters a new `resolution`-sized square of the plane. Every
    point left out shares its square with a point kept before it, so the drawn line passes within
    `resolution` (in each coordinate) of every point of the curve, however many there are."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size <= 2:
        return np.arange(x.size)
    cells = np.floor(np.stack([x, y]) / resolution)
    moved = np.flatnonzero((cells[:, 1:] != cells[:, :-1]).any(axis=0)) + 1
    return np.unique(np.concatenate([[0], moved, [x.size - 1]]))


def _curve(columns: dict[str, np.ndarray], x: str, y: str, resolution: float | None) -> dict[str, list[float]]:
    if resolution is not None:
        keep = thin_curve(columns[x], columns[y], resolution)
        columns = {name: values[keep] for name, values in columns.items()}
    return {name: values.tolist() for name, values in columns.items()}


def roc_points(labels: np.ndarray, probs: np.ndarray, *, resolution: float | None = None) -> dict[str, list[float]]:
    """The ROC curve (`fpr`, `tpr`, `threshold` per point); with `resolution`, only the points that
    drawing it at that resolution needs (`thin_curve`): a 32,768-patch split has thousands of points."""
    skm = _sklearn_metrics()
    labels, probs = _check(labels, probs)
    fpr, tpr, thr = skm.roc_curve(labels, probs)
    return _curve({"fpr": fpr, "tpr": tpr, "threshold": np.clip(thr, 0, 1)}, "fpr", "tpr", resolution)


def pr_points(labels: np.ndarray, probs: np.ndarray, *, resolution: float | None = None) -> dict[str, list[float]]:
    """The precision-recall curve (`precision`, `recall`, `threshold` per point), thinned as `roc_points`."""
    skm = _sklearn_metrics()
    labels, probs = _check(labels, probs)
    precision, recall, thr = skm.precision_recall_curve(labels, probs)
    return _curve({"precision": precision, "recall": recall, "threshold": np.append(thr, 1.0)}, "recall", "precision",
                  resolution)


def reliability_points(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> dict[str, list[float]]:
    """Observed frequency of tumour against mean predicted probability, per bin (a calibration curve)."""
    labels, probs = _check(labels, probs)
    from sklearn.calibration import calibration_curve

    observed, predicted = calibration_curve(labels, probs, n_bins=n_bins, strategy="uniform")
    return {"predicted": predicted.tolist(), "observed": observed.tolist()}


def choose_threshold(labels: np.ndarray, probs: np.ndarray, method: str = "fixed", *, value: float = DEFAULT_THRESHOLD) -> float:
    """A decision threshold chosen on validation data.

    - "fixed": `value` itself (0.5 by default);
    - "youden": the ROC point maximising sensitivity + specificity - 1;
    - "sensitivity": the highest threshold whose sensitivity is at least `value` (e.g. 0.95), which
      keeps specificity as high as that sensitivity allows.
    """
    skm = _sklearn_metrics()
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"unknown threshold method {method!r}; valid: {', '.join(THRESHOLD_METHODS)}")
    if method == "fixed":
        return check_threshold(value)
    labels, probs = _check(labels, probs)
    if np.unique(labels).size < 2:
        raise ValueError(f"threshold method {method!r} needs both classes in the data")
    fpr, tpr, thr = skm.roc_curve(labels, probs, drop_intermediate=False)
    thr = np.clip(thr, 0, 1)
    if method == "youden":
        return float(thr[int(np.argmax(tpr - fpr))])
    if not 0 < value <= 1:
        raise ValueError(f"target sensitivity {value} must be within (0, 1]")
    ok = np.flatnonzero(tpr >= value)
    return float(thr[ok[0]])
