"""Cross-validation: `fit_folds(config, out, folds=K)` trains K runs on K folds of the labelled pool into one
parent run folder, scores every patch once with the model that did not train on it (one pass and TTA), reports
cross-validated metrics with intervals, and leaves the parent as an ensemble run of the K models, calibrated,
triaged and guarded on those out-of-fold predictions.

The folds (`data.loader.fold_split`) are stratified by label and, where the data names slides (the `wsi` column
of the official HDF5 `_meta.csv`), grouped by slide; the Kaggle layout names none. Each fold is an ordinary run
(`train.fit` with `data.folds`/`data.fold` in its config), so a killed job resumes where it stopped: finished
folds are kept, the fold under way resumes from its last checkpoint (`fit(..., resume=True)`), later ones start.
The layout of the parent folder is `runs.folder`'s.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import threading
import time
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from .calibration import calibrate_run
from .config import ExperimentConfig
from .data.loader import cv_pool, fold_split, run_datasets
from .ensemble import DEFAULT_COMBINE, check_combine, write_record
from .fileio import atomic_write_json, atomic_write_with
from .loading import load_run_model
from .metrics import binary_metrics, expected_calibration_error
from .predict import predict_dataset
from .runs import RunDir, StatusWriter, folds_in_words, prepare_out_dir, process_start_time
from .stats import format_interval, mean_interval, metric_intervals
from .tracking import prepare_store
from .train import StopRequested, fit
from .triage import CALLS, fit_triage, triage_outcome

log = logging.getLogger(__name__)

MODES = {"one_pass": "probability", "tta": "probability_tta"}  # scoring mode -> column of the out-of-fold file
TRIAGE_TARGET = 0.98  # the sensitivity the cross-validated triage figures are reported at


def fit_folds(
    config: ExperimentConfig,
    out: str | Path,
    *,
    folds: int | None = None,
    resume: bool = False,
    combine: str = DEFAULT_COMBINE,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    parallel: int = 1,
) -> dict[str, Any]:
    """Train `folds` (K >= 2; default `config.data.folds`) fold runs into `out` and return the cross-validated
    summary (also `summary.json` and `cv.json` of `out`). With `resume`, continue the job in `out` with its saved
    config. `combine`: how the ensemble of the folds joins them ("prob" or "logit", `pcam_core.ensemble`).
    `on_step` gets `train.fit`'s progress with `fold` and `folds` added (folds trained one after another only).
    `parallel` > 1 trains that many folds side by side, each in a process of its own (`_train_side_by_side`): one GPU
    each on a machine with several."""
    check_combine(combine)
    if parallel < 1:
        raise ValueError(f"the folds trained side by side (--parallel-folds) must be at least 1, not {parallel}")
    parent = RunDir(out)
    if resume:
        parent.check_resumable()
        config = parent.config()
        if not parent.is_cross_validation:
            raise ValueError(f"{parent.path} is not a cross-validated run (no folds/ folder); resume it with `pcam train --resume`")
        if parent.status().get("state") == "finished" and parent.ensemble_path.exists():
            raise ValueError(f"{parent.path} has finished its {config.data.folds} folds; there is nothing to resume")
    else:
        k = folds if folds is not None else config.data.folds
        if not k:
            raise ValueError("cross-validation needs a number of folds, e.g. folds=5")
        config = config.replace(data={"folds": k, "fold": 0})
        fold_split(cv_pool(config.data.path, config.data.format), k, config.data.split_seed)  # bad data fails here
    run, lock = prepare_out_dir(parent.path, config, resume=resume)
    run.folds_dir.mkdir(exist_ok=True)  # marks the folder as a cross-validation parent (`RunDir.is_cross_validation`)
    handler = logging.FileHandler(run.log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("pcam_core").addHandler(handler)
    logging.getLogger("pcam_core").setLevel(logging.INFO)
    status = StatusWriter(run)
    status.update(state="running", pid=os.getpid(), pid_start=process_start_time(os.getpid()), host=socket.gethostname(),
                  started_at=time.time(), created_at=run.raw_status().get("created_at") or time.time(), error=None,
                  folds=config.data.folds, model=config.model.name, epochs=config.train.epochs,
                  parallel_folds=min(parallel, config.data.folds), folds_running=[])
    status.start_heartbeat()
    try:
        summary = _fit_folds(config, run, status, combine, on_step, parallel)
    except StopRequested:
        status.update(state="stopped", finished_at=time.time(),
                      message="stopped on request (Stop on the dashboard, `pcam stop` or Ctrl-C); each fold under way saved "
                              "its checkpoint: resume to go on from there")
        raise
    except BaseException as err:
        reason = f"{type(err).__name__}: {err}" if not isinstance(err, KeyboardInterrupt) else "interrupted"
        status.update(state="failed", error=reason, message=reason, finished_at=time.time())
        raise
    finally:
        status.stop_heartbeat()
        logging.getLogger("pcam_core").removeHandler(handler)
        handler.close()
        lock.release()
    return summary


def _fit_folds(config: ExperimentConfig, run: RunDir, status: StatusWriter, combine: str,
               on_step: Callable[[dict[str, Any]], None] | None, parallel: int) -> dict[str, Any]:
    k = config.data.folds
    started = time.time()
    pending = []
    for fold in range(k):
        if run.fold(fold).oof_predictions_path.exists():
            log.info("fold %d/%d: done before, kept", fold + 1, k)
        else:
            pending.append(fold)
    if parallel > 1 and len(pending) > 1:
        _train_side_by_side(config, run, status, pending, parallel)
    for fold in pending:  # one after another; side by side, those left (none, unless it stopped)
        if not run.fold(fold).oof_predictions_path.exists():
            status.update(fold=fold + 1, folds_running=[fold + 1], message=folds_in_words([fold + 1], k))
            step = (lambda p, f=fold: on_step({**p, "fold": f + 1, "folds": k})) if on_step is not None else None
            train_fold(config, run, fold, on_step=step)
    status.update(fold=k, folds_running=[])
    resolved = run.fold(0).config().model.name  # "auto" became the model the folds trained
    if resolved != config.model.name:
        config = config.replace(model={"name": resolved})
        run.write_config(config)
    frame = _gather(run, config)
    write_record(run, [run.fold(f) for f in range(k)], combine)  # first: the predictions below are not older than it
    _write_oof(run, frame)
    report = cv_report(frame)
    atomic_write_json(run.cv_path, report)
    for tta in (False, True):  # the temperature of each scoring mode, on its own out-of-fold predictions
        try:
            calibration = calibrate_run(run.path, tta=tta)
        except ValueError as err:
            log.warning("no calibration fitted (%s): %s", "TTA" if tta else "one pass", err)
        else:
            if calibration.warning:
                log.warning("%s: %s", "TTA" if tta else "one pass", calibration.warning)
    if run.fold(0).scope_path.exists():  # the guard taps the first member (`models.get_layer`): its own guard
        shutil.copyfile(run.fold(0).scope_path, run.scope_path)
    summaries = [run.fold(f).summary() for f in range(k)]
    summary = {"run_id": run.run_id, "model": config.model.name, "folds": k, "combine": combine, "patches": len(frame),
               "train_seconds": float(sum(s.get("train_seconds") or 0.0 for s in summaries)),
               "wall_seconds_this_process": time.time() - started,
               "synthetic_data": any(s.get("synthetic_data") for s in summaries), "cv": report}
    atomic_write_json(run.summary_path, summary)
    auc = report["one_pass"]["pooled"]["roc_auc"]
    message = f"finished {k} folds; cross-validated ROC-AUC {auc['value']:.4f}" if auc else f"finished {k} folds"
    for line in [message, *cv_lines(report)]:  # the log's last lines: what the job found (the Train page shows the tail)
        log.info(line)
    status.update(state="finished", finished_at=time.time(), message=message)
    return summary


def train_fold(config: ExperimentConfig, run: RunDir, fold: int,
               on_step: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Train fold `fold` (from 0) of the cross-validation `config` in `run`, or resume it where a killed job left it,
    then score its held-out patches (`score_fold`)."""
    k = config.data.folds
    member = run.fold(fold)
    fold_config = config.replace(data={"fold": fold}, name=f"{config.name or 'cv'} fold {fold + 1} of {k}")
    if member.summary_path.exists():
        log.info("fold %d/%d: trained before; scoring its held-out fold", fold + 1, k)
    elif member.exists():
        log.info("fold %d/%d: resuming", fold + 1, k)
        fit(fold_config, member.path, resume=True, on_step=on_step)
    else:
        log.info("fold %d/%d: training", fold + 1, k)
        fit(fold_config, member.path, on_step=on_step)
    score_fold(member, fold_config)


FOLD_STOPPED = 3  # the exit code of a fold process that stopped on request, checkpoint saved


def _train_side_by_side(config: ExperimentConfig, run: RunDir, status: StatusWriter, pending: list[int],
                        parallel: int) -> None:
    """Train the `pending` folds `parallel` at a time, each in a process of its own (`_fold_process`): on a machine
    with several GPUs, slot s trains on GPU s modulo their number; on a CPU the cores are shared out. A stop request
    (SIGTERM or SIGINT to this process) is passed on to every fold under way, which saves its checkpoint; a fold that
    fails stops the others the same way, and the job fails naming it. Either way `--resume` goes on from there."""
    k = config.data.folds
    gpus = _gpus_for(config)
    threads = None if "OMP_NUM_THREADS" in os.environ else max(1, (os.cpu_count() or 1) // parallel)
    context = multiprocessing.get_context("spawn")  # no forked copy of this process's threads and CUDA state
    prepare_store(config.tracking)  # the folds log to one MLflow store at once: its tables and experiment made first
    queue, free = list(pending), list(range(min(parallel, len(pending))))
    running: dict[Any, tuple[Any, int, int, Any]] = {}  # sentinel -> (process, fold, slot, the end of its pipe we read)
    stop = _StopForwarder(lambda: [entry[0] for entry in running.values()])
    failed: tuple[int, str] | None = None
    stopped, shown = False, None
    log.info("training %d folds side by side, each in a process of its own%s", len(free),
             f" (GPUs: {gpus})" if gpus else f" ({threads} CPU threads each)" if threads else "")
    stop.install()
    try:
        while queue or running:
            while queue and free and not stop.requested and failed is None and not stopped:
                fold, slot = queue.pop(0), free.pop(0)
                gpu = slot % gpus if gpus else None
                reader, writer = context.Pipe(duplex=False)
                process = context.Process(target=_fold_process, args=(config, str(run.path), fold, gpu, threads, writer),
                                          name=f"pcam fold {fold + 1} of {k}")
                process.start()
                writer.close()  # the child's end: only the child holds it now
                running[process.sentinel] = (process, fold, slot, reader)
                log.info("fold %d/%d: started in process %d%s", fold + 1, k, process.pid, f" on GPU {gpu}" if gpu is not None else "")
            if not running:
                break
            under_way = sorted(entry[1] + 1 for entry in running.values())
            if under_way != shown:
                status.update(fold=under_way[0], folds_running=under_way,
                              message=folds_in_words(under_way, k) + (" side by side" if len(under_way) > 1 else ""))
                shown = under_way
            for sentinel in wait(list(running), timeout=1.0):
                process, fold, slot, reader = running.pop(sentinel)
                process.join()
                free.append(slot)
                reason = _received(reader)
                if process.exitcode == 0:
                    log.info("fold %d/%d: trained and scored", fold + 1, k)
                elif process.exitcode == FOLD_STOPPED or stop.requested:
                    stopped = True
                    log.info("fold %d/%d: stopped; its checkpoint is saved", fold + 1, k)
                elif failed is None:
                    failed = (fold, reason or _fold_failure(process.exitcode))
                    log.error("fold %d/%d failed: %s; stopping the folds under way", fold + 1, k, failed[1])
                if (stopped or failed is not None) and running:
                    stop.forward()
    finally:
        stop.restore()
        for process, *_ in running.values():  # only after an error of this process itself: end what it started
            process.terminate()
            process.join()
    if failed is not None:
        raise RuntimeError(f"fold {failed[0] + 1} of {k} failed: {failed[1]} (the folds under way were stopped with their "
                           "checkpoints; resume the job with --resume once the cause is fixed)")
    if stopped or stop.requested:
        raise StopRequested()


def _fold_process(config: ExperimentConfig, parent: str, fold: int, gpu: int | None, threads: int | None, report: Any) -> None:
    """The body of one fold's process (`_train_side_by_side`): the fold's GPU made its only one, its share of the CPU
    threads, its log lines also in the job's log (named by fold), then `train_fold`. Why it failed, if it does, goes
    to the job through `report` (a pipe's end)."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # before CUDA starts in this process: it sees one GPU, cuda:0
    if threads:
        torch.set_num_threads(threads)
    run = RunDir(parent)
    handler = logging.FileHandler(run.log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s %(name)s [fold {fold + 1}]: %(message)s"))
    logging.getLogger("pcam_core").addHandler(handler)
    logging.getLogger("pcam_core").setLevel(logging.INFO)
    try:
        train_fold(config, run, fold)
    except StopRequested:
        sys.exit(FOLD_STOPPED)
    except BaseException as err:  # its reason to the job, its traceback to the job's log (not the terminal)
        reason = f"{type(err).__name__}: {err}" if not isinstance(err, KeyboardInterrupt) else "interrupted"
        report.send(reason)
        logging.getLogger(__name__).error("fold %d failed: %s", fold + 1, reason, exc_info=True)
        sys.exit(1)
    finally:
        report.close()
        handler.close()


def _received(reader: Any) -> str | None:
    """What a fold's process sent through its pipe before it ended (why it failed), or None; the pipe is closed."""
    try:
        return reader.recv() if reader.poll() else None
    except EOFError:  # it ended without a word: its end of the pipe closed empty
        return None
    finally:
        reader.close()


def _fold_failure(exitcode: int | None) -> str:
    """How a fold's process ended that said nothing of why (killed, or it died before it could)."""
    if exitcode is not None and exitcode < 0:
        return f"its process was killed by signal {-exitcode}"
    return f"its process exited with code {exitcode} (the traceback is in the job's console output)"


def _gpus_for(config: ExperimentConfig) -> int:
    """How many GPUs the folds share out: every CUDA device this process sees when the config trains on one, else 0."""
    if config.train.device == "cpu" or not torch.cuda.is_available():
        return 0
    return torch.cuda.device_count()


class _StopForwarder:
    """While folds train side by side: SIGTERM and SIGINT to this process (the dashboard's Stop, `pcam stop`, Ctrl-C)
    are noted and passed on to the fold processes as SIGTERM, the stop request their trainers answer by saving a
    checkpoint. Signal handlers can only be set in the main thread; elsewhere nothing is installed."""

    def __init__(self, processes: Callable[[], list[Any]]) -> None:
        self.processes = processes
        self.requested = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        self.forward()

    def forward(self) -> None:
        for process in self.processes():
            if process.is_alive():
                process.terminate()  # SIGTERM

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def score_fold(member: RunDir, config: ExperimentConfig) -> pd.DataFrame:
    """Score the held-out fold of a fold run with its best checkpoint, one pass and TTA, into its
    `oof_predictions.csv` (index: the patch's position in the cross-validation pool)."""
    loaded = load_run_model(member.path, device=config.train.device)
    valid = run_datasets(config).valid
    workers = config.data.num_workers
    one = predict_dataset(loaded.model, valid, device=loaded.device, tta=False, num_workers=workers).predictions
    tta = predict_dataset(loaded.model, valid, device=loaded.device, tta=True, num_workers=workers).predictions
    if one.ids != tta.ids:
        raise RuntimeError(f"fold {config.data.fold}: the one-pass and TTA scorings saw different patches")
    frame = pd.DataFrame({"id": one.ids, "label": one.labels, "fold": config.data.fold,
                          "index": np.asarray(valid.parent_indices)[one.index], "probability": one.probs,
                          "probability_tta": tta.probs})
    atomic_write_with(member.oof_predictions_path, lambda h: h.write(frame.to_csv(index=False).encode()))
    write_fold_tta(member)
    return frame


def write_fold_tta(member: RunDir) -> None:
    """A fold run's TTA record of its held-out fold, from its `oof_predictions.csv`: `valid_predictions_tta.csv` (its
    `index` the patch's position in the fold, as in the trainer's `valid_predictions.csv`) and the temperature fitted on
    it, `calibration_tta.json`. The fold run used alone (packaged, as `candidates/pcamscan` is, or as a teacher) then
    scores with TTA under a TTA temperature, not the one-pass one the trainer fitted."""
    oof = pd.read_csv(member.oof_predictions_path, dtype={"id": str})
    view = pd.DataFrame({"id": oof["id"], "label": oof["label"], "probability": oof["probability_tta"],
                         "index": oof["index"].rank(method="first").astype(int) - 1})  # a fold's pool positions, ascending
    atomic_write_with(member.valid_predictions_tta_path, lambda h: h.write(view.to_csv(index=False).encode()))
    try:
        calibration = calibrate_run(member.path, tta=True)
    except ValueError as err:
        log.warning("%s: no TTA calibration fitted: %s", member.path.name, err)
    else:
        if calibration.warning:
            log.warning("%s, TTA: %s", member.path.name, calibration.warning)


def _gather(run: RunDir, config: ExperimentConfig) -> pd.DataFrame:
    """The folds' out-of-fold predictions as one frame, sorted by pool index; each patch of the pool exactly once."""
    frame = pd.concat([pd.read_csv(run.fold(f).oof_predictions_path, dtype={"id": str}) for f in range(config.data.folds)])
    frame = frame.sort_values("index").reset_index(drop=True)
    pool = len(cv_pool(config.data.path, config.data.format))
    if len(frame) != pool or frame["index"].duplicated().any():
        raise RuntimeError(f"the out-of-fold predictions cover {frame['index'].nunique()} of {pool} patches "
                           f"({len(frame)} rows); a fold's oof_predictions.csv is stale: delete it and resume")
    return frame


def _write_oof(run: RunDir, frame: pd.DataFrame) -> None:
    atomic_write_with(run.oof_predictions_path, lambda h: h.write(frame.to_csv(index=False).encode()))
    for path, column in ((run.valid_predictions_path, "probability"), (run.valid_predictions_tta_path, "probability_tta")):
        view = frame[["id", "label", column, "index"]].rename(columns={column: "probability"})
        atomic_write_with(path, lambda h, v=view: h.write(v.to_csv(index=False).encode()))


def cv_report(frame: pd.DataFrame, *, target: float = TRIAGE_TARGET, pr_auc: bool = True) -> dict[str, Any]:
    """Cross-validated figures of out-of-fold predictions (columns label, fold, probability, probability_tta), per
    scoring mode: every metric pooled over all patches with its interval (`stats.metric_intervals`: DeLong for
    ROC-AUC), the per-fold ROC-AUC with the interval of their mean, the calibration error, and the triage at
    `target` sensitivity cross-fitted (each fold's thresholds fitted on the other folds' predictions). `pr_auc=False`
    leaves out PR-AUC's interval (a bootstrap: the slow one)."""
    labels = frame["label"].to_numpy()
    folds = frame["fold"].to_numpy()
    out: dict[str, Any] = {"n": int(len(frame)), "folds": int(folds.max() + 1), "positives": int(labels.sum())}
    for mode, column in MODES.items():
        probs = frame[column].to_numpy()
        per_fold = [binary_metrics(labels[folds == f], probs[folds == f])["roc_auc"] for f in np.unique(folds)]
        aucs = np.array([a for a in per_fold if a is not None], dtype=np.float64)
        out[mode] = {
            "pooled": metric_intervals(labels, probs, pr_auc=pr_auc),
            "per_fold_roc_auc": per_fold,
            "mean_fold_roc_auc": mean_interval(aucs, bounds=(0.0, 1.0)) if aucs.size else None,
            "ece": expected_calibration_error(labels, probs),
            "triage": cross_fitted_triage(labels, probs, folds, target),
        }
    return out


def cv_lines(cv: dict[str, Any]) -> list[str]:
    """`cv_report`'s figures in words, a line per scoring mode (what `pcam train --folds` prints, and the Train page)."""
    lines = []
    for mode in MODES:
        r, t = cv[mode], cv[mode]["triage"]
        lines.append(f"{'TTA' if mode == 'tta' else 'one pass'}: out-of-fold ROC-AUC {format_interval(r['pooled']['roc_auc'], 4)}, "
                     f"mean over folds {format_interval(r['mean_fold_roc_auc'], 4)}; ECE {r['ece']:.4f}; triage at "
                     f"{t['target_sensitivity']:.0%} sensitivity: miss {t['miss_rate']:.1%}, referred {t['referral_rate']:.1%}")
    return lines


def cross_fitted_triage(labels: np.ndarray, probs: np.ndarray, folds: np.ndarray, target: float) -> dict[str, Any]:
    """The triage at `target` sensitivity as a new patch meets it: each fold called with thresholds fitted on the
    other folds' out-of-fold predictions; the miss, false-positive and referral rates over every patch."""
    counts: dict[str, int] = {}
    per_fold = []
    for f in np.unique(folds):
        held = folds == f
        thresholds = fit_triage(labels[~held], probs[~held], target)
        per_fold.append(thresholds.to_dict())
        for key, value in triage_outcome(labels[held], probs[held], thresholds)["counts"].items():
            counts[key] = counts.get(key, 0) + value
    tumour = sum(counts[f"tumour_{c}"] for c in CALLS)
    normal = sum(counts[f"normal_{c}"] for c in CALLS)
    return {"target_sensitivity": target, "miss_rate": counts["tumour_normal"] / max(tumour, 1),
            "false_positive_rate": counts["normal_tumour"] / max(normal, 1),
            "referral_rate": (counts["tumour_refer"] + counts["normal_refer"]) / max(tumour + normal, 1),
            "counts": counts, "thresholds_per_fold": per_fold}


__all__ = ["MODES", "TRIAGE_TARGET", "cross_fitted_triage", "cv_lines", "cv_report", "fit_folds", "score_fold", "write_fold_tta"]
