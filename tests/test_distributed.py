"""DistributedDataParallel on the CPU (gloo): torchrun with 2 processes, resume, a 2-"node" rendezvous."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from helpers import REPO, cli_here, wait_for
from pcam_core.checkpoint import load_checkpoint
from pcam_core.config import ExperimentConfig
from pcam_core.runs import RunDir, create_run, launch, stop

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(data, out, *extra) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--epochs", "2", "--batch-size", "16", "--workers", "0", "--seed", "3",
            *extra]


def _train(data, out, *, nproc: int, extra=()):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "pcam_core",
           *_train_args(data, out, *extra)]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)


def test_one_and_two_processes_reach_comparable_auc(small_demo, tmp_path, capsys):
    one = cli_here(capsys, *_train_args(small_demo, tmp_path / "one"))  # one process: this one
    two = _train(small_demo, tmp_path / "two", nproc=2, extra=["--batch-size", "8"])  # 2 x 8: the same global batch of 16
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    r1, r2 = RunDir(tmp_path / "one"), RunDir(tmp_path / "two")
    c2 = r2.config()
    assert c2.world_size == 2 and c2.global_batch_size == 16 == r1.config().global_batch_size
    assert r2.status()["world_size"] == 2 and r2.status()["state"] == "finished"
    e1, e2 = r1.epochs(), r2.epochs()
    assert [e["epoch"] for e in e2] == [1, 2]  # rank 0 alone writes: one line per epoch
    assert e2[-1]["n"] == 128  # validation metrics come from every rank's predictions, gathered
    auc1, auc2 = max(e["roc_auc"] for e in e1), max(e["roc_auc"] for e in e2)
    assert auc1 > 0.8 and auc2 > 0.8 and abs(auc1 - auc2) < 0.1
    assert two.stdout.count("finished two") == 1  # one voice under torchrun
    # distillation under torchrun: each rank scores the teacher on the whole training set and takes its batches' targets
    # by their dataset indices (DistributedSampler's); the same run as `two` but taught by `one`
    # (its first 10 steps: the step line of step 10 is compared with `two`'s, which trained the same batches untaught)
    taught = _train(small_demo, tmp_path / "taught", nproc=2,
                    extra=["--batch-size", "8", "--teacher", str(tmp_path / "one"), "--max-steps", "10"])
    assert taught.returncode == 0, taught.stderr
    r3 = RunDir(tmp_path / "taught")
    assert r3.status()["state"] == "finished" and r3.summary()["teacher"] == str((tmp_path / "one").resolve())
    assert r3.warnings() == [w for w in r3.summary()["warnings"]] and len(r3.warnings()) == 1  # said once, not per rank
    assert r3.log_tail(400).count("distilling from") == 1  # rank 0 logs; both ranks scored
    plain, distilled = (next(s for s in r.steps() if s["step"] == 10) for r in (r2, r3))
    assert distilled["loss"] != plain["loss"]  # the same batches, the teacher's targets


def test_stop_and_resume_with_two_processes(small_demo, tmp_path, capsys):
    # 12 steps an epoch (384 patches, 2 x 16), each logged: the stop comes early in the first epoch
    config = ExperimentConfig().replace(data={"path": str(small_demo), "num_workers": 0},
                                        train={"batch_size": 16, "epochs": 2, "log_every": 1})
    run = create_run(tmp_path, config, run_id="ddp")
    proc = launch(run, nproc=2, env={"OMP_NUM_THREADS": "1"})
    wait_for(run.steps, timeout=180, every=0.3)
    assert run.status()["state"] == "running"
    assert stop(run, timeout=120)
    proc.wait(timeout=60)
    assert run.status()["state"] == "stopped"
    assert load_checkpoint(run.last_checkpoint)["step_in_epoch"] > 0
    # resumed by one process, the stopped two-process run is refused: its data shards would not match
    wrong = cli_here(capsys, "train", "--out", str(run.path), "--resume")
    assert wrong.returncode == 2 and "resume it with the same number" in wrong.stderr
    proc = launch(run, nproc=2, resume=True, env={"OMP_NUM_THREADS": "1"})
    assert proc.wait(timeout=600) == 0, run.log_tail(console=True)
    assert run.status()["state"] == "finished"
    assert [e["epoch"] for e in run.epochs()] == [1, 2]
    assert load_checkpoint(run.last_checkpoint)["global_step"] == 2 * (384 // 32)  # no step lost or repeated
    finished = subprocess.run([sys.executable, "-m", "pcam_core", "train", "--out", str(run.path), "--resume"],
                              capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
    assert finished.returncode == 2 and "has finished training" in finished.stderr


def test_two_node_rendezvous_on_localhost(small_demo, tmp_path):
    """Two "nodes" (one process each) meet through the c10d rendezvous on 127.0.0.1, as on a cluster."""
    port = _free_port()
    out = tmp_path / "multinode"
    procs = []
    for node_rank in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", f"--node_rank={node_rank}",
               "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=pcam-test",
               "-m", "pcam_core", "train", "--data", str(small_demo), "--out", str(out), "--epochs", "1",
               "--max-steps", "4", "--batch-size", "16", "--workers", "0"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO))
    results = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1][-2000:] for r in results]
    run = RunDir(out)
    assert run.status()["state"] == "finished" and run.status()["world_size"] == 2
    assert run.config().global_batch_size == 32
