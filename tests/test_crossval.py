"""Cross-validation (`pcam train --folds K`, `pcam_core.crossval`) and ensembles as runs (`pcam_core.ensemble`): folds
stratified, disjoint and grouped by slide; every patch's out-of-fold prediction once; the ensemble is the mean of its
members, and every face (predict, evaluate, export, explain, slide, serve) takes it; a killed K-fold job resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import CV_ARGS, REPO, cli_here, real_mosaic_slide, wait_for

from pcam_core.data.common import stratified_folds



def test_folds_are_stratified_disjoint_and_cover_every_patch() -> None:
    labels = np.r_[np.zeros(60, dtype=int), np.ones(40, dtype=int)]
    fold = stratified_folds(labels, 5, seed=3)
    assert sorted(np.unique(fold)) == [0, 1, 2, 3, 4]  # each patch in exactly one fold
    assert [int((labels[fold == f] == 1).sum()) for f in range(5)] == [8] * 5  # stratified: 40 tumour / 5
    assert np.array_equal(fold, stratified_folds(labels, 5, seed=3))  # seeded
    assert not np.array_equal(fold, stratified_folds(labels, 5, seed=4))


def test_folds_keep_each_slide_in_one_fold() -> None:
    rng = np.random.default_rng(0)
    slides = np.repeat([f"slide_{i}" for i in range(12)], 10)
    labels = (rng.random(120) < np.repeat(rng.random(12), 10)).astype(int)
    fold = stratified_folds(labels, 3, seed=0, groups=slides)
    for slide in np.unique(slides):
        assert np.unique(fold[slides == slide]).size == 1
    with pytest.raises(ValueError, match="at least 4 slides"):
        stratified_folds(labels, 4, seed=0, groups=np.repeat(["a", "b", "c"], 40))
    with pytest.raises(ValueError, match="at least 5 patches of each class"):
        stratified_folds(np.r_[np.zeros(20, dtype=int), np.ones(3, dtype=int)], 5, seed=0)


@pytest.mark.slow
def test_out_of_fold_predictions_cover_every_patch_once(cv_run, small_kaggle) -> None:
    from pcam_core.data.loader import cv_pool, fold_split
    from pcam_core.runs import RunDir

    run = RunDir(cv_run)
    oof = pd.read_csv(run.oof_predictions_path, dtype={"id": str})
    pool = cv_pool(small_kaggle)
    assert len(oof) == len(pool) == 64 and oof["index"].is_unique
    assert sorted(oof["id"]) == sorted(pd.read_csv(small_kaggle / "train_labels.csv", dtype={"id": str})["id"])
    assert np.array_equal(oof.sort_values("index")["fold"].to_numpy(), fold_split(pool, 2, 0))
    assert np.array_equal(oof.sort_values("index")["label"].to_numpy(), pool.labels)
    # each patch scored by the fold model that did not train on it: its own validation predictions (one pass)
    for k in (0, 1):
        own = pd.read_csv(run.fold(k).valid_predictions_path, dtype={"id": str}).set_index("id")["probability"]
        mine = oof[oof["fold"] == k].set_index("id")["probability"]
        assert set(own.index) == set(mine.index)
        assert np.allclose(own[mine.index].to_numpy(), mine.to_numpy(), atol=1e-5)
        # and its TTA ones, at the same positions of the fold, with a temperature fitted on them for the fold used alone
        member = run.fold(k)
        one_pass = pd.read_csv(member.valid_predictions_path, dtype={"id": str}).set_index("index")
        with_tta = pd.read_csv(member.valid_predictions_tta_path, dtype={"id": str}).set_index("index")
        assert with_tta.index.equals(one_pass.index) and list(with_tta.loc[one_pass.index, "id"]) == list(one_pass["id"])
        assert np.allclose(with_tta.set_index("id")["probability"][mine.index], oof[oof["fold"] == k]["probability_tta"], atol=1e-6)
        assert json.loads(member.calibration_tta_path.read_text())["fitted_on"] == "valid_predictions_tta.csv"
    cv = json.loads(run.cv_path.read_text())
    for mode in ("one_pass", "tta"):
        auc = cv[mode]["pooled"]["roc_auc"]
        assert auc["low"] <= auc["value"] <= auc["high"] and len(cv[mode]["per_fold_roc_auc"]) == 2
        assert 0 <= cv[mode]["triage"]["referral_rate"] <= 1
    # posthoc of each scoring mode fitted on its own out-of-fold predictions
    one, tta = (json.loads(p.read_text()) for p in (run.calibration_path, run.calibration_tta_path))
    assert (one["fitted_on"], tta["fitted_on"]) == ("valid_predictions.csv", "valid_predictions_tta.csv")
    assert one["n"] == tta["n"] == 64


@pytest.mark.slow
def test_pcam_runs_counts_a_cross_validation_by_its_folds(cv_run, capsys) -> None:
    """`pcam runs` (and the dashboard's run list, which reads the same summary) counts the epochs of the folds, and
    gives the pooled out-of-fold ROC-AUC in place of a best epoch (it once said "0/1" and nothing)."""
    from pcam_core.cli import main

    assert main(["runs", "--root", str(cv_run.parent), "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    cv = json.loads((cv_run / "cv.json").read_text())
    assert listed["state"] == "finished" and (listed["epochs_done"], listed["epochs_total"]) == (2, 2)  # 2 folds x 1
    assert listed["best"]["cross_validated"] and listed["best"]["epoch"] is None
    assert listed["best"]["roc_auc"] == pytest.approx(cv["one_pass"]["pooled"]["roc_auc"]["value"])
    assert main(["runs", "--root", str(cv_run.parent)]) == 0
    assert "2/2" in capsys.readouterr().out


@pytest.mark.slow
def test_two_cross_validations_of_the_same_folds_are_compared_patch_by_patch(cv_run, tmp_path) -> None:
    """benchmarks/compare_oof.py, which judges issue 24's recipe variants: a run's folds against a reference
    holding one oof_predictions.csv (the bundled layout), fold by fold and pooled; other patches are refused."""
    from sklearn.metrics import roc_auc_score

    from pcam_core.runs import RunDir

    oof = pd.read_csv(RunDir(cv_run).oof_predictions_path, dtype={"id": str})
    reference = tmp_path / "reference"
    reference.mkdir()
    worse = oof.copy()
    noise = np.random.default_rng(0).uniform(0, 1, len(worse))
    worse["probability"] = 0.5 * worse["probability"] + 0.5 * noise
    worse.to_csv(reference / "oof_predictions.csv", index=False)
    script = [sys.executable, str(REPO / "benchmarks" / "compare_oof.py")]
    done = subprocess.run([*script, str(cv_run), str(reference), "--json", str(tmp_path / "t.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    table = pd.DataFrame(json.loads((tmp_path / "t.json").read_text()))
    assert list(table["folds"]) == ["fold 0", "fold 0", "fold 1", "fold 1", "pooled", "pooled"]
    pooled = table[(table["folds"] == "pooled") & (table["scoring"] == "one pass")].iloc[0]
    assert pooled["patches"] == 64
    assert pooled["variant"] == pytest.approx(roc_auc_score(oof["label"], oof["probability"]))
    assert pooled["reference"] == pytest.approx(roc_auc_score(worse["label"], worse["probability"]))
    assert pooled["difference"] == pytest.approx(pooled["variant"] - pooled["reference"])
    tta = table[table["scoring"] == "TTA"]
    assert np.allclose(tta["difference"], 0)  # the TTA column is the same on both sides
    worse.iloc[1:].to_csv(reference / "oof_predictions.csv", index=False)  # a patch short: not the same folds
    done = subprocess.run([*script, str(cv_run), str(reference)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "do not hold the same patches" in done.stderr


@pytest.mark.slow
def test_the_ensemble_is_the_mean_of_its_members(cv_run, tmp_path) -> None:
    from scipy.special import expit, logit

    from pcam_core.api import load_predictor
    from pcam_core.ensemble import create_ensemble
    from pcam_core.loading import load_run_model
    from pcam_core.runs import RunDir

    from helpers import random_patches

    pixels = random_patches(12, seed=5)
    members = [load_predictor(RunDir(cv_run).fold(k).path, device="cpu").predict(pixels) for k in (0, 1)]
    ensemble = load_predictor(cv_run, device="cpu")
    assert np.allclose(ensemble.predict(pixels), np.mean(members, axis=0), atol=1e-6)
    by_logit = create_ensemble([RunDir(cv_run).fold(k).path for k in (0, 1)], tmp_path / "logit", combine="logit")
    assert np.allclose(load_predictor(by_logit.path, device="cpu").predict(pixels),
                       expit(np.mean(logit(np.array(members)), axis=0)), atol=1e-5)
    loaded = load_run_model(cv_run, device="cpu")
    assert loaded.is_ensemble and loaded.info["combine"] == "prob"
    assert loaded.calibration_for(tta=True).fitted_on == "valid_predictions_tta.csv"
    assert loaded.calibration_for(tta=False).fitted_on == "valid_predictions.csv"
    with pytest.raises(ValueError, match="at least two runs"):
        create_ensemble([cv_run], tmp_path / "one")


@pytest.mark.slow
def test_the_ensemble_goes_through_every_face(cv_run, small_kaggle, real_h5, tmp_path) -> None:
    import onnxruntime
    import torch
    from starlette.testclient import TestClient

    from pcam_core.api import load_predictor
    from pcam_core.explain import explain_batch
    from pcam_core.export import export_run
    from pcam_core.loading import load_run_model
    from pcam_core.predict import evaluate_run, predict_submission
    from pcam_core.scoring_options import ScoringOptions
    from pcam_core.serve.app import create_app
    from pcam_core.slides.batch import analyse

    options = ScoringOptions(device="cpu", workers=0, tta=False)
    predictor = load_predictor(cv_run, device="cpu")
    files = sorted((small_kaggle / "train").glob("*.tif"))[:6]
    from PIL import Image

    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    expected = pd.Series(predictor.predict(pixels), index=[f.stem for f in files])
    # predict
    predict_submission(cv_run, small_kaggle, tmp_path / "sub.csv", options, split="train")
    sub = pd.read_csv(tmp_path / "sub.csv", dtype={"id": str}).set_index("id")["label"]
    assert np.allclose(sub[expected.index].to_numpy(), expected.to_numpy(), atol=1e-5)
    # evaluate (TTA: the temperature fitted on TTA out-of-fold predictions)
    report = evaluate_run(cv_run, real_h5, "test", tmp_path / "ev.json", ScoringOptions(device="cpu", workers=0, tta=True))
    assert report["calibration"]["temperature"] == pytest.approx(predictor.calibration_tta.temperature)
    with pytest.raises(ValueError, match="no validation split"):  # every member trained on most of those patches
        evaluate_run(cv_run, small_kaggle, "valid", tmp_path / "v.json", options)
    # export: one graph; ONNX output equals the torch ensemble's
    export = export_run(cv_run, "onnx", tmp_path / "e.onnx", check=pixels)
    assert export["ensemble"]["members"] == ["folds/fold-0", "folds/fold-1"]
    session = onnxruntime.InferenceSession(str(tmp_path / "e.onnx"), providers=["CPUExecutionProvider"])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().numpy() / 255.0
    onnx_probs = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert np.allclose(onnx_probs, expected.to_numpy(), atol=1e-5)
    # explain: the mean of the members' maps
    loaded = load_run_model(cv_run, device="cpu")
    both = explain_batch(loaded.model, pixels[:3], model_name=loaded.model_name)
    parts = [explain_batch(m, pixels[:3], model_name=loaded.model_name) for m in loaded.model.members]
    assert np.allclose(both.maps, np.mean([p.maps for p in parts], axis=0), atol=1e-6)
    assert np.allclose(both.probabilities, expected.to_numpy()[:3], atol=1e-5)
    # slide
    slide, _ = real_mosaic_slide(tmp_path / "slide", cols=4, rows=3)
    summaries = analyse(str(cv_run), slide, tmp_path / "analysis", options, stride=96)
    summary = summaries[0]["summary"]
    assert Path(summary["run"]).resolve() == cv_run.resolve() and summary["checkpoint"].endswith("ensemble.json")
    assert 0 <= summary["slide_score"] <= 1
    # serve
    with TestClient(create_app(str(cv_run), device="cpu", work_dir=tmp_path / "serve")) as client:
        answer = client.post("/v1/predict", files=[("files", (f.name, f.read_bytes(), "image/tiff")) for f in files]).json()
    served = {p["id"]: p["probability"] for p in answer["predictions"]}
    assert np.allclose([served[i] for i in expected.index], expected.to_numpy(), atol=1e-5)


@pytest.mark.slow
def test_a_killed_fold_job_resumes_where_it_stopped(small_kaggle, tmp_path, capsys) -> None:
    from pcam_core.runs import RunDir

    out = tmp_path / "cv"
    run = RunDir(out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "pcam_core", "train", "--data", str(small_kaggle), "--out", str(out), "--folds", "2",
            "--epochs", "3", "--batch-size", "32", "--workers", "0"]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_for(lambda: len(run.fold(1).epochs()) >= 1 or proc.poll() is not None, timeout=240, every=0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9 in fold 2, after its first epoch
    finally:
        proc.wait(timeout=30)
    assert not run.fold(1).summary_path.exists(), "the job finished fold 2 before it could be killed"
    assert run.status()["state"] == "interrupted"
    fold0 = run.fold(0).oof_predictions_path.stat().st_mtime_ns
    done = cli_here(capsys, "train", "--out", str(out), "--resume")  # here: the kill was the process's business
    assert done.returncode == 0, done.stderr
    assert run.fold(0).oof_predictions_path.stat().st_mtime_ns == fold0  # fold 1 was kept, not retrained
    assert [e["epoch"] for e in run.fold(1).epochs()] == [1, 2, 3]  # fold 2 went on after its first epoch
    assert "resumed from" in run.fold(1).log_tail(200)
    assert len(pd.read_csv(run.oof_predictions_path)) == 64 and run.status()["state"] == "finished"
    for fold in (0, 1):  # each fold's model is its last epoch (train.keep "auto"): its held-out fold picked nothing
        kept, last = (torch.load(p, map_location="cpu", weights_only=True) for p in
                      (run.fold(fold).best_checkpoint, run.fold(fold).last_checkpoint))
        assert kept["epoch"] == last["epoch"] == 3 and run.fold(fold).summary()["best_epoch"] == 3
        assert all(torch.equal(kept["ema"][k], last["ema"][k]) for k in last["ema"])
    again = cli_here(capsys, "train", "--out", str(out), "--resume")
    assert again.returncode != 0 and "nothing to resume" in again.stderr


@pytest.mark.slow
def test_folds_side_by_side_train_as_one_after_another_and_stop_fail_and_resume_together(cv_run, small_kaggle, tmp_path, capsys) -> None:
    """`--parallel-folds 2`: each fold in a process of its own gives the out-of-fold predictions of the folds trained one
    after another (`cv_run`, the same arguments), each logged to one new MLflow store. A stop request to the job alone (as `pcam stop` sends it) stops every
    fold with its checkpoint; a fold that fails stops the other and the job names it; then the job resumes to the end."""
    from pcam_core.cli import main
    from pcam_core.runs import RunDir

    out = tmp_path / "side"
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # a new store both folds log to at once (they raced to create its tables)
    assert main(["train", "--data", str(small_kaggle), "--out", str(out), *CV_ARGS, "--parallel-folds", "2", "--mlflow", store]) == 0
    run = RunDir(out)
    assert "training 2 folds side by side" in run.log_tail(400) and "[fold 2]" in run.log_tail(400)
    import mlflow

    client = mlflow.MlflowClient(store)
    logged = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted((r.info.run_name, r.info.status) for r in logged) == [("cv fold 1 of 2", "FINISHED"), ("cv fold 2 of 2", "FINISHED")]
    side = pd.read_csv(run.oof_predictions_path, dtype={"id": str}).set_index("id")
    alone = pd.read_csv(RunDir(cv_run).oof_predictions_path, dtype={"id": str}).set_index("id")
    assert side.index.equals(alone.index) and (side["fold"] == alone["fold"]).all()
    assert np.allclose(side["probability"], alone["probability"], atol=1e-4)  # the same training, other thread counts
    assert run.status()["state"] == "finished" and run.raw_status()["parallel_folds"] == 2

    out = tmp_path / "stopped"
    run = RunDir(out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "pcam_core", "train", "--data", str(small_kaggle), "--out", str(out), "--folds", "2",
            "--epochs", "24", "--batch-size", "32", "--workers", "0", "--parallel-folds", "2"]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert wait_for(lambda: all(len(run.fold(k).epochs()) >= 1 for k in (0, 1)) or proc.poll() is not None, timeout=240, every=0.05)
        assert run.status()["folds_running"] == [1, 2]
        os.kill(proc.pid, signal.SIGTERM)  # the job only: it passes the request on to its folds
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0 and "--resume --parallel-folds 2" in stderr
    assert run.status()["state"] == "stopped"
    from pcam_core.runs import summarize

    assert run.config().model.name == "auto" and summarize(run).model == "pcamnet"  # as its folds resolved it
    for k in (0, 1):
        assert run.fold(k).status()["state"] == "stopped" and run.fold(k).last_checkpoint.exists()
        assert not run.fold(k).summary_path.exists(), "a fold finished before the stop: give it more epochs"
    good = run.fold(1).config_path.read_bytes()
    run.fold(1).config_path.write_text("{broken")
    # the job resumed here (its folds are processes of their own, as before): the stop was the job process's business
    failed = cli_here(capsys, "train", "--out", str(out), "--resume", "--parallel-folds", "2")
    assert failed.returncode != 0 and "fold 2 of 2 failed: ValueError: config file" in failed.stderr
    assert "Traceback" not in failed.stderr and "Traceback" in run.log_tail(400)  # the fold's traceback: in the job's log
    assert run.status()["state"] == "failed" and run.fold(0).status()["state"] == "stopped"  # fold 1 stopped, not lost
    run.fold(1).config_path.write_bytes(good)
    done = cli_here(capsys, "train", "--out", str(out), "--resume", "--parallel-folds", "2")
    assert done.returncode == 0, done.stderr
    assert all([e["epoch"] for e in run.fold(k).epochs()] == list(range(1, 25)) for k in (0, 1))
    assert "resumed from" in run.fold(0).log_tail(200) and "resumed from" in run.fold(1).log_tail(200)
    assert len(pd.read_csv(run.oof_predictions_path)) == 64 and run.status()["state"] == "finished"


def test_folds_side_by_side_are_refused_without_folds_or_below_one(small_kaggle, tmp_path, capsys) -> None:
    from pcam_core.cli import main
    from pcam_core.config import ExperimentConfig
    from pcam_core.crossval import fit_folds

    with pytest.raises(ValueError, match=r"the folds trained side by side \(--parallel-folds\) must be at least 1, not 0"):
        fit_folds(ExperimentConfig().replace(data={"path": str(small_kaggle)}), tmp_path / "cv", folds=2, parallel=0)
    assert not (tmp_path / "cv").exists()
    assert main(["train", "--data", str(small_kaggle), "--out", str(tmp_path / "single"), "--parallel-folds", "2"]) != 0
    assert "--parallel-folds goes with --folds" in capsys.readouterr().err and not (tmp_path / "single").exists()


def test_cross_validated_report_and_triage_are_fitted_on_the_other_folds() -> None:
    from pcam_core.crossval import cv_report
    from pcam_core.metrics import binary_metrics
    from pcam_core.triage import fit_triage, triage_outcome

    rng = np.random.default_rng(1)
    labels = (rng.random(300) < 0.4).astype(int)
    folds = stratified_folds(labels, 3, seed=0)
    probs = np.clip(0.35 * labels + rng.random(300) * 0.65, 0, 1)
    frame = pd.DataFrame({"label": labels, "fold": folds, "probability": probs, "probability_tta": probs ** 1.1})
    report = cv_report(frame, pr_auc=False)
    assert report["one_pass"]["pooled"]["roc_auc"]["value"] == pytest.approx(binary_metrics(labels, probs)["roc_auc"])
    assert report["one_pass"]["per_fold_roc_auc"] == pytest.approx(
        [binary_metrics(labels[folds == f], probs[folds == f])["roc_auc"] for f in range(3)])
    triage = report["one_pass"]["triage"]
    assert sum(triage["counts"].values()) == 300
    held = folds == 2
    own = fit_triage(labels[~held], probs[~held], 0.98)  # fold 3's thresholds: fitted on folds 1 and 2 only
    assert triage["thresholds_per_fold"][2]["normal_below"] == own.normal_below
    missed = sum(triage_outcome(labels[folds == f], probs[folds == f], fit_triage(labels[folds != f], probs[folds != f], 0.98))
                 ["counts"]["tumour_normal"] for f in range(3))
    assert triage["miss_rate"] == pytest.approx(missed / labels.sum())


def test_bad_cross_validation_requests_are_refused_before_a_folder_is_made(real_kaggle, tmp_path, capsys) -> None:
    from pcam_core.cli import main

    assert main(["train", "--data", str(real_kaggle), "--out", str(tmp_path / "a"), "--folds", "1"]) != 0
    assert "data.folds=1" in capsys.readouterr().err
    assert main(["train", "--data", str(real_kaggle), "--out", str(tmp_path / "b"), "--combine", "logit"]) != 0
    assert "--combine goes with --folds" in capsys.readouterr().err
    assert main(["train", "--data", str(real_kaggle), "--out", str(tmp_path / "c"), "--folds", "70"]) != 0
    assert "between 2 and 20" in capsys.readouterr().err
    assert main(["train", "--data", str(real_kaggle), "--out", str(tmp_path / "d"), "--folds", "2", "--early-stopping", "3"]) != 0
    assert "keeps its last epoch" in capsys.readouterr().err  # early stopping would pick the epoch on the held-out fold
    assert main(["train", "--data", str(real_kaggle), "--out", str(tmp_path / "e"), "--folds", "5", "--teacher", "bundled"]) != 0
    assert "teacher bundled was cross-validated on other data" in capsys.readouterr().err  # QA: a failed run was left
    assert not any((tmp_path / n).exists() for n in "abcde")


@pytest.mark.slow
def test_each_fold_is_distilled_from_the_teacher_member_that_held_out_its_patches(cv_run, small_kaggle, tmp_path) -> None:
    """`pcam train --folds K --teacher T`: fold k learns from T's member k alone (which never saw fold k), so the
    cross-validated figures stay out-of-fold; the targets really change (same seed, other weights)."""
    from pcam_core.checkpoint import load_checkpoint
    from pcam_core.cli import main
    from pcam_core.runs import RunDir

    out = tmp_path / "student"
    assert main(["train", "--data", str(small_kaggle), "--out", str(out), *CV_ARGS, "--teacher", str(cv_run), "--distil", "0.7"]) == 0
    student, teacher = RunDir(out), RunDir(cv_run)
    for k in (0, 1):
        summary = student.fold(k).summary()
        assert f"member fold-{k}, which held out the same patches (fold {k + 1} of 2)" in summary["teacher"]
        assert not summary["warnings"]
        config = student.fold(k).config()
        assert (config.train.teacher, config.train.distil) == (str(cv_run.resolve()), 0.7)
    assert len(pd.read_csv(student.oof_predictions_path)) == 64  # a cross-validation like any other
    plain = load_checkpoint(teacher.fold(0).checkpoint("best"))["model"]  # same data, seed and recipe, no teacher
    taught = load_checkpoint(student.fold(0).checkpoint("best"))["model"]
    assert any(not torch.equal(plain[name], taught[name]) for name in plain if plain[name].is_floating_point())


def test_a_teacher_is_checked_before_a_run_is_made(tmp_path, real_kaggle) -> None:
    """`distil.check_teacher`, what the Train page and `Workspace.start_run` ask before making a folder: a missing
    teacher, one that is not a finished cross-validation for a cross-validation, or one cross-validated on a pool of
    another size (the bundled model's 4,000 real patches, for 160 of them) is refused; the patches of a pool of the
    same size are matched when each fold trains."""
    from pcam_core.config import ExperimentConfig
    from pcam_core.distil import check_teacher

    cv = ExperimentConfig().replace(data={"folds": 5, "path": str(real_kaggle)})
    with pytest.raises(ValueError, match=f"teacher bundled was cross-validated on other data: 4,000 patches, where the "
                                         f"pool of {real_kaggle} holds 160"):
        check_teacher(cv.replace(train={"teacher": "bundled"}))
    check_teacher(cv)  # no teacher
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ValueError, match=f"teacher {plain} is not a finished cross-validation .* held-out patches of each of the 5 folds"):
        check_teacher(cv.replace(train={"teacher": str(plain)}))
    check_teacher(ExperimentConfig().replace(train={"teacher": str(plain)}))  # a single run: taught, with a warning
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        check_teacher(cv.replace(train={"teacher": str(tmp_path / "missing")}))


@pytest.mark.slow
def test_a_teacher_that_saw_the_fold_is_refused_before_training(cv_run, small_kaggle, tmp_path, capsys) -> None:
    """A teacher whose members trained on a fold's held-out patches would leak their labels into its figures:
    another split seed, or a teacher that is not a cross-validation, is refused with the reason, nothing trained."""
    from pcam_core.cli import main
    from pcam_core.runs import RunDir

    other_folds = tmp_path / "seed1"
    assert main(["train", "--data", str(small_kaggle), "--out", str(other_folds), *CV_ARGS, "--split-seed", "1",
                 "--teacher", str(cv_run)]) != 0
    assert "lie in 2 folds of teacher" in capsys.readouterr().err
    assert not RunDir(other_folds).fold(0).last_checkpoint.exists()
    not_cv = tmp_path / "not-cv"
    assert main(["train", "--data", str(small_kaggle), "--out", str(not_cv), *CV_ARGS,
                 "--teacher", str(RunDir(cv_run).fold(0).path)]) != 0
    assert "is not a finished cross-validation" in capsys.readouterr().err


@pytest.mark.slow
def test_a_single_run_is_taught_by_the_whole_ensemble_and_says_its_figures_are_unchecked(cv_run, small_kaggle, tmp_path) -> None:
    from pcam_core.cli import main
    from pcam_core.runs import RunDir

    out = tmp_path / "single"
    assert main(["train", "--data", str(small_kaggle), "--out", str(out), "--epochs", "1", "--batch-size", "16",
                 "--workers", "0", "--teacher", str(cv_run)]) == 0
    summary = RunDir(out).summary()
    assert summary["teacher"] == str(cv_run.resolve())
    assert any("honest only if it never trained on this run's validation patches" in w for w in summary["warnings"])


@pytest.mark.slow
def test_a_fold_run_packaged_to_ship_predicts_as_it_did(cv_run, tmp_path) -> None:
    """scripts/package_run.py (how candidates/pcamscan is made): the weights it predicts with, its records and its
    guard and temperature, the data path replaced by a name; a folder holding a run is only replaced when asked."""
    from pcam_core.api import load_predictor
    from pcam_core.loading import run_threshold
    from pcam_core.runs import RunDir

    from helpers import random_patches

    fold = RunDir(cv_run).fold(0)
    script = [sys.executable, str(REPO / "scripts" / "package_run.py"), str(fold.path), str(tmp_path / "pkg"),
              "--data-name", "64 fixture patches"]
    done = subprocess.run(script, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    packaged = RunDir(tmp_path / "pkg")
    pixels = random_patches(8, seed=2)
    assert np.allclose(load_predictor(packaged.path, device="cpu").predict(pixels),
                       load_predictor(fold.path, device="cpu").predict(pixels), atol=1e-6)
    assert packaged.config().data.path == "64 fixture patches" and packaged.config().data.fold == 0
    assert run_threshold(packaged.path) == run_threshold(fold.path)
    records = {"summary.json", "epochs.jsonl", "calibration.json", "scope.npz", "valid_predictions.csv", "oof_predictions.csv"}
    kept = records & {p.name for p in fold.path.iterdir()}  # (64 patches fit no guard)
    assert kept >= {"summary.json", "epochs.jsonl", "valid_predictions.csv", "oof_predictions.csv"}
    assert kept <= {p.name for p in packaged.path.iterdir()}
    assert "optimizer" not in torch.load(packaged.best_checkpoint, weights_only=True)
    again = subprocess.run(script, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "give --replace" in again.stderr
    assert subprocess.run([*script, "--replace"], capture_output=True, text=True, timeout=120).returncode == 0
