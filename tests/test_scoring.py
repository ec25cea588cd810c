"""pcam_core.workspace.scoring: a run's predictions per split, scoring a split in the background, every figure at
a threshold."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from helpers import wait_for
from pcam_core.runs import RunDir
from pcam_core.workspace.scoring import (
    OWN_THRESHOLD,
    TRAINER_SPLIT,
    scorable_splits,
    scored_splits,
    scoring_status,
    split_predictions,
    start_scoring,
    suggested_thresholds,
    threshold_report,
)


@pytest.fixture()
def run(trained_run, tmp_path) -> RunDir:
    shutil.copytree(trained_run, tmp_path / "run")
    return RunDir(tmp_path / "run")


def test_threshold_report_counts_rates_and_operating_point():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    probs = np.array([0.1, 0.2, 0.6, 0.7, 0.4, 0.8, 0.9, 0.95])
    r = threshold_report(labels, probs, 0.5)
    table = r.confusion.set_index(["true", "called"])
    assert table.loc[("normal", "normal"), "count"] == 2 and table.loc[("normal", "tumour"), "count"] == 2
    assert table.loc[("tumour", "normal"), "count"] == 1 and table.loc[("tumour", "tumour"), "count"] == 3
    assert table.loc[("tumour", "tumour"), "rate"] == pytest.approx(0.75)
    assert r.operating_point == {"fpr": 0.5, "tpr": 0.75, "recall": 0.75, "precision": 0.6}
    assert r.metrics["accuracy"] == pytest.approx(5 / 8) and r.roc is not None and r.pr is not None
    # every figure moves with the threshold
    high = threshold_report(labels, probs, 0.85)
    assert high.operating_point["fpr"] == 0.0 and high.operating_point["tpr"] == 0.5
    assert high.roc == r.roc  # the curves do not depend on it
    # one class only: no curves, rates of the missing class are undefined, never a crash
    one = threshold_report(np.zeros(4, dtype=int), np.array([0.1, 0.2, 0.7, 0.3]), 0.5)
    assert one.roc is None and one.operating_point["tpr"] is None
    assert np.isnan(one.confusion.set_index(["true", "called"]).loc[("tumour", "tumour"), "rate"])


def test_a_full_size_split_draws_thinned_curves_and_keeps_exact_figures():
    """PCam's 32,768 validation patches: the curves to draw are thinned to a few thousand points (about
    30,000 in the PR curve otherwise); the AUCs and counts still come from every prediction."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 32_768)
    probs = np.clip(rng.normal(0.3 + 0.4 * labels, 0.2), 0, 1)
    r = threshold_report(labels, probs, 0.5)
    assert len(r.roc["fpr"]) < 3_000 and len(r.pr["recall"]) < 3_000
    assert r.roc["fpr"][0] == 0 and r.roc["tpr"][-1] == 1 and r.pr["recall"][-1] == 0
    assert r.metrics["roc_auc"] == pytest.approx(roc_auc_score(labels, probs))
    assert r.metrics["pr_auc"] == pytest.approx(average_precision_score(labels, probs))
    assert r.confusion["count"].sum() == 32_768


def test_validation_predictions_come_from_training(run):
    assert scorable_splits(run) == ["valid", "train", "test"]
    assert scored_splits(run) == ["valid"]
    frame = split_predictions(run, TRAINER_SPLIT)
    assert len(frame) == 256 and {"id", "label", "probability", "index"} <= set(frame.columns)
    assert split_predictions(run, "test") is None
    thresholds = suggested_thresholds(run)
    assert thresholds[OWN_THRESHOLD] == 0.5 and 0 <= thresholds["Youden (validation)"] <= 1
    assert 0 <= thresholds["95% sensitivity (validation)"] <= 1


@pytest.mark.slow
def test_scoring_a_split_in_the_background(run):
    with pytest.raises(ValueError, match="scored by the trainer"):
        start_scoring(run, TRAINER_SPLIT)
    with pytest.raises(ValueError, match="cannot be scored on 'nope'"):
        start_scoring(run, "nope")
    status = start_scoring(run, "test")
    assert status.state == "running"
    with pytest.raises(RuntimeError, match="already running"):
        start_scoring(run, "test")
    wait_for(lambda: not scoring_status(run, "test").active, timeout=180, every=0.3)
    status = scoring_status(run, "test")
    assert status.state == "finished", status.log_tail
    frame = split_predictions(run, "test")
    assert len(frame) == 256 and frame["probability"].between(0, 1).all()
    assert scored_splits(run) == ["valid", "test"]
    # a newer best checkpoint makes the scores stale
    best = run.best_checkpoint
    stamp = run.evaluation_files("test")[1].stat().st_mtime + 5
    os.utime(best, (stamp, stamp))
    assert split_predictions(run, "test") is None
    assert scored_splits(run) == ["valid"]
