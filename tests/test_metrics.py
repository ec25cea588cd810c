"""pcam_core.metrics: figures checked against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pcam_core.metrics import (
    binary_metrics,
    choose_threshold,
    confusion,
    expected_calibration_error,
    pr_points,
    reliability_points,
    roc_points,
    thin_curve,
)

LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
PROBS = np.array([0.1, 0.2, 0.6, 0.3, 0.8, 0.4, 0.9, 0.7])


def test_headline_metrics_by_hand():
    m = binary_metrics(LABELS, PROBS, 0.5)
    # at 0.5: predicted positive = {0.6, 0.8, 0.9, 0.7}: tp 3, fp 1, fn 1 (0.4), tn 3
    assert m["confusion"] == {"tn": 3, "fp": 1, "fn": 1, "tp": 3}
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(3 / 4) and m["recall"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(3 / 4) and m["f1"] == pytest.approx(3 / 4)
    # ROC-AUC: of 16 (pos, neg) pairs, the positive scores higher in 15 (0.4 < 0.6 is the only loss)
    assert m["roc_auc"] == pytest.approx(15 / 16)
    assert m["n"] == 8 and m["prevalence"] == 0.5 and 0 < m["pr_auc"] <= 1


def test_threshold_changes_the_confusion_matrix():
    assert confusion(LABELS, PROBS, 0.0) == {"tn": 0, "fp": 4, "fn": 0, "tp": 4}
    assert confusion(LABELS, PROBS, 0.95) == {"tn": 4, "fp": 0, "fn": 4, "tp": 0}


def test_one_class_makes_auc_undefined_not_a_crash():
    m = binary_metrics(np.ones(4), np.array([0.2, 0.6, 0.7, 0.9]))
    assert m["roc_auc"] is None and m["pr_auc"] is None and m["recall"] == 0.75


def test_calibration_error():
    assert expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0])) == 0
    assert expected_calibration_error(np.array([0, 0, 1, 1]), np.array([0.75] * 4)) == pytest.approx(0.25)
    r = reliability_points(LABELS, PROBS, n_bins=2)
    assert len(r["predicted"]) == len(r["observed"]) == 2


def test_curves_span_the_unit_square():
    roc = roc_points(LABELS, PROBS)
    assert roc["fpr"][0] == 0 and roc["fpr"][-1] == 1 and roc["tpr"][-1] == 1
    pr = pr_points(LABELS, PROBS)
    assert len(pr["precision"]) == len(pr["recall"]) == len(pr["threshold"])


@pytest.mark.parametrize("curve", ["roc", "pr"])
def test_thinned_curves_stay_within_the_resolution_of_every_point(curve):
    """32,768 predictions: the full curve has thousands of points; the thinned one a bounded number, with
    the ends kept, and every point of the full curve within the resolution (in x and y) of a kept point
    drawn before it (so the drawn line passes that close)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 32_768)
    probs = np.clip(rng.normal(0.3 + 0.4 * labels, 0.2), 0, 1)
    points, x, y = (roc_points, "fpr", "tpr") if curve == "roc" else (pr_points, "recall", "precision")
    full, thin = points(labels, probs), points(labels, probs, resolution=1e-3)
    assert len(full[x]) > 5_000 and len(thin[x]) < 3_000
    assert len(thin[x]) == len(thin[y]) == len(thin["threshold"])
    for key in (x, y, "threshold"):
        assert thin[key][0] == full[key][0] and thin[key][-1] == full[key][-1]
    fx, fy = np.asarray(full[x]), np.asarray(full[y])
    kept = np.flatnonzero(np.isin(np.asarray(full["threshold"]), thin["threshold"]) & np.isin(fx, thin[x]))
    last_kept = kept[np.searchsorted(kept, np.arange(fx.size), side="right") - 1]  # the last kept point at or before each
    assert np.abs(fx - fx[last_kept]).max() < 1e-3 and np.abs(fy - fy[last_kept]).max() < 1e-3


def test_thin_curve_keeps_short_curves_whole():
    assert thin_curve(np.array([0.0, 1.0]), np.array([0.0, 1.0]), 0.1).tolist() == [0, 1]
    assert thin_curve(np.array([0.0, 0.01, 0.02, 1.0]), np.array([0.0, 0.01, 0.02, 1.0]), 0.1).tolist() == [0, 3]


def test_threshold_choice():
    assert choose_threshold(LABELS, PROBS, "fixed", value=0.3) == 0.3
    youden = choose_threshold(LABELS, PROBS, "youden")
    assert youden == pytest.approx(0.7)  # tpr 3/4, fpr 0 -> J = 0.75, the best
    sens = choose_threshold(LABELS, PROBS, "sensitivity", value=1.0)
    assert sens == pytest.approx(0.4)  # the highest threshold that still catches every positive
    assert confusion(LABELS, PROBS, sens)["fn"] == 0
    with pytest.raises(ValueError, match="valid: fixed, youden, sensitivity"):
        choose_threshold(LABELS, PROBS, "f1")


def test_bad_inputs():
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        binary_metrics(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="within \\[0, 1\\]"):
        binary_metrics(np.array([0, 1]), np.array([0.1, 1.2]))
    with pytest.raises(ValueError, match="2 labels but 3"):
        binary_metrics(np.array([0, 1]), np.array([0.1, 0.2, 0.3]))
