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
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .calibration import calibrate_run
from .config import ExperimentConfig
from .data.loader import cv_pool, fold_split, run_datasets
from .ensemble import DEFAULT_COMBINE, check_combine, write_record
from .fileio import atomic_write_json, atomic_write_with
from .loading import load_run_model
from .metrics import binary_metrics, expected_calibration_error
from .predict import predict_dataset
from .runs import RunDir, StatusWriter, prepare_out_dir, process_start_time
from .stats import format_interval, mean_interval, metric_intervals
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
) -> dict[str, Any]:
    """Train `folds` (K >= 2; default `config.data.folds`) fold runs into `out` and return the cross-validated
    summary (also `summary.json` and `cv.json` of `out`). With `resume`, continue the job in `out` with its saved
    config. `combine`: how the ensemble of the folds joins them ("prob" or "logit", `pcam_core.ensemble`).
    `on_step` gets `train.fit`'s progress with `fold` and `folds` added."""
    check_combine(combine)
    parent = RunDir(out)
    if resume:
        if not parent.exists():
            raise FileNotFoundError(f"cannot resume: {parent.path} is not a run folder (no config.json)")
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
                  folds=config.data.folds, model=config.model.name, epochs=config.train.epochs)
    status.start_heartbeat()
    try:
        summary = _fit_folds(config, run, status, combine, on_step)
    except StopRequested:
        status.update(state="stopped", finished_at=time.time(), message="stopped on request; resume with --resume")
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
               on_step: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    k = config.data.folds
    started = time.time()
    for fold in range(k):
        member = run.fold(fold)
        status.update(fold=fold + 1, message=f"fold {fold + 1} of {k}")
        if member.oof_predictions_path.exists():
            log.info("fold %d/%d: done before, kept", fold + 1, k)
            continue
        fold_config = config.replace(data={"fold": fold}, name=f"{config.name or 'cv'} fold {fold + 1} of {k}")
        step = (lambda p, f=fold: on_step({**p, "fold": f + 1, "folds": k})) if on_step is not None else None
        if member.summary_path.exists():
            log.info("fold %d/%d: trained before; scoring its held-out fold", fold + 1, k)
        elif member.exists():
            log.info("fold %d/%d: resuming", fold + 1, k)
            fit(fold_config, member.path, resume=True, on_step=step)
        else:
            log.info("fold %d/%d: training", fold + 1, k)
            fit(fold_config, member.path, on_step=step)
        score_fold(member, fold_config)
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
