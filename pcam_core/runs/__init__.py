"""Runs: the run folder (`folder`, the one owner of its paths), OS processes (`process`), training a run
in a separate process (`launch`), and the dashboard's other background jobs (`jobs`).

`from pcam_core.runs import RunDir, create_run, launch, list_runs, stop` is the public face.
"""

from .folder import (
    ACTIVE_STATES,
    HEARTBEAT_S,
    STALE_AFTER_S,
    STATES,
    RunDir,
    RunSummary,
    StatusWriter,
    TrainLock,
    check_run_id,
    create_run,
    cross_validation_folds,
    folds_in_words,
    list_runs,
    new_run_id,
    predictions_beside,
    prepare_out_dir,
    run_path,
    summarize,
)
from .resolve import RunArg, RunRef, checkpoint_path, resolve_run
from .launch import check_processes, gpu_count, launch, max_processes, process_count, stop, train_command
from .process import pid_alive, process_start_time, spawn_detached

__all__ = [
    "RunArg",
    "RunRef",
    "resolve_run",
    "ACTIVE_STATES",
    "HEARTBEAT_S",
    "STALE_AFTER_S",
    "STATES",
    "RunDir",
    "RunSummary",
    "StatusWriter",
    "TrainLock",
    "check_run_id",
    "checkpoint_path",
    "create_run",
    "gpu_count",
    "check_processes",
    "cross_validation_folds",
    "folds_in_words",
    "launch",
    "list_runs",
    "max_processes",
    "new_run_id",
    "pid_alive",
    "predictions_beside",
    "prepare_out_dir",
    "process_count",
    "process_start_time",
    "run_path",
    "spawn_detached",
    "stop",
    "summarize",
    "train_command",
]
