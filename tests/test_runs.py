"""pcam_core.runs: run folders, ids, status of dead processes, launching and stopping real processes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from helpers import TRAINED_EPOCHS, wait_for
from pcam_core.config import ExperimentConfig
from pcam_core.fileio import atomic_write_json
from pcam_core.runs import (
    RunDir,
    check_run_id,
    create_run,
    launch,
    list_runs,
    max_processes,
    process_count,
    run_path,
    stop,
    summarize,
    train_command,
)


def _config(demo_root, **train):
    return ExperimentConfig().replace(data={"path": str(demo_root), "num_workers": 0}, train={"batch_size": 32, **train})


@pytest.mark.parametrize("bad", ["../escape", "a/b", "..", ".hidden", "", "x" * 200, "a\\b", "/abs"])
def test_run_ids_cannot_reach_outside_the_runs_folder(tmp_path, bad):
    with pytest.raises(ValueError, match="invalid run id"):
        run_path(tmp_path, bad)


def test_valid_run_ids():
    assert check_run_id("20260101-120000-pcamnet-a1b2c3") == "20260101-120000-pcamnet-a1b2c3"


def test_simultaneous_creation_gives_separate_runs(tmp_path, demo_root):
    config = _config(demo_root)
    made, barrier = [], threading.Barrier(8)

    def create():
        barrier.wait()
        made.append(create_run(tmp_path, config).path)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 8
    assert all(RunDir(p).status()["state"] == "queued" for p in made)
    assert len(list_runs(tmp_path)) == 8


@pytest.mark.slow  # a Python process of its own
def test_dead_process_reads_as_interrupted(tmp_path, demo_root):
    run = create_run(tmp_path, _config(demo_root), run_id="ghost")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    atomic_write_json(run.status_path, {"state": "running", "pid": proc.pid, "heartbeat": time.time(), "host": None})
    assert run.status()["state"] == "running"
    proc.kill()
    proc.wait()
    status = run.status()
    assert status["state"] == "interrupted" and "resume" in status["message"]


def test_stale_heartbeat_reads_as_interrupted(tmp_path, demo_root):
    run = create_run(tmp_path, _config(demo_root), run_id="stale")
    atomic_write_json(run.status_path, {"state": "running", "pid": None, "heartbeat": time.time() - 3600, "host": "elsewhere"})
    assert run.status()["state"] == "interrupted"


@pytest.mark.slow
def test_launch_runs_in_the_background_and_stop_saves_a_checkpoint(tmp_path, demo_root):
    run = create_run(tmp_path, _config(demo_root, epochs=50), run_id="bg")
    proc = launch(run)
    wait_for(run.steps, timeout=120)
    assert run.status()["state"] == "running"
    assert run.status()["pid"] == proc.pid
    assert stop(run, timeout=60)
    status = run.status()
    assert status["state"] == "stopped", status
    assert run.last_checkpoint.exists()
    assert proc.wait(timeout=30) == 0
    assert not stop(run)  # nothing left to stop
    # and the Resume path: launching again with resume continues from the checkpoint
    proc = launch(run, resume=True)
    wait_for(lambda: run.status()["state"] == "running", timeout=180)
    assert stop(run, timeout=60)
    proc.wait(timeout=30)
    assert "resumed from" in run.log_path.read_text()


def test_launch_refuses_a_second_process_for_a_live_run(tmp_path, demo_root):
    run = create_run(tmp_path, _config(demo_root, epochs=50), run_id="twice")
    launch(run)
    try:
        with pytest.raises(RuntimeError, match="already has a live process"):
            launch(run)
    finally:
        stop(run, timeout=60)


def test_train_command_uses_torchrun_for_several_processes(tmp_path):
    run = RunDir(tmp_path / "r")
    single = train_command(run)
    multi = train_command(run, nproc=2, resume=True)
    assert single[1:4] == ["-m", "pcam_core", "train"]
    assert multi[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node=2" in multi and "--resume" in multi


def test_a_cross_validation_is_launched_with_its_folds_and_its_processes_train_folds_side_by_side(tmp_path, demo_root):
    run = create_run(tmp_path, _config(demo_root).replace(data={"folds": 3}), run_id="cv")
    epochs = run.config().train.epochs
    assert run.status()["state"] == "queued" and summarize(run).epochs_total == 3 * epochs  # its folds', before folds/ exists
    command = train_command(run)
    assert command[command.index("--folds") + 1] == "3"  # the trainer cross-validates a new run only when told
    assert "--parallel-folds" not in command and "torch.distributed.run" not in command
    assert "--folds" not in train_command(run, resume=True)  # resumed, it knows one by its folds/ folder
    assert "--folds" not in train_command(create_run(tmp_path, _config(demo_root), run_id="single"))
    side_by_side = train_command(run, nproc=2)  # a cross-validation's processes are folds, not torchrun's ranks
    assert side_by_side[1:4] == ["-m", "pcam_core", "train"] and "torch.distributed.run" not in side_by_side
    assert side_by_side[side_by_side.index("--parallel-folds") + 1] == "2" and "--folds" in side_by_side
    run.folds_dir.mkdir()  # the job has started: resumed, it keeps the folds side by side
    resumed = train_command(run, nproc=2, resume=True)
    assert "--resume" in resumed and resumed[resumed.index("--parallel-folds") + 1] == "2" and "--folds" not in resumed
    with pytest.raises(ValueError, match="a cross-validation of 3 folds trains at most 3 of them side by side, one process each, not 4"):
        launch(run, nproc=4)
    assert run.raw_status()["state"] == "queued" and "launcher_pid" not in run.raw_status()  # nothing started


def test_process_count_of_a_run_for_resuming(tmp_path, demo_root):
    run = create_run(tmp_path, _config(demo_root), run_id="r")
    assert process_count(run) == 1  # a new run
    atomic_write_json(run.config_path, {**json.loads(run.config_path.read_text()), "world_size": 4})
    assert process_count(run) == 4  # trained from a terminal: the world size the trainer recorded
    atomic_write_json(run.status_path, {**run.raw_status(), "nproc": 2})
    assert process_count(run) == 2  # launched by `launch`: what it recorded
    assert max_processes() >= 1
    with pytest.raises(ValueError, match="at least 1"):
        launch(run, nproc=0)


def test_list_runs_reports_best_metrics(trained_run):
    (summary,) = [r for r in list_runs(trained_run.parent) if r.run_id == trained_run.name]
    assert summary.state == "finished" and summary.epochs_done == TRAINED_EPOCHS and summary.model == "pcamnet"
    assert summary.best["roc_auc"] > 0.8
    json.dumps(summary.to_dict())
