"""Training a run folder in a separate process: the command, starting it detached, stopping it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from ..fileio import atomic_write_json
from .folder import ACTIVE_STATES, RunDir, cross_validation_folds
from .process import pid_alive, process_start_time, signal_quietly, spawn_detached


def train_command(run: RunDir, *, nproc: int = 1, resume: bool = False) -> list[str]:
    """The argv that trains `run` in a new process: `python -m pcam_core train`, through torchrun
    (`python -m torch.distributed.run`) when `nproc` > 1; with `--folds K` for a new run whose config asks for a
    cross-validation (`data.folds`; resumed, the trainer knows one by its `folds/` folder), whose `nproc` processes
    are then folds trained side by side (`--parallel-folds`), not torchrun's. No shell: user text never meets one."""
    args = ["-m", "pcam_core", "train", "--config", str(run.config_path), "--out", str(run.path)]
    folds = cross_validation_folds(run) if run.is_cross_validation or not resume else 0
    if resume:
        args.append("--resume")
    elif folds:
        args += ["--folds", str(folds)]
    if folds and nproc > 1:
        return [sys.executable, *args, "--parallel-folds", str(nproc)]
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return [sys.executable, *args]


def check_processes(nproc: int, folds: int = 0) -> None:
    """Refuse a number of training processes that cannot train a run (of `folds` cross-validation folds, 0: none;
    a cross-validation's processes are its folds trained side by side)."""
    if nproc < 1:
        raise ValueError(f"nproc={nproc} must be at least 1")
    if folds and nproc > folds:
        raise ValueError(f"a cross-validation of {folds} folds trains at most {folds} of them side by side, one process "
                         f"each, not {nproc}")


def process_count(run: RunDir) -> int:
    """How many processes `run` was trained with: what `launch` recorded in its status (`nproc`), else the
    world size the trainer wrote into its config (a run started from a terminal), else 1."""
    recorded = run.raw_status().get("nproc")
    if isinstance(recorded, int) and recorded >= 1:
        return recorded
    try:
        return run.config().world_size
    except (FileNotFoundError, ValueError):
        return 1


def gpu_count() -> int:
    """CUDA devices this process can use (0 without a GPU)."""
    import torch  # here only: nothing else in this module needs torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def max_processes() -> int:
    """The most training processes worth launching on this machine: one per GPU when there are GPUs,
    else one per CPU core this process may use."""
    if gpus := gpu_count():
        return gpus
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def launch(run: RunDir, *, nproc: int | None = None, resume: bool = False, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start training `run` as a detached background process (see `spawn_detached`) of `nproc`
    processes (through torchrun when more than one; default: 1 for a new run, on resume the number it
    was trained with, which the trainer requires). Its output goes to console.log. Returns the process.

    Unless the caller's environment says otherwise, OpenMP threads wait passively (OMP_WAIT_POLICY):
    spinning ones slow training several times over when anything else, a dashboard included, shares
    the CPU cores."""
    if nproc is None:
        nproc = process_count(run) if resume else 1
    check_processes(nproc, cross_validation_folds(run))
    status = run.status()
    if status.get("state") in ACTIVE_STATES and status.get("launcher_pid") and pid_alive(status["launcher_pid"]):
        raise RuntimeError(f"run {run.run_id} already has a live process (pid {status['launcher_pid']})")
    run.path.mkdir(parents=True, exist_ok=True)
    child_env = dict(env or {})
    if nproc > 1 and "OMP_NUM_THREADS" not in {**os.environ, **child_env}:
        child_env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    if "OMP_WAIT_POLICY" not in {**os.environ, **child_env}:
        child_env["OMP_WAIT_POLICY"] = "PASSIVE"
    proc = spawn_detached(train_command(run, nproc=nproc, resume=resume), run.console_path, env=child_env)
    current = run.raw_status()
    current.update(
        state="queued", launcher_pid=proc.pid, launcher_pid_start=process_start_time(proc.pid),
        host=socket.gethostname(), nproc=nproc, updated_at=time.time(), message=None, error=None,
    )
    current.pop("pid", None)
    atomic_write_json(run.status_path, current)
    return proc


def stop(run: RunDir, *, timeout: float = 0.0) -> bool:
    """Ask the run's processes to stop cleanly (SIGTERM: the trainer saves a checkpoint and writes
    "stopped"). Returns False when nothing was running. With `timeout`, waits that long for the end."""
    status = run.status()
    if status.get("state") not in ACTIVE_STATES:
        return False
    launcher, trainer = status.get("launcher_pid"), status.get("pid")
    if launcher and pid_alive(launcher, status.get("launcher_pid_start")):
        # `launch` made the launcher a session (and process group) leader: signal the whole group,
        # so torchrun and every rank hear it.
        signal_quietly(lambda: os.killpg(launcher, signal.SIGTERM))
    elif trainer and pid_alive(trainer, status.get("pid_start")):
        signal_quietly(lambda: os.kill(trainer, signal.SIGTERM))  # started from a terminal: that process only
    else:
        return False
    deadline = time.time() + timeout
    while timeout and time.time() < deadline:
        if run.status().get("state") not in ACTIVE_STATES:
            break
        time.sleep(0.2)
    return True
