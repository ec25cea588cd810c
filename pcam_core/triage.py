"""Triage with a guaranteed sensitivity: split-conformal thresholds fitted on labelled validation
predictions, and the call they give each patch: `normal`, `tumour` or `refer` (to a pathologist).

`normal` only below t_lo: t_lo is the k-th smallest tumour probability among the n1 validation tumour
patches, k = floor(alpha (n1 + 1)), alpha = 1 - target sensitivity. For a new tumour patch exchangeable
with them, its rank among the n1 + 1 scores is uniform, so P(p < t_lo) <= k / (n1 + 1) <= alpha: on
average over validation sets, at most alpha of tumour patches are called normal. `tumour` only above
t_hi, the k0-th largest normal probability, k0 = floor(beta (n0 + 1)), beta the false-positive rate
allowed, by the same argument on the n0 normal patches. In between: `refer`. When the two thresholds
cross (t_hi < t_lo, a model that separates the classes well), one cut at t_hi keeps both promises and
misses the fewest tumours: normal at or below t_hi, tumour above it, nothing referred.

A temperature (calibration.py) is monotone, so the calls are the same on calibrated probabilities.
The maths, and what the guarantee does not cover: docs/trust.md. Pure numpy, no file is read.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .metrics import _check

CALLS = ("normal", "refer", "tumour")
DEFAULT_FPR = 0.05
GUARANTEE = ("On patches like the validation set (exchangeable with it), at most {miss:.0%} of tumour patches are called "
             "normal and at most {fpr:.0%} of normal patches are called tumour, on average over validation sets; it "
             "does not hold for a different lab, scanner or tissue.")


@dataclass(frozen=True)
class TriageThresholds:
    """The two cuts of a triage and what they promise. `normal_below` (t_lo): a patch is called normal
    when its probability is < t_lo (and <= t_hi); `tumour_above` (t_hi): tumour when > t_hi; refer
    otherwise. `k_tumour`/`k_normal` are the conformal ranks used (0: that call is never made)."""

    target_sensitivity: float
    fpr: float
    normal_below: float
    tumour_above: float
    n_tumour: int
    n_normal: int
    k_tumour: int
    k_normal: int

    @property
    def crossed(self) -> bool:
        """t_hi < t_lo: one cut at t_hi, nothing referred."""
        return self.tumour_above < self.normal_below

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "crossed": self.crossed}

    def guarantee(self) -> str:
        """The promise in words a pathologist reads."""
        return GUARANTEE.format(miss=1 - self.target_sensitivity, fpr=self.fpr)


def conformal_rank(alpha: float, n: int) -> int:
    """k = floor(alpha (n + 1)): the rank whose order statistic bounds the error rate by alpha."""
    return int(math.floor(alpha * (n + 1) + 1e-12))


def fit_triage(labels: np.ndarray, probs: np.ndarray, target_sensitivity: float, fpr: float = DEFAULT_FPR) -> TriageThresholds:
    """The split-conformal thresholds for `target_sensitivity` (e.g. 0.98) and a false-positive rate
    `fpr` on normal patches, fitted on labelled validation predictions."""
    if not 0 < target_sensitivity < 1:
        raise ValueError(f"target sensitivity {target_sensitivity} must be within (0, 1), e.g. 0.98")
    if not 0 < fpr < 1:
        raise ValueError(f"false-positive rate {fpr} must be within (0, 1), e.g. 0.05")
    labels, probs = _check(labels, probs)
    tumour, normal = np.sort(probs[labels == 1]), np.sort(probs[labels == 0])[::-1]
    if not tumour.size or not normal.size:
        raise ValueError(f"triage needs validation patches of both classes, got {tumour.size} tumour and {normal.size} normal")
    k1 = conformal_rank(1 - target_sensitivity, tumour.size)
    k0 = conformal_rank(fpr, normal.size)
    t_lo = float(tumour[k1 - 1]) if k1 else 0.0  # k1 = 0: too few tumour patches to call any patch normal
    t_hi = float(normal[k0 - 1]) if k0 else 1.0  # k0 = 0: too few normal patches to call any patch tumour
    return TriageThresholds(float(target_sensitivity), float(fpr), t_lo, t_hi, int(tumour.size), int(normal.size), k1, k0)


def triage_calls(probs: np.ndarray, thresholds: TriageThresholds) -> np.ndarray:
    """The call of each probability: "normal", "tumour" or "refer" (an array of str)."""
    probs = np.asarray(probs, dtype=np.float64)
    t_lo, t_hi = thresholds.normal_below, thresholds.tumour_above
    normal = (probs < t_lo) & (probs <= t_hi)
    tumour = probs > t_hi
    return np.where(normal, "normal", np.where(tumour, "tumour", "refer"))


def triage_outcome(labels: np.ndarray, probs: np.ndarray, thresholds: TriageThresholds) -> dict[str, Any]:
    """What a triage does on labelled patches: the miss rate (tumour patches called normal, of all tumour
    patches), the false-positive rate (normal patches called tumour, of all normal ones), the referral rate
    (of all patches), and the counts of each call per class."""
    labels, probs = _check(labels, probs)
    calls = triage_calls(probs, thresholds)
    tumour, normal = labels == 1, labels == 0
    counts = {f"{truth}_{call}": int(((labels == value) & (calls == call)).sum())
              for truth, value in (("tumour", 1), ("normal", 0)) for call in CALLS}
    return {
        "n": int(labels.size),
        "miss_rate": float((calls[tumour] == "normal").mean()) if tumour.any() else None,
        "false_positive_rate": float((calls[normal] == "tumour").mean()) if normal.any() else None,
        "referral_rate": float((calls == "refer").mean()),
        "counts": counts,
    }


def triage_curve(fit_labels: np.ndarray, fit_probs: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                 targets: np.ndarray | None = None, fpr: float = DEFAULT_FPR) -> dict[str, list[float]]:
    """How referral trades against sensitivity: for each target sensitivity, thresholds fitted on
    (`fit_labels`, `fit_probs`) applied to (`labels`, `probs`): the referral and miss rates reached."""
    targets = np.linspace(0.80, 0.995, 40) if targets is None else np.asarray(targets, dtype=np.float64)
    out: dict[str, list[float]] = {"target": [], "referral_rate": [], "miss_rate": [], "normal_below": []}
    for target in targets:
        thresholds = fit_triage(fit_labels, fit_probs, float(target), fpr)
        outcome = triage_outcome(labels, probs, thresholds)
        out["target"].append(float(target))
        out["referral_rate"].append(outcome["referral_rate"])
        out["miss_rate"].append(outcome["miss_rate"] if outcome["miss_rate"] is not None else float("nan"))
        out["normal_below"].append(thresholds.normal_below)
    return out
