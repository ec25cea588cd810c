"""pcam_core.workspace.monitor: progress and time left from a run's records, the runs table, learning curves."""

from __future__ import annotations

import time

import shutil

import pandas as pd
import pytest

from pcam_core.workspace.monitor import (
    CURVE_METRICS,
    epoch_frame,
    folds_progress,
    format_duration,
    progress_key,
    run_caption,
    run_progress,
    runs_table,
    state_counts,
    step_frame,
)
from helpers import TRAINED_EPOCHS, running_run
from pcam_core.config import ExperimentConfig
from pcam_core.fileio import append_jsonl
from pcam_core.runs import RunDir, create_run, list_runs


def test_format_duration():
    assert format_duration(None) == "-" and format_duration(float("nan")) == "-" and format_duration(-1) == "-"
    assert format_duration(42.4) == "42 s"
    assert format_duration(187) == "3 min 07 s"
    assert format_duration(2 * 3600 + 5 * 60 + 9) == "2 h 05 min"


def _steps(start: float, rate: float, upto: int, every: int = 10) -> list[dict]:
    return [{"step": s, "time": start + s / rate, "loss": 1.0 / s, "images_per_s": rate * 64} for s in range(every, upto + 1, every)]


def test_progress_of_a_first_epoch_uses_the_step_rate():
    status = {"state": "running", "step": 50, "total_steps": 200, "epoch": 0, "epochs": 4, "steps_per_epoch": 50,
              "started_at": 1000.0}
    p = run_progress(status, _steps(1000.0, 2.0, 50), [], now=1030.0)
    assert p.fraction == pytest.approx(0.25)
    assert p.eta_s == pytest.approx(150 / 2.0)  # 150 steps left at 2 steps/s
    assert p.elapsed_s == pytest.approx(30.0) and p.images_per_s == pytest.approx(128.0)
    assert p.text.startswith("epoch 1 of 4 · step 50 of 200 · about 1 min 15 s left")


def test_progress_after_an_epoch_includes_validation_time():
    status = {"state": "running", "step": 75, "total_steps": 200, "epoch": 1, "epochs": 4, "steps_per_epoch": 50,
              "started_at": 1000.0}
    epochs = [{"epoch": 1, "epoch_seconds": 40.0, "time": 1040.0}]  # 25 s of steps + 15 s of validation
    p = run_progress(status, _steps(1000.0, 2.0, 75), epochs, now=1055.0)
    assert p.eta_s == pytest.approx(125 / 50 * 40.0)


def test_progress_ignores_records_from_before_a_resume():
    status = {"state": "running", "step": 120, "total_steps": 200, "epoch": 2, "epochs": 4, "steps_per_epoch": 50,
              "started_at": 5000.0}
    old = _steps(1000.0, 0.1, 100) + [{"step": 110, "time": 5005.0}, {"step": 120, "time": 5010.0}]
    epochs = [{"epoch": 1, "epoch_seconds": 900.0, "time": 1500.0}, {"epoch": 2, "epoch_seconds": 900.0, "time": 2000.0}]
    p = run_progress(status, old, epochs, now=5010.0)
    assert p.eta_s == pytest.approx(80 / 2.0)  # the new pace (2 steps/s), not the old epochs'


def test_progress_of_other_states():
    assert run_progress({"state": "queued"}, [], []).text == "starting the training process..."
    finished = run_progress({"state": "finished", "step": 64, "total_steps": 64, "epoch": 2, "epochs": 2,
                             "started_at": 0.0, "finished_at": 95.0}, [], [])
    assert finished.fraction == 1.0 and finished.eta_s is None
    assert finished.text == "epoch 2 of 2 · step 64 of 64 · finished after 1 min 35 s"
    # a run too short to log a step line (`train.log_every` steps): its last epoch's pace and mean loss, not "-"
    short = run_progress({"state": "finished", "step": 6, "total_steps": 6, "epoch": 3, "epochs": 3, "started_at": 0.0,
                          "finished_at": 9.0}, [], [{"epoch": 3, "time": 8.0, "train_images_per_s": 96.5, "train_loss": 0.41}])
    assert short.images_per_s == 96.5 and short.train_loss == 0.41
    logged = run_progress({"state": "running", "step": 20, "total_steps": 40, "epoch": 1, "epochs": 2, "started_at": 0.0},
                          [{"step": 10, "time": 1.0, "loss": 0.6}, {"step": 20, "time": 2.0, "loss": 0.5}],
                          [{"epoch": 1, "time": 1.5, "train_loss": 0.55}])
    assert logged.train_loss == 0.5  # the latest step line's
    stopped = run_progress({"state": "stopped", "step": 10, "total_steps": 40, "epoch": 0, "epochs": 2}, [], [])
    assert stopped.fraction == 0.25 and stopped.text.endswith("stopped")


def _fold(state: str, step: int, started: float, ended: float | None = None) -> dict:
    """A fold run's status: 4 epochs of 50 steps."""
    return {"state": state, "step": step, "total_steps": 200, "epoch": step // 50, "epochs": 4, "steps_per_epoch": 50,
            "started_at": started, **({"finished_at": ended} if ended is not None else {})}


def test_a_cross_validation_counts_every_fold_and_times_the_ones_left_by_the_ones_done():
    """Fold 1 took 400 s; fold 2 is a quarter done, 150 steps left at 2 steps/s: 75 s + 3 folds of 400 s are left."""
    done = run_progress(_fold("finished", 200, 0.0, 400.0), [], [])
    under_way = run_progress(_fold("running", 50, 1000.0), _steps(1000.0, 2.0, 50), [], now=1025.0)
    p = folds_progress({"state": "running", "fold": 2}, [done, under_way], 5)
    assert p.fraction == pytest.approx((1 + 0.25) / 5)
    assert p.eta_s == pytest.approx(75 + 3 * 400)
    assert p.elapsed_s == pytest.approx(400 + 25)
    assert p.text == "fold 2 of 5 · epoch 2 of 4 · about 21 min 15 s left in all · training for 7 min 05 s"


def test_a_first_fold_projects_its_own_length_and_a_trained_fold_is_scored():
    first = run_progress(_fold("running", 100, 0.0), _steps(0.0, 1.0, 100), [], now=100.0)
    assert folds_progress({"state": "running", "fold": 1}, [first], 2).eta_s == pytest.approx(100 + 200)  # 100 s left + 1 fold of 200 s
    trained = run_progress(_fold("finished", 200, 0.0, 200.0), [], [])
    scoring = folds_progress({"state": "running", "fold": 2}, [trained, trained], 2)
    assert scoring.text == "fold 2 of 2 · scoring its held-out patches, then the ensemble's figures · training for 6 min 40 s"
    assert folds_progress({"state": "running", "fold": 1}, [trained], 2).text.startswith("fold 1 of 2 · scoring its held-out patches ·")


def test_folds_side_by_side_share_the_time_left_and_say_what_each_is_doing():
    """Folds 1 and 2 of 5 side by side (`pcam train --parallel-folds 2`): fold 1 has 100 s left, fold 2 trained in 150 s
    and is being scored; the 3 folds to come at 150 s each, two at a time: (100 + 0 + 3 x 150) / 2 = 275 s left. The
    job's own time is its wall clock, not the sum of its folds'."""
    one = run_progress(_fold("running", 100, 0.0), _steps(0.0, 1.0, 100), [], now=100.0)
    two = run_progress(_fold("finished", 200, 0.0, 150.0), [], [])
    status = {"state": "running", "fold": 1, "folds_running": [1, 2], "parallel_folds": 2, "started_at": time.time() - 125.0}
    p = folds_progress(status, [one, two], 5)
    assert p.side_by_side and p.fold == 1 and p.current is one
    assert p.eta_s == pytest.approx(275.0)
    assert p.elapsed_s == pytest.approx(125.0, abs=5.0)
    assert p.text.startswith("folds 1 and 2 of 5 side by side · fold 1 at epoch 3 of 4, fold 2 scoring its held-out patches · "
                             "about 4 min 35 s left in all · training for 2 min")
    # stopped side by side: both folds named where they stopped, the time the folds' added up; one not yet told its
    # epochs is starting
    fresh = run_progress({"state": "stopped", "started_at": 0.0, "finished_at": 5.0}, [], [])
    halted = folds_progress({**status, "state": "stopped"}, [one, fresh], 5)
    assert halted.text == ("folds 1 and 2 of 5 side by side · fold 1 at epoch 3 of 4, fold 2 starting · stopped after "
                           "1 min 45 s (the folds' times added up)")
    done = folds_progress({"state": "finished", "folds_running": [], "parallel_folds": 2}, [two, two], 2)
    assert done.text == "2 folds finished after 5 min 00 s of training (the folds' times added up)"
    # the last fold alone: said as one after another, the time still the job's wall clock
    alone = folds_progress({**status, "folds_running": [1]}, [one, two], 2)
    assert not alone.side_by_side and alone.eta_s == pytest.approx(100.0) and alone.elapsed_s == pytest.approx(125.0, abs=5.0)
    assert alone.text.startswith("fold 1 of 2 · epoch 3 of 4 · about 1 min 40 s left in all · training for 2 min")


def test_a_cross_validation_before_its_first_fold_after_its_last_and_stopped():
    assert folds_progress({"state": "queued"}, [], 3).text == "starting the cross-validation..."
    trained = run_progress(_fold("finished", 200, 0.0, 200.0), [], [])
    finished = folds_progress({"state": "finished", "fold": 2}, [trained, trained], 2)
    assert finished.fraction == 1.0 and finished.eta_s is None
    assert finished.text == "2 folds finished after 6 min 40 s of training"
    halted = run_progress(_fold("stopped", 60, 0.0, 30.0), [], [])
    stopped = folds_progress({"state": "stopped", "fold": 2}, [trained, halted], 3)
    assert stopped.text == "fold 2 of 3 · epoch 2 of 4 · stopped after 3 min 50 s" and stopped.eta_s is None


def test_a_run_stopped_mid_epoch_names_the_epoch_it_was_in():
    """The progress line counts the epoch the run stopped in from 1, as the trainer's stop message does
    ("stopped on request ... at epoch 2 of 2, step 219 of 438")."""
    stopped = run_progress({"state": "stopped", "step": 219, "total_steps": 438, "epoch": 1, "epochs": 2,
                            "steps_per_epoch": 219, "message": "stopped on request at epoch 2 of 2"}, [], [])
    assert stopped.text.startswith("epoch 2 of 2 · step 219 of 438 · stopped")
    interrupted = run_progress({"state": "interrupted", "step": 5, "total_steps": 438, "epoch": 0, "epochs": 2}, [], [])
    assert interrupted.text.startswith("epoch 1 of 2")


def test_a_running_run_reads_alike_in_the_table_the_caption_and_its_progress(tmp_path):
    path = running_run(tmp_path, "live", epochs=3, best={"roc_auc": 0.7})
    [summary] = list_runs(tmp_path)
    progress = run_progress(RunDir(path).status(), RunDir(path).steps(), RunDir(path).epochs())
    assert summary.state == "running" and progress.text.startswith("epoch 2 of 3 · ")
    assert runs_table([summary]).iloc[0]["epochs"] == "epoch 2 of 3"
    assert run_caption(summary).endswith("running · pcamnet · epoch 2 of 3 · best ROC-AUC 0.700")
    # an epoch ends with a better model: what the page drew is out of date
    drawn = progress_key(summary)
    assert progress_key(list_runs(tmp_path)[0]) == drawn
    append_jsonl(RunDir(path).epochs_path, {"epoch": 2, "roc_auc": 0.8, "is_best": True})
    [after] = list_runs(tmp_path)
    assert progress_key(after) != drawn
    assert run_caption(after).endswith("epoch 3 of 3 · best ROC-AUC 0.800")
    nan = {"epoch": 3, "roc_auc": float("nan"), "is_best": True}  # one class only in validation: no ROC-AUC
    append_jsonl(RunDir(path).epochs_path, nan)
    assert progress_key(list_runs(tmp_path)[0]) == progress_key(list_runs(tmp_path)[0])  # else a page redraws forever


def test_runs_table_and_curves(trained_run, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(trained_run, root / "a")
    summaries = list_runs(root)
    table = runs_table(summaries, {summaries[0].data: "demo"})
    row = table.iloc[0]
    assert row["run"] == "a" and row["state"].endswith("finished") and row["data"] == "demo"
    assert bool(row["synthetic data"]) and row["epochs"] == f"{TRAINED_EPOCHS}/{TRAINED_EPOCHS}" and row["ROC-AUC"] > 0.8
    assert isinstance(row["created"], pd.Timestamp)
    assert state_counts(summaries) == {"finished": 1}
    assert runs_table([]).empty
    create_run(root, ExperimentConfig(), run_id="b")  # queued: no figure yet
    queued = runs_table(list_runs(root)).set_index("run").loc["b"]
    assert pd.isna(queued["ROC-AUC"]) and pd.isna(queued["best epoch"])  # missing, not the text "None"
    assert runs_table(list_runs(root))["ROC-AUC"].dtype == float
    frame = epoch_frame({"a": RunDir(root / "a").epochs()})
    assert frame["epoch"].tolist() == list(range(1, TRAINED_EPOCHS + 1)) and set(CURVE_METRICS) <= set(frame.columns)
    steps = step_frame([{"step": 10, "loss": 0.7}, {"step": 20, "loss": 0.5}], steps_per_epoch=20)
    assert steps["epoch"].tolist() == [0.5, 1.0]
