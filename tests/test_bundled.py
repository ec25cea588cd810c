"""The bundled model (`pcam_core.bundled`): shipped in the package, loaded with weights_only=True, and a run
like any other (`load_predictor("bundled")`, `--run bundled`).

The real fixture patches (tests/data/) come from the same 4,000 patches the bundled model was trained on
(`scripts/train_bundled.py`): many of them were its training data, so the figures measured here show that
the model and the plumbing work, not how well the model generalises. The honest figures are the script's
(held-out for the single model, out-of-fold for the cross-validated ensemble), recorded with the model and in
pcam_core/bundled/MODEL_CARD.md. The tests hold for either form that ships (`pcam_core.bundled.is_ensemble`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from helpers import REAL_H5, REPO, cli_here, run_cli
from pcam_core import load_predictor
from pcam_core.bundled import BUNDLED, BUNDLED_DIR, bundled_checkpoint, bundled_record, is_bundled, is_ensemble, model_card
from pcam_core.checkpoint import FORMAT
from pcam_core.crossval import MODES
from pcam_core.ensemble import member_runs, read_record
from pcam_core.runs import RunDir, checkpoint_path


def test_the_bundled_model_is_the_cross_validated_ensemble():
    """What ships is the ensemble (issue 24), not the single model file of `scripts/train_bundled.py` without --folds."""
    assert is_ensemble() and bundled_checkpoint() == BUNDLED_DIR / "ensemble.json"
    assert not (BUNDLED_DIR / "pcam-real-pcamnet.pt").exists()


def test_the_cross_validated_ensemble_is_plain_weights_with_out_of_fold_predictions_of_every_patch():
    """The cross-validated ensemble (`scripts/train_bundled.py --folds K`): K members of plain weights, under 20 MB in
    all; every patch of the data predicted once, by the one member that held it out (the fold column), one pass and
    TTA; the record's figures are cv.json's."""
    run = RunDir(BUNDLED_DIR)
    record = read_record(run)
    bundled, members = record["bundled"], [member.best_checkpoint for member in member_runs(run)]
    folds = bundled["folds"]
    assert len(members) == len(record["members"]) == folds >= 2 and 0 < record["threshold"] < 1
    for path in members:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        assert payload["format"] == FORMAT and payload["ema"] is None and not payload["synthetic_data"]
        assert set(payload) <= {"format", "config", "model", "ema", "epoch", "global_step", "synthetic_data"}
        assert payload["config"]["model"]["name"] == "pcamnet" and payload["config"]["data"]["folds"] == folds
    shipped = [p for p in BUNDLED_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert sum(p.stat().st_size for p in shipped) < 20_000_000
    oof = pd.read_csv(run.oof_predictions_path, dtype={"id": str})
    cv = json.loads(run.cv_path.read_text())
    assert len(oof) == oof["id"].nunique() == cv["n"] == bundled["data"]["patches"]
    assert sorted(oof["fold"].unique()) == list(range(folds)) and oof["index"].tolist() == list(range(len(oof)))
    for path, column in ((run.valid_predictions_path, "probability"), (run.valid_predictions_tta_path, "probability_tta")):
        view = pd.read_csv(path, dtype={"id": str})
        assert view["id"].tolist() == oof["id"].tolist()
        np.testing.assert_allclose(view["probability"], oof[column])
    for mode in ("one_pass", "tta"):
        assert bundled["cv"][mode]["roc_auc"] == cv[mode]["pooled"]["roc_auc"]
        assert cv[mode]["pooled"]["roc_auc"]["value"] == pytest.approx(roc_auc_score(oof["label"], oof[MODES[mode]]))


def test_the_model_card_states_the_recorded_figures_and_the_limits():
    card = model_card()
    if is_ensemble():
        from pcam_core.stats import format_interval

        cv = json.loads(RunDir(BUNDLED_DIR).cv_path.read_text())
        record = bundled_record()
        for mode in ("one_pass", "tta"):
            assert format_interval(cv[mode]["pooled"]["roc_auc"], 4) in card
            assert format_interval(cv[mode]["mean_fold_roc_auc"], 4) in card
        timing = record["scoring_time"]
        for words in (f"Size on disk {record['size_mb']:.1f} MB", f"the ensemble {timing['ensemble_ms_per_patch']:.2f} ms",
                      "Training time:", "selection bias", "out-of-fold slide maps"):
            assert words in card, words
    else:
        held = bundled_record()["holdout"]
        for scoring in ("one_pass", "tta"):
            assert f"{held[scoring]['roc_auc']:.4f} ± {held[scoring]['roc_auc_se']:.4f}" in card
    for words in ("Not a diagnosis", "0.972 µm/px", "untested", "tests/data/", "scripts/train_bundled.py"):
        assert words in card, words


def test_bundled_is_a_run_name_for_the_one_resolver_and_a_folder_of_that_name_stays_reachable(tmp_path, monkeypatch):
    assert checkpoint_path(BUNDLED) == checkpoint_path(BUNDLED, "last") == checkpoint_path(BUNDLED_DIR) == bundled_checkpoint()
    with pytest.raises(ValueError, match="'best' or 'last'"):
        checkpoint_path(BUNDLED, "first")
    monkeypatch.chdir(tmp_path)
    assert not is_bundled("./bundled")
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        checkpoint_path("./bundled")


def test_load_predictor_bundled_scores_real_patches_well_above_chance(real_kaggle):
    """ROC-AUC on every other one of the 160 committed real patches (overlapping the model's training data: see the
    module docstring; half of them, as the ensemble costs five models' time in the fast lane), printed with `-s`."""
    predictor = load_predictor("bundled", device="cpu")
    assert predictor.source == "bundled" and predictor.model_name == "pcamnet"
    assert predictor.threshold == (read_record(RunDir(BUNDLED_DIR))["threshold"] if is_ensemble()
                                   else bundled_record()["holdout"]["threshold"])
    labels = pd.read_csv(real_kaggle / "train_labels.csv").iloc[::2]
    assert len(labels) == 80 and labels["label"].sum() >= 20
    probs = predictor.predict([real_kaggle / "train" / f"{i}.tif" for i in labels["id"]])
    auc = roc_auc_score(labels["label"], probs)
    print(f"bundled model on 80 fixture patches: ROC-AUC {auc:.4f}")
    assert auc > 0.85
    assert np.all((probs >= 0) & (probs <= 1))


@pytest.mark.slow  # a Python process of its own
def test_importing_the_bundled_module_loads_no_torch():
    code = "import sys, pcam_core.bundled, pcam_core.runs; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_pcam_predict_evaluate_and_explain_take_run_bundled(real_kaggle, tmp_path, capsys):
    """`pcam predict` as a process of its own, as a user runs it; evaluate and explain through the same entry point here."""
    sub = tmp_path / "sub.csv"
    done = run_cli("predict", "--run", "bundled", "--input", str(real_kaggle / "train"), "--out", str(sub), "--no-tta")
    assert done.returncode == 0, done.stderr
    scored = pd.read_csv(real_kaggle / "train_labels.csv").merge(pd.read_csv(sub), on="id", suffixes=("", "_prob"))
    assert len(scored) == 160 and roc_auc_score(scored["label"], scored["label_prob"]) > 0.85
    # the same probabilities as the Python face
    direct = load_predictor("bundled", device="cpu").predict([real_kaggle / "train" / f"{i}.tif" for i in scored["id"]])
    np.testing.assert_allclose(scored["label_prob"], direct, atol=1e-5)

    out = tmp_path / "eval" / "test.json"
    done = cli_here(capsys, "evaluate", "--run", "bundled", "--data", str(REAL_H5), "--split", "test", "--out", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["run"] == "bundled" and report["model"] == "pcamnet" and report["metrics"]["n"] == 32
    done = cli_here(capsys, "evaluate", "--run", "bundled", "--data", str(REAL_H5), "--split", "test", "--out", str(out),
                    "--threshold-method", "youden")  # chosen on the predictions the bundled model ships (its held-out patches)
    assert done.returncode == 0, done.stderr
    youden = json.loads(out.read_text())
    assert youden["threshold_method"] == "youden" and 0 < youden["metrics"]["threshold"] < 1
    assert youden["metrics"]["threshold"] != report["metrics"]["threshold"]

    done = cli_here(capsys, "explain", "--run", "bundled", "--input", str(real_kaggle), "--split", "train", "--limit", "3",
                   "--out", str(tmp_path / "maps"))
    assert done.returncode == 0, done.stderr
    assert len(pd.read_csv(tmp_path / "maps" / "explanations.csv")) == 3


@pytest.mark.slow
def test_retime_rewrites_the_scoring_time_of_a_copy_of_the_package_and_nothing_else(tmp_path):
    """`scripts/train_bundled.py --retime --out DIR` measures the packaged ensemble's scoring time again and writes it
    into DIR's ensemble.json and card; every other file, and every other line of the card, is unchanged."""
    import shutil

    if not is_ensemble():
        pytest.skip("the package ships a single model: --retime is for the cross-validated ensemble")
    copy = tmp_path / "bundled"
    shutil.copytree(BUNDLED_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "train_bundled.py"), "--retime", "--out", str(copy)],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "ensemble_ms_per_patch:" in result.stdout and "one_model_ms_per_patch:" in result.stdout
    after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    changed = {name for name in before if before[name] != after[name]}
    assert set(after) == set(before) and changed <= {Path("ensemble.json"), Path("MODEL_CARD.md")}
    old, new = json.loads(before[Path("ensemble.json")]), json.loads(after[Path("ensemble.json")])
    timing = new["bundled"]["scoring_time"]
    assert timing["ensemble_ms_per_patch"] > timing["one_model_ms_per_patch"] > 0
    assert {k: v for k, v in new.items() if k != "bundled"} == {k: v for k, v in old.items() if k != "bundled"}
    assert {k: v for k, v in new["bundled"].items() if k != "scoring_time"} == {k: v for k, v in old["bundled"].items() if k != "scoring_time"}
    card_before, card_after = before[Path("MODEL_CARD.md")].decode().splitlines(), after[Path("MODEL_CARD.md")].decode().splitlines()
    differing = [b for a, b in zip(card_before, card_after) if a != b]  # the sentence of the timing (two lines) alone
    assert len(card_before) == len(card_after)
    assert all("Scoring time per patch" in line or "ms, one member" in line for line in differing), differing
    card = " ".join(card_after)
    assert (f"Scoring time per patch (one pass, batches of 256, {timing['threads']} thread(s), x86_64 CPU): the ensemble "
            f"{timing['ensemble_ms_per_patch']:.2f} ms, one member {timing['one_model_ms_per_patch']:.2f} ms") in card
