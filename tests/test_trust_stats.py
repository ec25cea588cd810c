"""Trust: calibrated probabilities (pcam_core.calibration), conformal triage (pcam_core.triage), confidence
intervals and the paired test (pcam_core.stats), TTA uncertainty, and the faces that show them (`pcam
predict --results --triage`, `pcam calibrate`, `pcam evaluate`, `pcam compare`, the Runs page). The maths
is checked on generated data whose truth is known; the faces on the real fixture patches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st
from scipy.special import expit

from helpers import blind_probabilities, blind_validation
from pcam_core.calibration import Calibration, apply_temperature, fit_calibration, fit_temperature, fit_temperature_and_bias
from pcam_core.metrics import expected_calibration_error
from pcam_core.stats import (
    auc_interval,
    compare_predictions,
    delong,
    format_interval,
    metric_intervals,
    newcombe_auc_interval,
    paired_auc_test,
    small_sample_warning,
    wilson_interval,
)
from pcam_core.triage import conformal_rank, fit_triage, triage_calls, triage_outcome


def _binormal(rng: np.random.Generator, m: int, n: int, d: float) -> tuple[np.ndarray, np.ndarray]:
    """m tumour scores ~ N(d, 1) and n normal ones ~ N(0, 1), as probabilities; true AUC = Phi(d / sqrt 2)."""
    labels = np.r_[np.ones(m, int), np.zeros(n, int)]
    return labels, expit(np.r_[rng.normal(d, 1, m), rng.normal(0, 1, n)])


# -- temperature scaling ---------------------------------------------------------------------------

def test_temperature_scaling_undoes_an_over_confident_model():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, 4000)
    labels = (rng.random(4000) < expit(true_logits)).astype(int)
    over_confident = expit(3 * true_logits)  # the true logits scaled by 3
    temperature = fit_temperature(labels, over_confident)
    assert 2.6 < temperature < 3.4
    before, after = expected_calibration_error(labels, over_confident), expected_calibration_error(labels, apply_temperature(over_confident, temperature))
    assert after < before / 3 and after < 0.03
    record = fit_calibration(labels, over_confident, fitted_on="generated")
    assert record.after["nll"] < record.before["nll"] and record.after["brier"] < record.before["brier"]
    assert record.after["ece"] == pytest.approx(expected_calibration_error(labels, record.apply(over_confident)))
    assert record.temperature == pytest.approx(temperature, rel=0.05) and abs(record.bias) < 0.1  # no lean to take out
    # the ranking is untouched: in the order of the raw probabilities, the calibrated ones never go down
    assert (np.diff(record.apply(over_confident)[np.argsort(over_confident)]) >= 0).all()


def test_a_bias_takes_out_the_lean_of_a_class_balanced_loss_that_a_temperature_cannot():
    """A model whose logits all lean towards tumour by log(1.5), as the trainer's class-balanced loss makes them
    (pos_weight = negatives / positives): temperature alone leaves it miscalibrated, temperature and bias (what
    runs fit) recover both, and the order of the patches stays."""
    rng = np.random.default_rng(1)
    true_logits = rng.normal(-0.4, 2.0, 6000)
    labels = (rng.random(6000) < expit(true_logits)).astype(int)
    leaning = expit(1.3 * true_logits + np.log(1.5))
    temperature, bias = fit_temperature_and_bias(labels, leaning)
    assert 1.15 < temperature < 1.45 and bias == pytest.approx(-np.log(1.5) / 1.3, abs=0.12)
    ece = {name: expected_calibration_error(labels, probs) for name, probs in
           (("raw", leaning), ("temperature", apply_temperature(leaning, fit_temperature(labels, leaning))),
            ("both", apply_temperature(leaning, temperature, bias)))}
    assert ece["both"] < 0.02 and ece["both"] < ece["temperature"] / 2 and ece["temperature"] > 0.03
    record = fit_calibration(labels, leaning, fitted_on="generated")
    assert (record.method, record.temperature, record.bias) == ("temperature and bias", pytest.approx(temperature), pytest.approx(bias))
    assert record.describe == f"temperature {temperature:.3f}, bias {bias:+.3f}" and "+ b" in record.formula
    assert (np.diff(record.apply(leaning)[np.argsort(leaning)]) >= 0).all()
    # a record written before the bias was fitted holds T alone and is applied as it was fitted
    old = Calibration.from_dict({k: v for k, v in record.to_dict().items() if k not in ("bias", "method")})
    assert old.bias == 0 and old.method == "temperature scaling" and old.describe == f"temperature {temperature:.3f}"
    assert np.allclose(old.apply(leaning), apply_temperature(leaning, temperature))


def test_a_calibration_at_the_edge_of_its_search_says_so():
    """Predictions that do not tell the classes apart drive T to the largest the fit allows (every calibrated
    probability then sits near the prevalence), and perfectly separated but timid ones drive it to the smallest: both
    are named, in a sentence; a fit inside its range has no warning."""
    rng = np.random.default_rng(2)
    labels = (rng.random(400) < 0.3).astype(int)
    noise = blind_probabilities(labels)
    flat = fit_calibration(labels, noise, fitted_on="generated")
    assert flat.temperature == pytest.approx(np.exp(4.0), rel=0.02)
    assert flat.warning.startswith("Calibration at its limit: the temperature is the largest the fit allows (54.")
    assert f"near {labels.mean():.2f}" in flat.warning and "400 patches" in flat.warning
    assert np.ptp(flat.apply(noise)) < 0.05  # what the warning says: nearly one probability for every patch
    timid = fit_calibration(labels, np.where(labels == 1, 0.55, 0.45), fitted_on="generated")
    assert "the smallest the fit allows" in timid.warning
    true_logits = rng.normal(0, 1.5, 2000)
    informative = fit_calibration((rng.random(2000) < expit(true_logits)).astype(int), expit(2 * true_logits), fitted_on="g")
    assert informative.warning is None
    few = fit_calibration((rng.random(16) < expit(true_logits[:16])).astype(int), expit(2 * true_logits[:16]),
                          fitted_on="g")  # QA: 16 patches, no word
    assert few.warning.startswith("Calibration fitted on only 16 patches (fewer than 100)")


def test_temperature_scaling_refuses_one_class_and_bad_temperatures():
    with pytest.raises(ValueError, match="both classes"):
        fit_temperature(np.ones(10), np.full(10, 0.7))
    with pytest.raises(ValueError, match="positive"):
        apply_temperature(np.array([0.5]), 0.0)


# -- conformal triage ------------------------------------------------------------------------------

def test_the_conformal_rank_is_the_finite_sample_one():
    assert conformal_rank(0.02, 200) == 4  # floor(0.02 * 201)
    assert conformal_rank(0.1, 49) == 5 and conformal_rank(0.02, 48) == 0  # too few to call anything normal


@pytest.mark.parametrize("alpha, n_tumour", [(0.1, 50), (0.02, 200)])
def test_the_conformal_miss_rate_holds_over_many_random_splits(alpha, n_tumour):
    """500 random validation/test splits of generated scores: the mean miss rate (tumour called normal) is
    at most alpha (plus Monte-Carlo noise) and not far below it: exactly k / (n1 + 1) in expectation."""
    rng = np.random.default_rng(1)
    misses, k = [], conformal_rank(alpha, n_tumour)
    for _ in range(500):
        tumour, normal = rng.beta(4, 2, n_tumour + 1000), rng.beta(2, 4, 100)
        labels = np.r_[np.ones(n_tumour, int), np.zeros(100, int)]
        thresholds = fit_triage(labels, np.r_[tumour[:n_tumour], normal], 1 - alpha)
        misses.append((triage_calls(tumour[n_tumour:], thresholds) == "normal").mean())
    expected = k / (n_tumour + 1)
    per_split_sd = np.sqrt(expected * (1 - expected) / (n_tumour + 2))  # a Beta(k, n + 1 - k) share
    tolerance = 4 * per_split_sd / np.sqrt(500) + 0.002
    assert np.mean(misses) <= alpha + tolerance
    assert abs(np.mean(misses) - expected) <= tolerance and expected > alpha - 1 / (n_tumour + 1)


def test_triage_calls_refer_between_the_thresholds_and_cut_once_when_they_cross():
    labels = np.r_[np.ones(99, int), np.zeros(99, int)]
    overlap = np.r_[np.linspace(0.3, 1.0, 99), np.linspace(0.0, 0.7, 99)]
    t = fit_triage(labels, overlap, 0.9, fpr=0.1)
    assert not t.crossed and t.normal_below < t.tumour_above
    calls = triage_calls(np.array([0.0, (t.normal_below + t.tumour_above) / 2, 1.0]), t)
    assert calls.tolist() == ["normal", "refer", "tumour"]
    outcome = triage_outcome(labels, overlap, t)
    assert outcome["miss_rate"] <= 0.1 and outcome["false_positive_rate"] <= 0.1 and outcome["referral_rate"] > 0
    separated = np.r_[np.linspace(0.6, 1.0, 99), np.linspace(0.0, 0.4, 99)]
    t = fit_triage(labels, separated, 0.9, fpr=0.1)
    assert t.crossed
    outcome = triage_outcome(labels, separated, t)
    assert outcome["referral_rate"] == 0 and outcome["miss_rate"] == 0 and outcome["false_positive_rate"] <= 0.1
    assert "at most 10% of tumour patches are called normal" in t.guarantee() and "different lab" in t.guarantee()
    with pytest.raises(ValueError, match="target sensitivity"):
        fit_triage(labels, overlap, 1.0)


# -- confidence intervals and the paired test -------------------------------------------------------

def test_delong_auc_equals_sklearn_and_its_interval_covers_the_true_auc_at_95_percent():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    d = 1.2
    truth = st.norm.cdf(d / np.sqrt(2))
    covered = []
    for _ in range(300):
        labels, probs = _binormal(rng, 60, 80, d)
        interval = auc_interval(labels, probs)
        covered.append(interval["low"] <= truth <= interval["high"])
    assert interval["value"] == pytest.approx(roc_auc_score(labels, probs))
    assert 0.92 <= np.mean(covered) <= 0.98


def test_the_auc_interval_does_not_collapse_at_1_and_keeps_its_coverage_near_it():
    labels = np.r_[np.zeros(4, int), np.ones(4, int)]
    perfect = auc_interval(labels, np.linspace(0.1, 0.9, 8))  # 8 patches, perfectly separated
    assert perfect["value"] == 1.0 and perfect["high"] == 1.0 and 0.5 < perfect["low"] < 0.7, perfect
    assert perfect["method"].startswith("Newcombe") and format_interval(perfect) == "1.000 (0.582-1.000)"
    assert newcombe_auc_interval(1.0, 20, 20)[0] > newcombe_auc_interval(1.0, 4, 4)[0]  # more patches, narrower
    low, high = newcombe_auc_interval(0.0, 4, 4)
    assert low == 0.0 and 0.3 < high < 0.5  # symmetric at 0
    # away from the boundary the DeLong interval is kept
    rng = np.random.default_rng(3)
    assert auc_interval(*_binormal(rng, 200, 200, 1.0))["method"] == "DeLong"
    # near 1 (true AUC 0.99, 30 + 30 patches) the interval still covers the truth about 95% of the time
    d = 2 ** 0.5 * st.norm.ppf(0.99)
    covered = [(lambda iv: iv["low"] <= 0.99 <= iv["high"])(auc_interval(*_binormal(rng, 30, 30, d))) for _ in range(300)]
    assert 0.9 <= np.mean(covered) <= 1.0, np.mean(covered)


def test_few_patches_are_warned_about():
    assert "only 8 patch(es)" in small_sample_warning(8) and small_sample_warning(50) is None


@pytest.mark.slow
def test_delong_variance_agrees_with_the_bootstrap():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    labels, probs = _binormal(rng, 150, 150, 1.0)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    boot = [roc_auc_score(labels[take], probs[take])
            for take in (np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)] for _ in range(500))]
    _, cov = delong(labels, probs)
    assert 0.8 < cov[0, 0] / np.var(boot) < 1.25


def test_the_paired_test_is_uniform_under_the_null_and_small_when_one_run_is_better():
    rng = np.random.default_rng(4)
    p_values = []
    for _ in range(200):
        labels = np.r_[np.ones(80, int), np.zeros(80, int)]
        latent = np.where(labels == 1, 1.0, 0.0) + rng.normal(0, 1, 160)
        p_values.append(paired_auc_test(labels, expit(latent + rng.normal(0, 0.7, 160)),
                                        expit(latent + rng.normal(0, 0.7, 160)))["p_value"])
    assert 0.02 <= np.mean(np.array(p_values) < 0.05) <= 0.09
    assert st.kstest(p_values, "uniform").pvalue > 0.01
    labels, good = _binormal(rng, 200, 200, 2.0)
    worse = expit(np.log(good / (1 - good)) + rng.normal(0, 2.5, 400))
    test = paired_auc_test(labels, good, worse)
    assert test["difference"] > 0.05 and test["p_value"] < 1e-3 and test["low"] > 0


def test_intervals_for_every_headline_metric():
    rng = np.random.default_rng(5)
    labels, probs = _binormal(rng, 120, 200, 1.5)
    intervals = metric_intervals(labels, probs, 0.5)
    assert set(intervals) == {"roc_auc", "accuracy", "recall", "specificity", "precision", "f1", "brier", "pr_auc"}
    for name, interval in intervals.items():
        assert interval["low"] <= interval["value"] <= interval["high"], name
        assert interval["high"] - interval["low"] < 0.25, name
    wilson = wilson_interval(0, 20)
    assert wilson["low"] == 0 and 0.1 < wilson["high"] < 0.2  # Wilson stays sensible at 0 of 20
    assert wilson_interval(0, 0) is None
    assert format_interval({"value": 0.9512, "low": 0.93, "high": 0.9701}) == "0.951 (0.930-0.970)"


def test_compare_joins_on_ids_and_refuses_different_patches():
    import pandas as pd

    rng = np.random.default_rng(6)
    labels, good = _binormal(rng, 100, 100, 2.0)
    ids = [f"p{i}" for i in range(200)]
    a = pd.DataFrame({"id": ids, "label": labels, "probability": good})
    b = a.assign(probability=expit(rng.normal(0, 1, 200))).sample(frac=1, random_state=0)  # shuffled rows, a random model
    result = compare_predictions({"good": a, "random": b})
    assert result["n"] == 200 and result["paired_tests"]["random"]["p_value"] < 1e-3
    assert result["runs"]["good"]["metrics"]["roc_auc"] > result["runs"]["random"]["metrics"]["roc_auc"]
    with pytest.raises(ValueError, match="not scored on the same patches"):
        compare_predictions({"good": a, "fewer": b.iloc[:150]})


# -- the run folder, `pcam predict --results --triage`, `pcam evaluate`, `pcam compare` ---------------

def test_training_fits_a_temperature_and_pcam_calibrate_refits_it(trained_run, capsys):
    from pcam_core.calibration import load_calibration
    from pcam_core.cli import main
    from pcam_core.runs import RunDir

    fitted = load_calibration(trained_run)  # written by the trainer when the run ended
    assert fitted is not None and fitted.temperature > 0 and fitted.fitted_on == "valid_predictions.csv"
    assert fitted.n == len(pd.read_csv(RunDir(trained_run).valid_predictions_path))
    assert fitted.after["nll"] <= fitted.before["nll"] + 1e-9
    assert main(["calibrate", "--run", str(trained_run)]) == 0
    out = capsys.readouterr().out
    assert f"{fitted.describe} fitted on" in out and "ECE" in out and "Brier" in out
    assert main(["calibrate", "--run", "bundled"]) == 0  # shipped with the package: shown, not refitted
    assert "ships with it" in capsys.readouterr().out


def test_a_calibration_at_its_limit_is_warned_about_by_pcam_calibrate_predict_and_evaluate(trained_run, real_h5, tmp_path, capsys):
    """A run whose validation predictions say nothing about the labels: `pcam calibrate` fits T at its bound and says
    so on stderr, `pcam predict --calibrated` says it again, and `pcam evaluate` carries the same sentence in its
    report's warnings."""
    import json
    import shutil

    from pcam_core.cli import main
    from pcam_core.runs import RunDir

    run = RunDir(shutil.copytree(trained_run, tmp_path / "blind-run"))
    blind_validation(run.valid_predictions_path)
    assert main(["calibrate", "--run", str(run.path)]) == 0
    err = capsys.readouterr().err
    assert "warning: Calibration at its limit: the temperature is the largest the fit allows" in err
    assert main(["predict", "--run", str(run.path), "--input", str(real_h5), "--split", "valid", "--no-tta", "--workers", "0",
                 "--calibrated", "--out", str(tmp_path / "sub.csv")]) == 0
    assert "warning: Calibration at its limit" in capsys.readouterr().err  # the file holds calibrated probabilities
    assert main(["predict", "--run", str(run.path), "--input", str(real_h5), "--split", "valid", "--no-tta", "--workers", "0",
                 "--out", str(tmp_path / "raw.csv")]) == 0
    assert "Calibration at its limit" not in capsys.readouterr().err  # raw probabilities: nothing calibrated to distrust
    assert main(["evaluate", "--run", str(run.path), "--data", str(real_h5), "--split", "valid", "--no-tta",
                 "--out", str(tmp_path / "eval.json")]) == 0
    assert "Calibration at its limit" in capsys.readouterr().err
    report = json.loads((tmp_path / "eval.json").read_text())
    assert any(w.startswith("Calibration at its limit") for w in report["warnings"])
    assert report["calibration"]["warning"].startswith("Calibration at its limit")


@pytest.mark.slow  # refits the run's guard too: a forward pass over its 1,024 demo patches
def test_the_fit_when_a_run_ends_logs_a_calibration_at_its_limit(trained_run, tmp_path, caplog):
    import logging
    import shutil

    from pcam_core.calibration import load_calibration
    from pcam_core.posthoc import fit_posthoc
    from pcam_core.runs import RunDir

    run = RunDir(shutil.copytree(trained_run, tmp_path / "blind-run"))
    blind_validation(run.valid_predictions_path)
    with caplog.at_level(logging.INFO, logger="pcam_core.posthoc"):
        fit_posthoc(run)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warned] == [load_calibration(run.path).warning]
    assert warned[0].getMessage().startswith("Calibration at its limit")
    assert any(r.getMessage().startswith("out-of-scope guard:") for r in caplog.records)  # the run still gets its guard


@pytest.fixture(scope="module")
def real_tifs(real_kaggle, tmp_path_factory):
    """48 of the real Kaggle patches, as a folder of tifs (scoring all 160 eight times is more than a test needs)."""
    import shutil

    folder = tmp_path_factory.mktemp("real-tifs")
    for path in sorted((real_kaggle / "train").glob("*.tif"))[:48]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_predict_writes_triage_calls_and_uncertainty_on_the_real_patches(trained_run, real_tifs, tmp_path, capsys):
    from pcam_core.calibration import load_calibration, run_triage
    from pcam_core.cli import main

    sub, results = tmp_path / "submission.csv", tmp_path / "results.csv"
    assert main(["predict", "--run", str(trained_run), "--input", str(real_tifs), "--out", str(sub),
                 "--results", str(results), "--triage", "0.98", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    frame = pd.read_csv(results, dtype={"id": str})
    assert len(frame) == 48 and frame["id"].tolist() == pd.read_csv(sub, dtype={"id": str})["id"].tolist()
    assert {"id", "probability", "probability_calibrated", "uncertainty", "call", "normal_below", "tumour_above"} <= set(frame.columns)
    thresholds = run_triage(trained_run, 0.98)  # fitted on the run's validation predictions
    assert (frame["normal_below"] == thresholds.normal_below).all() and (frame["tumour_above"] == thresholds.tumour_above).all()
    # the triage's call, or refer for a patch out of the run's scope (this run learnt SYNTHETIC patches: real ones are far)
    expected = np.where(frame["in_scope"], triage_calls(frame["probability"].to_numpy(), thresholds), "refer")
    assert (frame["call"].to_numpy() == expected).all() and set(frame["call"]) <= {"normal", "refer", "tumour"}
    referral = (frame["call"] == "refer").mean()
    assert f"referral rate {referral:.1%}" in printed and "at most 2% of tumour patches are called normal" in printed
    assert frame["uncertainty"].between(0, 0.5).all() and frame["uncertainty"].gt(0).any()  # the spread of 8 TTA views
    calibration = load_calibration(trained_run)
    assert np.allclose(frame["probability_calibrated"], calibration.apply(frame["probability"].to_numpy()), atol=1e-9)
    # --calibrated: the Kaggle file carries the calibrated probability
    assert main(["predict", "--run", str(trained_run), "--input", str(real_tifs), "--out", str(tmp_path / "cal.csv"),
                 "--calibrated", "--workers", "0", "--no-tta"]) == 0
    assert "calibrated (temperature" in capsys.readouterr().out
    one_pass = pd.read_csv(tmp_path / "cal.csv")["label"].to_numpy()
    assert not np.allclose(one_pass, pd.read_csv(sub)["label"].to_numpy())


def test_triage_needs_validation_predictions_and_a_results_file(real_tifs, trained_run, tmp_path, capsys):
    from pcam_core.cli import main

    args = ["predict", "--input", str(real_tifs), "--out", str(tmp_path / "s.csv"), "--workers", "0"]
    empty = tmp_path / "run-without-epochs"
    (empty / "checkpoints").mkdir(parents=True)
    assert main([*args, "--run", str(empty), "--results", str(tmp_path / "r.csv"), "--triage", "0.98"]) == 2
    assert "valid_predictions.csv not found" in capsys.readouterr().err
    assert main([*args, "--run", str(trained_run), "--triage", "0.98"]) == 2
    assert "give --results too" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_evaluate_reports_intervals_and_calibration_and_compare_runs_a_paired_test(trained_run, real_h5, tmp_path, capsys):
    import json

    from pcam_core.cli import main

    out = tmp_path / "test.json"
    assert main(["evaluate", "--run", str(trained_run), "--data", str(real_h5), "--split", "test", "--out", str(out),
                 "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    for name in ("roc_auc", "accuracy", "recall", "specificity", "precision", "f1", "pr_auc", "brier"):
        interval = report["intervals"][name]
        assert interval["low"] <= report["metrics"][name] <= interval["high"], name
    assert format_interval(report["intervals"]["roc_auc"]) in printed and "[DeLong]" in printed
    cal = report["calibration"]
    assert cal["before"]["ece"] == pytest.approx(report["metrics"]["ece"]) and "reliability_after" in cal
    assert "calibration (temperature" in printed
    assert "uncertainty" in pd.read_csv(report["predictions_file"]).columns
    assert main(["compare", "--runs", str(trained_run), "bundled", "--data", str(real_h5), "--split", "test", "--workers", "0", "--no-tta",
                 "--out", str(tmp_path / "compare.json")]) == 0
    printed = capsys.readouterr().out
    compared = json.loads((tmp_path / "compare.json").read_text())
    test = compared["paired_tests"]["bundled"]
    assert compared["n"] == 32 and 0 <= test["p_value"] <= 1 and f"p = {test['p_value']:.3g}" in printed


# -- the Runs page --------------------------------------------------------------------------------

@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_the_runs_page_shows_intervals_calibration_triage_and_a_comparison(demo_root, trained_run, tmp_path, monkeypatch):
    import json
    import shutil

    from streamlit.testing.v1 import AppTest

    from helpers import REPO
    from pcam_core.runs import RunDir
    from pcam_core.workspace import ENV_VAR, Workspace

    workspace = Workspace(tmp_path / "ws")
    workspace.add_source(demo_root, "demo")
    shutil.copytree(trained_run, workspace.runs_root / "demo-run")
    other = RunDir(shutil.copytree(trained_run, workspace.runs_root / "noisy-run"))
    valid = pd.read_csv(other.valid_predictions_path)  # a worse run on the same patches: its scores blurred with noise
    valid["probability"] = expit(np.log(valid["probability"] / (1 - valid["probability"]))
                                 + np.random.default_rng(0).normal(0, 3, len(valid))).clip(1e-6, 1 - 1e-6)
    valid.to_csv(other.valid_predictions_path, index=False)
    monkeypatch.setenv(ENV_VAR, str(workspace.root))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120)
    at.run()
    at.sidebar.selectbox(key="run").set_value("demo-run").run()
    at.switch_page("pages/runs.py").run()
    assert not at.exception, [e.value for e in at.exception]
    shown = "\n".join(str(e.value) for kind in ("subheader", "markdown", "caption", "info") for e in getattr(at, kind))
    assert "95% confidence intervals" in shown and "ROC-AUC 0." in shown and "DeLong" in shown and "Wilson" in shown
    assert "Calibration" in shown and "Calibration: temperature" in shown
    assert "Triage: normal, refer, tumour" in shown and "at most 2% of tumour patches are called normal" in shown
    metrics = {m.label: m.value for m in at.metric}
    assert {"ECE raw", "ECE calibrated", "Miss rate reached", "Referral rate"} <= set(metrics)
    drawn = {json.loads(json.loads(e.proto.json)["figure"])["layout"]["title"]["text"]
             for e in at.get("bidi_component") if e.proto.component_name == "pcam_chart"}
    assert {"Reliability diagram", "Triage: referral against target sensitivity", "ROC curves on the same patches"} <= drawn
    assert "paired DeLong test p =" in shown
    assert metrics["Target miss rate"] == "2.0%"
    at.select_slider(key="triage_target").set_value(0.8).run()
    assert not at.exception and {m.label: m.value for m in at.metric}["Target miss rate"] == "20.0%"
    assert not any("Calibration at its limit" in str(w.value) for w in at.warning)
    # a calibration fitted at the edge of its search is named above its figures
    from pcam_core.calibration import fit_calibration

    labels = valid["label"].to_numpy()
    blind = fit_calibration(labels, blind_probabilities(labels), fitted_on="valid_predictions.csv")
    (workspace.runs_root / "demo-run" / "calibration.json").write_text(json.dumps(blind.to_dict()))
    at.run()
    assert not at.exception and any(str(w.value).startswith("Calibration at its limit") for w in at.warning)
    at.switch_page("pages/explain.py").run()  # beside a patch's calibrated probability too
    assert not at.exception and any(str(w.value).startswith("Calibration at its limit") for w in at.warning)
    assert "**calibrated probability**" in " ".join(str(m.value) for m in at.markdown)


def test_errors_sort_by_uncertainty_and_the_review_queue_reads_it_by_patch_id(trained_run, tmp_path):
    import shutil

    from pcam_core.runs import RunDir
    from pcam_core.workspace.gallery import confident_errors, outcome_examples
    from pcam_core.workspace.trust import uncertainty_by_id

    frame = pd.DataFrame({"id": list("abcdef"), "label": [0, 0, 0, 1, 1, 1], "index": range(6),
                          "probability": [0.9, 0.8, 0.1, 0.2, 0.3, 0.7], "uncertainty": [0.01, 0.2, 0.0, 0.05, 0.3, 0.1]})
    fp, fn = confident_errors(frame, 0.5)
    assert fp["id"].tolist() == ["a", "b"] and fn["id"].tolist() == ["d", "e"]  # the most confident first
    fp, fn = confident_errors(frame, 0.5, order="uncertainty")
    assert fp["id"].tolist() == ["b", "a"] and fn["id"].tolist() == ["e", "d"]  # the most uncertain first
    with pytest.raises(ValueError, match="no uncertainty"):
        outcome_examples(frame.drop(columns="uncertainty"), 0.5, "false_positive", order="uncertainty")
    run = RunDir(shutil.copytree(trained_run, tmp_path / "run"))
    assert uncertainty_by_id(run, "valid") is None  # the trainer scores with one pass: no spread
    metrics_path, predictions_path = run.evaluation_files("test")
    predictions_path.parent.mkdir(exist_ok=True)
    frame.to_csv(predictions_path, index=False)
    spread = uncertainty_by_id(run, "test")
    assert spread["e"] == 0.3 and list(spread.index) == list("abcdef")


@pytest.mark.slow
def test_predict_page_shows_calibrated_probabilities_uncertainty_and_triage_calls(demo_root, trained_run, real_tifs, tmp_path,
                                                                                monkeypatch):
    import shutil

    from streamlit.testing.v1 import AppTest

    from helpers import REPO
    from pcam_core.calibration import run_triage
    from pcam_core.cli import main
    from pcam_core.runs import RunDir
    from pcam_core.workspace import ENV_VAR, Workspace

    workspace = Workspace(tmp_path / "ws")
    workspace.add_source(demo_root, "demo")
    shutil.copytree(trained_run, workspace.runs_root / "demo-run")
    monkeypatch.setenv(ENV_VAR, str(workspace.root))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/predict.py").run()
    files = [(p.name, p.read_bytes(), "image/tiff") for p in sorted(real_tifs.glob("*.tif"))[:6]]
    at.file_uploader(key="uploads").set_value(files).run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    assert {"probability_calibrated", "uncertainty"} <= set(table.columns) and table["uncertainty"].between(0, 0.5).all()
    assert "calibrated" in " ".join(str(c.value) for c in at.caption)
    at.toggle(key="predict_triage").set_value(True).run()
    assert not at.exception
    table = at.dataframe[0].value
    expected = np.where(table["in_scope"].astype(bool), triage_calls(table["probability"].to_numpy(), run_triage(trained_run, 0.98)),
                        "refer")  # out of the run's scope: refer
    assert (table["call"].to_numpy() == expected).all()
    assert any("by triage at target sensitivity 0.98" in str(h.value) for h in at.subheader)
    assert not any("Calibration at its limit" in str(w.value) for w in at.warning)
    # `pcam calibrate` refits a run the page has loaded: the page shows the new calibration, here one at its limit
    run = RunDir(workspace.runs_root / "demo-run")
    blind_validation(run.valid_predictions_path)
    assert main(["calibrate", "--run", str(run.path)]) == 0
    at.run()
    assert not at.exception and any(str(w.value).startswith("Calibration at its limit") for w in at.warning)
    assert "temperature 54.598" in " ".join(str(c.value) for c in at.caption)  # the refitted one, not the cached


def test_the_bundled_model_ships_its_held_out_predictions_temperature_and_triage():
    """The model the dashboard starts with has a temperature and triage thresholds: fitted on the predictions it
    ships, which are the very patches and figures its model card reports: the single model's 600 held-out patches,
    or every patch out of fold for the cross-validated ensemble (one temperature and one triage per scoring mode)."""
    import hashlib

    from pcam_core.bundled import BUNDLED, bundled_record, is_ensemble
    from pcam_core.calibration import load_calibration, run_triage, validation_predictions
    from pcam_core.metrics import binary_metrics

    record = bundled_record()
    modes = (False, True) if is_ensemble() else (False,)
    for tta in modes:
        frame = validation_predictions(BUNDLED, tta=tta)
        if is_ensemble():  # the out-of-fold predictions of every patch: the card's cross-validated figures
            figures = record["cv"]["tta" if tta else "one_pass"]
            assert len(frame) == frame["id"].nunique() == record["data"]["patches"]
            auc = binary_metrics(frame["label"].to_numpy(), frame["probability"].to_numpy(), 0.5)["roc_auc"]
            assert auc == pytest.approx(figures["roc_auc"]["value"], abs=1e-9)
        else:
            assert hashlib.sha1("\n".join(sorted(frame["id"])).encode()).hexdigest() == record["data"]["holdout_ids_sha1"]
            held = record["holdout"]
            assert len(frame) == held["n"] and int(frame["label"].sum()) == held["n_tumour"]
            for column, scoring in (("probability", "one_pass"), ("probability_tta", "tta")):
                auc = binary_metrics(frame["label"].to_numpy(), frame[column].to_numpy(), 0.5)["roc_auc"]
                assert auc == pytest.approx(held[scoring]["roc_auc"], abs=2e-4)
        calibration = load_calibration(BUNDLED, tta=tta)
        assert calibration is not None and calibration.n == len(frame) and 0.5 < calibration.temperature < 2
        thresholds = run_triage(BUNDLED, 0.98, tta=tta)
        tumour = np.sort(frame.loc[frame["label"] == 1, "probability"].to_numpy())
        # split conformal: at most floor(0.02 * (n1 + 1)) - 1 fitted tumour patches fall below the normal threshold
        assert (tumour < thresholds.normal_below).sum() <= int(np.floor(0.02 * (len(tumour) + 1)))


def test_an_unreadable_calibration_file_is_an_error_not_no_calibration(tmp_path):
    """A calibration is written atomically, so a damaged calibration.json was damaged by hand or by the disk: loading
    it names the file instead of scoring uncalibrated as if none had been fitted. A missing file is no calibration."""
    from pcam_core.calibration import load_calibration

    assert load_calibration(tmp_path) is None
    (tmp_path / "calibration.json").write_text("{not json")
    with pytest.raises(ValueError, match="calibration.json is not readable JSON"):
        load_calibration(tmp_path)
