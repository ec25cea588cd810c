"""Confidence intervals and tests for the headline metrics: pure functions of numpy arrays.

- ROC-AUC: DeLong's variance (DeLong, DeLong & Clarke-Pearson 1988), computed with the fast midrank
  algorithm of Sun & Xu (2014, IEEE Signal Processing Letters 21:1389), O(n log n); the interval is
  the normal one, AUC ± 1.96 SE. Near 0 or 1, where that interval would reach the boundary (and at a
  perfect separation, where DeLong's SE is 0 and the interval collapses to a point), the score-type
  interval Newcombe (2006, Statistics in Medicine 25:559) built on Hanley & McNeil's variance is used
  instead: it solves (AUC - t)^2 = z^2 V(t) for t, and V(t) > 0 inside (0, 1), so 8 perfectly separated
  patches give 1.000 (0.58-1.000), not 1.000 (1.000-1.000). Two runs (or a shifted and an unshifted
  scoring) on the same patches are compared with the paired DeLong test (the covariance of their AUCs).
- Fewer than `SMALL_SAMPLE` patches: `small_sample_warning` says so; every interval is then wide.
- Proportions (accuracy, sensitivity, specificity, precision): Wilson's score interval (scipy's
  `binomtest(...).proportion_ci(method="wilson")`), which keeps its coverage near 0 and 1 where the
  plain normal interval does not.
- F1: a percentile bootstrap drawn from the confusion counts, stratified by class (2,000 resamples
  cost microseconds; sensitivity and false-positive rate from their Jeffreys posteriors, so an empty
  cell does not collapse the interval); PR-AUC: a percentile bootstrap over
  patches, stratified by class (none when every resample agrees: a collapsed interval would claim
  certainty); Brier score: the normal interval of a mean, clipped to [0, 1].

docs/trust.md explains the choices.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .decision import DEFAULT_THRESHOLD
from .metrics import _check, _sklearn_metrics, binary_metrics

LEVEL = 0.95
SMALL_SAMPLE = 50  # fewer patches than this: the figures are warned about as anecdotal
BOOTSTRAP = 2000  # resamples of the confusion counts (F1)
PR_BOOTSTRAP = 200  # resamples of the patches (PR-AUC: each one a sort)


def _scipy_stats() -> Any:
    """scipy.stats, imported when a figure needs it: a process that only scores patches (and imports this module with
    `pcam_core.predict`) does not pay its half second."""
    from scipy import stats

    return stats


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"confidence level {level} must be within (0, 1)")
    return float(_scipy_stats().norm.ppf(0.5 + level / 2))


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x`, ties sharing the mean of their ranks (Sun & Xu's midranks)."""
    return _scipy_stats().rankdata(x, method="average")


def delong(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of k score vectors on the same patches and their DeLong covariance matrix.

    `scores` is (n,) or (k, n). Returns (aucs (k,), covariance (k, k)). Fast DeLong: the structural
    components V10 (per tumour patch) and V01 (per normal patch) come from three rankings per score."""
    labels = np.asarray(labels).reshape(-1)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if scores.shape[1] != labels.size:
        raise ValueError(f"{labels.size} labels but scores of shape {scores.shape}")
    pos, neg = labels == 1, labels == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 patches of each class, got {m} tumour and {n} normal")
    k = scores.shape[0]
    aucs, v10, v01 = np.empty(k), np.empty((k, m)), np.empty((k, n))
    for r in range(k):
        x, y = scores[r, pos], scores[r, neg]
        tx, ty, tz = _midranks(x), _midranks(y), _midranks(np.concatenate([x, y]))
        aucs[r] = (tz[:m].sum() / m - (m + 1) / 2) / n
        v10[r] = (tz[:m] - tx) / n  # per tumour patch: the share of normals it outscores (ties count half)
        v01[r] = 1.0 - (tz[m:] - ty) / m  # per normal patch: the share of tumours that outscore it
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def auc_interval(labels: np.ndarray, probs: np.ndarray, level: float = LEVEL) -> dict[str, float]:
    """ROC-AUC with its DeLong standard error and the normal interval at `level`; where that interval
    would reach 0 or 1, Newcombe's score interval instead (`newcombe_auc_interval`), which never
    collapses to a point. `method` says which."""
    labels = np.asarray(labels).reshape(-1)
    aucs, cov = delong(labels, probs)
    auc, se = float(aucs[0]), float(np.sqrt(max(cov[0, 0], 0.0)))
    z = _z(level)
    low, high = auc - z * se, auc + z * se
    if low > 0.0 and high < 1.0:
        return {"value": auc, "se": se, "low": low, "high": high, "method": "DeLong"}
    m, n = int((labels == 1).sum()), int((labels == 0).sum())
    low, high = newcombe_auc_interval(auc, m, n, level)
    return {"value": auc, "se": se, "low": low, "high": high, "method": "Newcombe score (near 0 or 1)"}


def _hanley_mcneil_variance(theta: float, m: int, n: int) -> float:
    """Hanley & McNeil's variance of an AUC `theta` from m tumour and n normal patches, with Newcombe's
    N* = (m + n) / 2 in place of both class counts in the higher-order terms."""
    star = (m + n) / 2
    return theta * (1 - theta) / (m * n) * (1 + (star - 1) * ((1 - theta) / (2 - theta) + theta / (1 + theta)))


def newcombe_auc_interval(auc: float, m: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Newcombe's (2006) score-type interval of an AUC: the t in [0, 1] with (auc - t)^2 <= z^2 V(t)."""
    from scipy.optimize import brentq

    if m < 1 or n < 1:
        raise ValueError(f"an AUC interval needs patches of both classes, got {m} tumour and {n} normal")
    z2 = _z(level) ** 2

    def gap(t: float) -> float:
        return (auc - t) ** 2 - z2 * _hanley_mcneil_variance(t, m, n)

    eps = 1e-12
    low = 0.0 if auc <= eps else brentq(gap, 0.0, auc - eps) if gap(0.0) > 0 else 0.0
    high = 1.0 if auc >= 1 - eps else brentq(gap, auc + eps, 1.0) if gap(1.0) > 0 else 1.0
    return float(low), float(high)


def small_sample_warning(n: int) -> str | None:
    """A sentence for figures from fewer than `SMALL_SAMPLE` patches, else None."""
    if n >= SMALL_SAMPLE:
        return None
    return (f"only {n} patch(es): every figure here rests on too few patches to mean much (the 95% intervals show how "
            f"little); judge a model on at least {SMALL_SAMPLE}, better thousands")


def paired_auc_test(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, level: float = LEVEL) -> dict[str, float]:
    """The paired DeLong test of AUC(a) = AUC(b) for two score vectors on the same patches: the
    difference, its standard error and interval, z and the two-sided p-value."""
    aucs, cov = delong(labels, np.stack([np.asarray(probs_a, float), np.asarray(probs_b, float)]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = float(np.sqrt(max(var, 0.0)))
    if se == 0.0:  # identical rankings: no evidence of a difference
        z, p = 0.0, 1.0
    else:
        z = diff / se
        p = float(2 * _scipy_stats().norm.sf(abs(z)))
    zl = _z(level)
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "difference": diff, "se": se,
            "low": diff - zl * se, "high": diff + zl * se, "z": z, "p_value": p}


def wilson_interval(successes: int, trials: int, level: float = LEVEL) -> dict[str, float] | None:
    """The share successes/trials with Wilson's score interval; None when there are no trials."""
    if trials <= 0:
        return None
    ci = _scipy_stats().binomtest(int(successes), int(trials)).proportion_ci(confidence_level=level, method="wilson")
    return {"value": successes / trials, "low": float(ci.low), "high": float(ci.high), "method": "Wilson"}


def _percentile(samples: np.ndarray, value: float, level: float, method: str) -> dict[str, float]:
    low, high = np.nanpercentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return {"value": value, "low": float(low), "high": float(high), "method": method}


def f1_interval(confusion: dict[str, int], level: float = LEVEL, *, resamples: int = BOOTSTRAP, seed: int = 0) -> dict[str, float]:
    """F1 with a percentile bootstrap drawn from the confusion counts, stratified by class as the PR-AUC's
    is: each resample keeps the numbers of tumour and normal patches, its true positives drawn from the
    tumour patches and its false positives from the normal ones, at a sensitivity and a false-positive
    rate drawn from their Jeffreys posteriors (Beta(successes + 1/2, failures + 1/2)). So a cell never seen
    (no false positive among 8 patches) is not taken to be impossible and the interval at F1 = 1 does not
    collapse to a point; with many patches it is the plain stratified bootstrap."""
    tp, fp, fn, tn = (int(confusion[k]) for k in ("tp", "fp", "fn", "tn"))
    rng = np.random.default_rng(seed)
    tumour, normal = tp + fn, fp + tn
    tps = rng.binomial(tumour, rng.beta(tp + 0.5, fn + 0.5, resamples))
    fps = rng.binomial(normal, rng.beta(fp + 0.5, tn + 0.5, resamples))
    denominator = tps + tumour + fps  # 2 tp + fp + fn
    f1 = np.where(denominator > 0, 2 * tps / np.maximum(denominator, 1), 0.0)
    value = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0
    return _percentile(f1, float(value), level, "bootstrap (confusion counts, stratified, Jeffreys)")


def pr_auc_interval(labels: np.ndarray, probs: np.ndarray, level: float = LEVEL, *, resamples: int = PR_BOOTSTRAP,
                    seed: int = 0) -> dict[str, float] | None:
    """PR-AUC (average precision) with a percentile bootstrap over patches, stratified by class; None when
    every resample gives the same value (perfectly separated patches), where a percentile interval would
    collapse to a point and claim a certainty the patches cannot give."""
    skm = _sklearn_metrics()
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    samples = np.empty(resamples)
    for b in range(resamples):
        take = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        samples[b] = skm.average_precision_score(labels[take], probs[take])
    if np.ptp(samples) == 0:
        return None
    return _percentile(samples, float(skm.average_precision_score(labels, probs)), level, "bootstrap (patches, stratified)")


def mean_interval(values: np.ndarray, level: float = LEVEL, *, bounds: tuple[float, float] = (-np.inf, np.inf)) -> dict[str, float]:
    """The mean of `values` with the normal interval mean ± z SD/sqrt(n), clipped to `bounds` (a Brier
    score cannot be negative)."""
    mean = float(values.mean())
    se = float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0
    z = _z(level)
    return {"value": mean, "low": max(mean - z * se, bounds[0]), "high": min(mean + z * se, bounds[1]), "method": "normal (mean)"}


def metric_intervals(labels: np.ndarray, probs: np.ndarray, threshold: float = DEFAULT_THRESHOLD, level: float = LEVEL,
                     *, pr_auc: bool = True) -> dict[str, dict[str, float] | None]:
    """A `level` interval for every headline metric at `threshold` (None where the metric is undefined):
    roc_auc (DeLong), accuracy, recall (sensitivity), specificity, precision (Wilson), f1 (bootstrap of
    the confusion counts), pr_auc (bootstrap over patches; `pr_auc=False` leaves it out, it is the slow
    one), brier (normal interval of a mean)."""
    labels, probs = _check(labels, probs)
    m = binary_metrics(labels, probs, threshold)
    c = m["confusion"]
    both = m["roc_auc"] is not None and min(c["tp"] + c["fn"], c["tn"] + c["fp"]) >= 2
    out: dict[str, dict[str, float] | None] = {
        "roc_auc": auc_interval(labels, probs, level) if both else None,
        "accuracy": wilson_interval(c["tp"] + c["tn"], m["n"], level),
        "recall": wilson_interval(c["tp"], c["tp"] + c["fn"], level),
        "specificity": wilson_interval(c["tn"], c["tn"] + c["fp"], level),
        "precision": wilson_interval(c["tp"], c["tp"] + c["fp"], level),
        "f1": f1_interval(c, level),
        "brier": mean_interval((probs - labels) ** 2, level, bounds=(0.0, 1.0)),
    }
    if pr_auc:
        out["pr_auc"] = pr_auc_interval(labels, probs, level) if both else None
    return out


def format_interval(interval: dict[str, float] | None, digits: int = 3) -> str:
    """"0.951 (0.930-0.970)": the value and its interval; "-" when undefined."""
    if interval is None:
        return "-"
    return f"{interval['value']:.{digits}f} ({interval['low']:.{digits}f}-{interval['high']:.{digits}f})"


def compare_predictions(frames: dict[str, pd.DataFrame], threshold: float | dict[str, float] = DEFAULT_THRESHOLD,
                        level: float = LEVEL) -> dict[str, Any]:
    """Two or more runs scored on the same patches (frames with `id`, `label`, `probability`), joined on
    id: each run's metrics at `threshold` (one for all, or one per run name) with intervals, and the paired
    DeLong test of each run's ROC-AUC against the first one's. Refuses frames that do not hold the same
    patch ids."""
    if len(frames) < 2:
        raise ValueError(f"comparing needs at least two runs, got {len(frames)}")
    names = list(frames)
    ids = {name: set(frame["id"].astype(str)) for name, frame in frames.items()}
    first = names[0]
    for name in names[1:]:
        if ids[name] != ids[first]:
            only_a, only_b = len(ids[first] - ids[name]), len(ids[name] - ids[first])
            raise ValueError(f"runs {first!r} and {name!r} were not scored on the same patches ({only_a} ids only in "
                             f"{first!r}, {only_b} only in {name!r}); score both on the same split of the same data")
    joined = None
    for name in names:
        frame = frames[name][["id", "label", "probability"]].astype({"id": str}).drop_duplicates("id")
        frame = frame.rename(columns={"probability": name, "label": f"label:{name}"})
        joined = frame if joined is None else joined.merge(frame, on="id", how="inner")
    labels = joined[f"label:{first}"].to_numpy()
    for name in names[1:]:
        if not np.array_equal(joined[f"label:{name}"].to_numpy(), labels):
            raise ValueError(f"runs {first!r} and {name!r} disagree on the labels of the same patch ids")
    at = threshold if isinstance(threshold, dict) else {name: threshold for name in names}
    runs = {name: {"metrics": binary_metrics(labels, joined[name].to_numpy(), at[name]),
                   "intervals": metric_intervals(labels, joined[name].to_numpy(), at[name], level, pr_auc=False)}
            for name in names}
    tests = {name: paired_auc_test(labels, joined[name].to_numpy(), joined[first].to_numpy(), level) for name in names[1:]}
    return {"n": int(len(joined)), "thresholds": {name: float(at[name]) for name in names}, "level": level, "reference": first,
            "runs": runs, "paired_tests": tests, "warnings": [w for w in (small_sample_warning(len(joined)),) if w], "labels": labels, "probabilities": {name: joined[name].to_numpy() for name in names}}
