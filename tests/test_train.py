"""pcam_core.train: a real short run, the run folder contract, exact resume, faults that stop a run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import REPO, TRAINED_EPOCHS, cli_here, wait_for
from pcam_core.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from pcam_core.config import ExperimentConfig
from pcam_core.models import create_model
from pcam_core.workspace.monitor import run_progress
from pcam_core.optim import build_optimizer, build_scheduler
from pcam_core.runs import RunDir


def test_short_run_beats_chance_and_fills_the_run_folder(trained_run):
    run = RunDir(trained_run)
    status = run.status()
    assert status["state"] == "finished" and status["world_size"] == 1 and status["device"] == "cpu"
    epochs = run.epochs()
    assert [e["epoch"] for e in epochs] == list(range(1, TRAINED_EPOCHS + 1))
    for key in ("roc_auc", "pr_auc", "accuracy", "precision", "recall", "f1", "ece", "confusion", "loss", "train_loss"):
        assert key in epochs[-1]
    assert max(e["roc_auc"] for e in epochs) > 0.8  # chance is 0.5
    assert run.steps() and all(np.isfinite(s["loss"]) for s in run.steps())
    assert all(e["train_images_per_s"] > 0 for e in epochs)  # the pace of a run too short to log a step line
    config = run.config()
    assert config.model.name == "pcamnet"  # "auto" resolved and recorded
    for path in (run.best_checkpoint, run.last_checkpoint):
        payload = load_checkpoint(path)  # weights_only=True
        assert ExperimentConfig.from_dict(payload["config"]) == config
    model, _, info = model_from_checkpoint(run.best_checkpoint)
    assert not model.training and info["best"]["epoch"] == run.best_epoch()["epoch"]
    preds = run.valid_predictions_path.read_text().splitlines()
    assert preds[0] == "id,label,probability,index" and len(preds) == 257
    summary = run.summary()
    assert summary["synthetic_data"] is True and summary["ended_by"] == "finished"
    assert "SYNTHETIC" in (trained_run / "train.log").read_text() or summary["synthetic_data"]


def _train_args(data, out, *extra):
    """Two epochs of 24 steps on the small demo set (384 training patches, batch 16)."""
    return [sys.executable, "-m", "pcam_core", "train", "--data", str(data), "--out", str(out), "--epochs", "2",
            "--batch-size", "16", "--workers", "0", "--seed", "5", *extra]


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_resume_continues_exactly(small_demo, tmp_path, capsys):
    # reference: the same run without interruption (in this process: the same single thread as the one stopped)
    ref = tmp_path / "ref"
    assert cli_here(capsys, *_train_args(small_demo, ref)[3:]).returncode == 0
    # interrupted: SIGTERM in the middle of the first epoch, then --resume
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(_train_args(small_demo, out, "--max-steps", "1000"), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run = RunDir(out)
    assert wait_for(lambda: run.steps() and run.steps()[-1]["step"] >= 10)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    status = run.status()
    assert status["state"] == "stopped" and status["message"].startswith("stopped on request") and "at epoch 1 of 2, step " in status["message"]
    ckpt = load_checkpoint(run.last_checkpoint)
    assert ckpt["epoch"] == 0 and 10 <= ckpt["step_in_epoch"] < 24  # stopped mid-epoch with its position
    before_resume = ckpt["elapsed"]  # training seconds of the first segment
    assert before_resume > 0
    result = cli_here(capsys, "train", "--out", str(out), "--resume")
    assert result.returncode == 0, result.stderr
    status = run.status()
    assert status["state"] == "finished"
    # the time reported covers both segments, not only the one after the resume
    progress = run_progress(status, run.steps(), run.epochs())
    second = status["finished_at"] - status["started_at"]
    assert progress.elapsed_s == pytest.approx(before_resume + second)
    # the training seconds of both segments: more than the first's, within the wall time of the two (which also holds
    # the resumed process's start and the fit after training)
    assert before_resume < run.summary()["train_seconds"] <= progress.elapsed_s
    a, b = load_checkpoint(ref / "checkpoints" / "last.pt"), load_checkpoint(run.last_checkpoint)
    assert a["global_step"] == b["global_step"] == 48
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key  # bit-identical to the uninterrupted run
    ref_epochs, epochs = RunDir(ref).epochs(), run.epochs()
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert [e["roc_auc"] for e in epochs] == [e["roc_auc"] for e in ref_epochs]
    # the resumed epoch's train loss averages every step of the epoch, those before the stop included
    assert [e["train_loss"] for e in epochs] == pytest.approx([e["train_loss"] for e in ref_epochs], abs=1e-6)
    steps = [s["step"] for s in run.steps()]
    assert steps == sorted(set(steps))  # every logged step once


@pytest.mark.slow
def test_resume_refuses_a_running_or_missing_run(tmp_path, capsys):
    result = cli_here(capsys, "train", "--out", str(tmp_path / "nothing"), "--resume")
    assert result.returncode == 2 and "not a run folder" in result.stderr


@pytest.mark.slow
def test_out_dir_that_is_not_empty_is_refused(demo_root, tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    result = cli_here(capsys, "train", "--data", str(demo_root), "--out", str(tmp_path / "busy"), "--epochs", "1")
    assert result.returncode == 2 and "not empty" in result.stderr
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_non_finite_loss_stops_the_run_with_the_reason(small_demo, tmp_path, capsys):
    out = tmp_path / "nan"
    result = cli_here(capsys, "train", "--data", str(small_demo), "--out", str(out), "--epochs", "1", "--batch-size", "32",
                     "--workers", "0", "--pos-weight", "1e38")
    assert result.returncode == 2
    assert "loss became inf" in result.stderr and "Traceback" not in result.stderr
    status = RunDir(out).status()
    assert status["state"] == "failed" and "NonFiniteLoss: loss became inf" in status["error"]


@pytest.mark.slow
def test_failed_checkpoint_write_keeps_the_previous_checkpoint(small_demo, tmp_path):
    """A real write failure: the resumed process may not write files larger than 1 MB (RLIMIT_FSIZE,
    as when a disk fills up), so every checkpoint write fails with EFBIG."""
    out = tmp_path / "full"
    proc = subprocess.Popen(_train_args(small_demo, out), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = RunDir(out)
    assert wait_for(lambda: len(run.epochs()) == 1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    before = (out / "checkpoints" / "last.pt").read_bytes()
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1

    def limit():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    resumed = subprocess.run([sys.executable, "-m", "pcam_core", "train", "--out", str(out), "--resume"],
                             capture_output=True, text=True, cwd=REPO, preexec_fn=limit, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "checkpoints" / "last.pt").read_bytes() == before  # untouched and still loadable
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1
    assert run.status()["state"] == "finished" and len(run.epochs()) == 2
    assert any("could not write checkpoint" in w for w in run.summary()["warnings"])
    assert "could not write checkpoint" in (out / "train.log").read_text()
    assert "could not write checkpoint" in resumed.stderr


@pytest.mark.slow
def test_amp_path_runs_on_the_cpu(real_h5, tmp_path, capsys):
    """The mixed-precision code path (bf16 autocast on the CPU; on CUDA it is the default). bf16 is emulated on most
    CPUs, many times slower than float32: a few steps on the 96 + 32 real fixture patches are enough to run the path."""
    out = tmp_path / "amp"
    result = cli_here(capsys, "train", "--data", str(real_h5), "--out", str(out), "--epochs", "1", "--batch-size", "16",
                     "--workers", "0", "--amp", "--max-steps", "2", "--optimizer", "adam", "--schedule", "cosine")
    assert result.returncode == 0, result.stderr
    epochs = RunDir(out).epochs()
    assert len(epochs) == 1 and np.isfinite(epochs[0]["loss"])
    assert json.loads((out / "config.json").read_text())["train"]["amp"] is True


@pytest.mark.slow
def test_mixup_trains_and_is_recorded(real_h5, tmp_path, capsys):
    out = tmp_path / "mixup"
    result = cli_here(capsys, "train", "--data", str(real_h5), "--out", str(out), "--epochs", "1", "--batch-size", "16",
                     "--workers", "0", "--mixup", "0.4", "--max-steps", "2")
    assert result.returncode == 0, result.stderr
    epochs = RunDir(out).epochs()
    assert len(epochs) == 1 and np.isfinite(epochs[0]["loss"])
    assert json.loads((out / "config.json").read_text())["augment"]["mixup"] == 0.4


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "created-by-pickle"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "pcam_core.checkpoint/1", "model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.slow
def test_resume_with_more_epochs_extends_a_finished_run(small_demo, tmp_path, capsys):
    out = tmp_path / "extend"
    args = ["--data", str(small_demo), "--out", str(out), "--batch-size", "32", "--workers", "0", "--seed", "3"]
    assert cli_here(capsys, "train", *args, "--epochs", "1").returncode == 0
    run = RunDir(out)
    steps_per_epoch = run.status()["steps_per_epoch"]
    end_of_first = run.epochs()[0]["lr"]
    assert end_of_first < run.config().train.lr / 10  # the one-cycle schedule annealed
    result = cli_here(capsys, "train", "--out", str(out), "--resume", "--epochs", "2")
    assert result.returncode == 0, result.stderr
    assert "finished extend: 2 epochs" in result.stdout
    assert run.config().train.epochs == 2 and run.status()["epochs"] == 2  # config.json records the new count
    assert [e["epoch"] for e in run.epochs()] == [1, 2] and run.summary()["global_step"] == 2 * steps_per_epoch
    # the schedule was rebuilt for two epochs and continued where the first ended: the rate rose again, then
    # annealed; every rate of the second epoch is the one of a two-epoch schedule at that step
    config = run.config().train
    reference = build_scheduler(build_optimizer(create_model("pcamnet"), config), config, 2 * steps_per_epoch)
    rates = {}
    for step in range(1, 2 * steps_per_epoch + 1):
        reference.optimizer.step()  # no gradients: changes nothing, but keeps the order torch expects
        reference.step()
        rates[step] = reference.get_last_lr()[0]
    second = [(s["step"], s["lr"]) for s in run.steps() if s["step"] > steps_per_epoch]
    assert second and all(lr == pytest.approx(rates[step]) for step, lr in second)
    assert second[0][1] > end_of_first
    assert run.epochs()[1]["lr"] == pytest.approx(rates[2 * steps_per_epoch])
    assert load_checkpoint(run.last_checkpoint)["scheduler"]["total_steps"] == 2 * steps_per_epoch
    # fewer epochs than already trained: refused, with nothing changed
    result = cli_here(capsys, "train", "--out", str(out), "--resume", "--epochs", "1")
    assert result.returncode == 2 and "already trained 2 epoch(s)" in result.stderr, result.stderr
    assert run.config().train.epochs == 2 and run.status()["state"] == "finished"
