"""The run folder: the contract between a training process and everything that watches it.

    RUN_DIR/
      config.json            the ExperimentConfig (written when the run is created; the trainer adds the
                             resolved model name and world size when it starts)
      status.json            state, pid, heartbeat, progress, error message (rewritten atomically)
      epochs.jsonl           one JSON object per finished epoch: train loss, every validation metric
      steps.jsonl            one JSON object every `log_every` steps: loss, learning rate, images/s
      train.log              the trainer's log
      console.log            stdout/stderr of a process started by `launch` (tracebacks of hard crashes)
      checkpoints/last.pt    latest state (end of epoch, on stop, and every `checkpoint_minutes`)
      checkpoints/best.pt    the epoch the run keeps: the best by validation `monitor`, or the last (`train.keep`)
      valid_predictions.csv  id,label,probability,index of the validation set at the kept epoch (best.pt's)
      calibration.json       the temperature fitted on those predictions, with its record (`pcam_core.calibration`)
      summary.json           final figures, written when the run ends
      tracking.json          the MLflow run this run logs to, if any (`pcam_core.tracking`): a resume logs there too
      label_overrides.csv    the review export the run trained with (`--label-overrides`), copied when it started
      label_overrides.json   where that file came from and what it did: flipped, dropped, kept, unmatched
      evaluations/<split>.json              metrics and curves of another split (`pcam evaluate --out`)
      evaluations/<split>_predictions.csv   id,label,probability,index of that split
      evaluations/score-<split>.json, .log  the background job that wrote them (`runs.jobs`)
      robustness/<split>.csv, .json         that split scored under graded shifts, and the report card (`pcam robustness`)
      robustness/robustness-<split>.json, .log  the background job that wrote them

A cross-validated run (`pcam train --folds K`, `pcam_core.crossval`) is a parent folder over K fold runs,
each an ordinary run folder as above, and is itself an ensemble run (`pcam_core.ensemble`):

    RUN_DIR/
      config.json, status.json, train.log   the parent's config (data.folds = K), state and log
      folds/fold-<k>/        the run that trains on every fold but k and validates on fold k; its
                             oof_predictions.csv: fold k scored by its best checkpoint, one pass and TTA
      oof_predictions.csv    every patch of the pool once: id,label,fold,index,probability,probability_tta
      valid_predictions.csv, valid_predictions_tta.csv   the same out-of-fold predictions (one pass; TTA) in
                             the columns calibration and triage read
      calibration.json, calibration_tta.json   temperatures fitted on them (one pass; TTA)
      scope.npz              the out-of-scope guard, fitted by fold 0 (the member the guard taps)
      cv.json                cross-validated metrics with intervals (one pass and TTA)
      ensemble.json          the members (folder paths, relative when inside) and how they are combined;
                             `pcam ensemble --runs A B --out E` writes a folder with only this file (and posthoc ones)

This module is the only one that names these paths, and the only writer of config.json; everything
else asks a `RunDir` for them.

States: queued -> running -> finished | failed | stopped. A run whose process died without saying so
(kill -9, power loss) reads as "interrupted": its pid is gone, or its heartbeat is older than
`STALE_AFTER_S`. Every state but running and queued can be resumed from `checkpoints/last.pt`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..config import ExperimentConfig
from ..fileio import atomic_write_json, atomic_write_with, read_json, read_jsonl
from .process import pid_alive

log = logging.getLogger(__name__)

STATES = ("queued", "running", "finished", "failed", "stopped", "interrupted")
ACTIVE_STATES = ("queued", "running")
HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
CHECKPOINTS = ("best", "last")


def check_run_id(run_id: str) -> str:
    """A run id (and a background job's name, `runs.jobs`) is a plain folder name: letters, digits, '.', '_' and '-', no path separators, no '..'."""
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id) or ".." in run_id:
        raise ValueError(
            f"invalid run id {run_id!r}: use up to 128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return run_id


def run_path(root: str | Path, run_id: str) -> Path:
    """The folder of run `run_id` under `root`, guaranteed to lie inside `root`."""
    root = Path(root).resolve()
    path = (root / check_run_id(run_id)).resolve()
    if path.parent != root:
        raise ValueError(f"run id {run_id!r} resolves outside the runs folder {root}")
    return path


def new_run_id(name: str = "") -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:40]
    return "-".join(p for p in (stamp, slug, secrets.token_hex(3)) if p)


def _now() -> float:
    return time.time()


class RunDir:
    """Reading and writing one run folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # paths
    config_path = property(lambda self: self.path / "config.json")
    status_path = property(lambda self: self.path / "status.json")
    epochs_path = property(lambda self: self.path / "epochs.jsonl")
    steps_path = property(lambda self: self.path / "steps.jsonl")
    log_path = property(lambda self: self.path / "train.log")
    console_path = property(lambda self: self.path / "console.log")
    checkpoints = property(lambda self: self.path / "checkpoints")
    last_checkpoint = property(lambda self: self.path / "checkpoints" / "last.pt")
    best_checkpoint = property(lambda self: self.path / "checkpoints" / "best.pt")
    valid_predictions_path = property(lambda self: self.path / "valid_predictions.csv")
    calibration_path = property(lambda self: self.path / "calibration.json")
    slide_decision_path = property(lambda self: self.path / "slide_decision.json")  # `slides.decision`: regions reported, slide score
    scope_path = property(lambda self: self.path / "scope.npz")  # the out-of-scope guard (`pcam_core.scope`)
    summary_path = property(lambda self: self.path / "summary.json")
    evaluations = property(lambda self: self.path / "evaluations")
    tracking_path = property(lambda self: self.path / "tracking.json")
    robustness = property(lambda self: self.path / "robustness")
    label_overrides_path = property(lambda self: self.path / "label_overrides.csv")
    label_overrides_record_path = property(lambda self: self.path / "label_overrides.json")
    valid_predictions_tta_path = property(lambda self: self.path / "valid_predictions_tta.csv")
    calibration_tta_path = property(lambda self: self.path / "calibration_tta.json")
    oof_predictions_path = property(lambda self: self.path / "oof_predictions.csv")
    cv_path = property(lambda self: self.path / "cv.json")
    ensemble_path = property(lambda self: self.path / "ensemble.json")
    folds_dir = property(lambda self: self.path / "folds")

    def fold(self, k: int) -> RunDir:
        """The run folder of fold `k` (0-based) of a cross-validated run."""
        return RunDir(self.folds_dir / f"fold-{k}")

    def valid_predictions_for(self, *, tta: bool) -> Path:
        """The validation predictions of a scoring mode: the TTA file where the run has one (a cross-validated
        run or an ensemble), else the one-pass file."""
        return self.valid_predictions_tta_path if tta and self.valid_predictions_tta_path.exists() else self.valid_predictions_path

    def calibration_for(self, *, tta: bool) -> Path:
        """The temperature of a scoring mode: `calibration_tta.json` where the run has one, else `calibration.json`."""
        return self.calibration_tta_path if tta and self.calibration_tta_path.exists() else self.calibration_path

    @property
    def is_ensemble(self) -> bool:
        return self.ensemble_path.exists()

    @property
    def is_cross_validation(self) -> bool:
        """A parent of fold runs (`pcam train --folds K`): it has a `folds/` folder, made when the job starts."""
        return self.folds_dir.is_dir()

    def record_label_overrides(self, source: str | Path, counts: dict[str, int]) -> None:
        """Keep a copy of the review export the run trains with, and what it did to the training labels.
        A resumed run reads its copy (`source` is then that copy, and the first record stays)."""
        source = Path(source)
        if source.resolve() == self.label_overrides_path.resolve():
            return
        atomic_write_with(self.label_overrides_path, lambda handle: handle.write(source.read_bytes()))
        atomic_write_json(self.label_overrides_record_path, {"source": str(source.resolve()), "counts": counts,
                                                             "recorded_at": time.time()})

    def label_overrides(self) -> dict[str, Any] | None:
        """The record of `record_label_overrides` (source, counts), or None for a run without overrides."""
        return read_json(self.label_overrides_record_path, default=None)

    def checkpoint(self, which: str = "best") -> Path:
        """`checkpoints/best.pt` (or `last.pt`); best falls back to last when no epoch finished. An ensemble's
        is its `ensemble.json` (each member's own best checkpoint is loaded)."""
        if not self.path.is_dir():
            raise FileNotFoundError(f"run folder not found: {self.path}")
        if not (self.config_path.exists() or self.best_checkpoint.parent.is_dir() or self.is_ensemble):
            # any folder (QA: --run /tmp was asked whether it had finished an epoch); a shipped member has checkpoints/ alone
            raise FileNotFoundError(f"{self.path} is not a run folder (it has no {self.config_path.name}): give a folder "
                                    "`pcam train --out` made, or bundled")
        if which not in CHECKPOINTS:
            raise ValueError(f"checkpoint must be 'best' or 'last', not {which!r}")
        if self.is_ensemble:  # its members' checkpoints are listed there (`pcam_core.ensemble`)
            return self.ensemble_path
        for path in ([self.best_checkpoint, self.last_checkpoint] if which == "best" else [self.last_checkpoint]):
            if path.exists():
                return path
        raise FileNotFoundError(f"run {self.path} has no checkpoint yet ({which}.pt); has it finished an epoch?")

    def evaluation_files(self, split: str) -> tuple[Path, Path]:
        """(metrics JSON, predictions CSV) of `split` scored by `pcam evaluate` for this run."""
        metrics = self.evaluations / f"{split}.json"
        return metrics, predictions_beside(metrics)

    def robustness_files(self, split: str) -> tuple[Path, Path]:
        """(table CSV, report JSON) of `split` scored under shifts by `pcam robustness` for this run."""
        return robustness_files(self.robustness, split)

    def write_config(self, config: ExperimentConfig) -> None:
        """Write config.json (atomically): the one writer of that file."""
        atomic_write_json(self.config_path, config.to_dict())

    @property
    def run_id(self) -> str:
        return self.path.name

    def exists(self) -> bool:
        return self.config_path.exists()

    def check_resumable(self) -> None:
        """Refuse to resume a folder that holds no run (`pcam train --resume`, one run or a cross-validation)."""
        if not self.exists():
            raise FileNotFoundError(f"cannot resume: {self.path} is not a run folder (no config.json)")

    def config(self) -> ExperimentConfig:
        if not self.config_path.exists():
            raise FileNotFoundError(f"{self.path} is not a run folder (no config.json)")
        return ExperimentConfig.from_json(self.config_path)

    def raw_status(self) -> dict[str, Any]:
        return read_json(self.status_path, default={}) or {}

    def status(self) -> dict[str, Any]:
        """The status file, with `state` corrected for a process that died without updating it."""
        status = self.raw_status()
        if not status:
            return {"state": "unknown", "message": "no status.json"}
        state = status.get("state")
        if state in ACTIVE_STATES:
            same_host = status.get("host") in (None, socket.gethostname())
            pid = status.get("pid") if state == "running" else status.get("launcher_pid")
            heartbeat_age = _now() - float(status.get("heartbeat", status.get("updated_at", 0)) or 0)
            start = status.get("pid_start") if state == "running" else status.get("launcher_pid_start")
            if same_host and pid and not pid_alive(pid, start):
                status = {**status, "state": "interrupted" if state == "running" else "failed"}
                status["message"] = (
                    "the training process ended without a final status (killed?); resume it to continue"
                    if state == "running"
                    else "the training process exited before it started; see console.log"
                )
            elif state == "running" and heartbeat_age > STALE_AFTER_S:
                status = {**status, "state": "interrupted",
                          "message": f"no heartbeat for {heartbeat_age:.0f} s; the process is presumed dead"}
        return status

    def epochs(self) -> list[dict[str, Any]]:
        return read_jsonl(self.epochs_path)

    def steps(self) -> list[dict[str, Any]]:
        return read_jsonl(self.steps_path)

    def summary(self) -> dict[str, Any]:
        return read_json(self.summary_path, default={}) or {}

    def warnings(self) -> list[str]:
        """What its training warned of (a teacher that may have seen its validation patches, reviewed labels that matched
        nothing, a checkpoint not written): from its status while it trains, and its summary once it ended."""
        return list(dict.fromkeys([*(self.raw_status().get("warnings") or []), *(self.summary().get("warnings") or [])]))

    def best_epoch(self) -> dict[str, Any] | None:
        """The epochs.jsonl record flagged best (the checkpoint in best.pt)."""
        return _best_of(self.epochs())

    def log_tail(self, lines: int = 40, *, console: bool = False) -> str:
        """The last lines of train.log (or of console.log, where a crashed process's traceback lands)."""
        path = self.console_path if console else self.log_path
        if not path.exists():
            return ""
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def create_run(root: str | Path, config: ExperimentConfig, *, run_id: str | None = None) -> RunDir:
    """Make a new run folder with its config and a "queued" status. Never reuses a folder: two runs
    created at the same moment get two folders (the id has a random part, and mkdir is exclusive)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(20):
        rid = run_id or new_run_id(config.name or config.model.name)
        path = run_path(root, rid)
        try:
            path.mkdir()
        except FileExistsError:
            if run_id:
                raise FileExistsError(f"run {run_id!r} already exists in {root}") from None
            continue
        break
    else:  # pragma: no cover - 20 collisions of a 24-bit random suffix
        raise RuntimeError("could not create a unique run folder")
    run = RunDir(path)
    run.write_config(config)
    atomic_write_json(run.status_path, {"state": "queued", "created_at": _now(), "updated_at": _now(), "host": socket.gethostname()})
    return run


class TrainLock:
    """An exclusive lock on a run folder held by the process that trains it (`flock` on
    `.train.lock`): a second trainer of the same folder is refused at once, and the lock vanishes with
    its process, however it ends (kill -9 included)."""

    def __init__(self, run: RunDir) -> None:
        self.path = run.path / ".train.lock"
        self._handle: Any = None

    def acquire(self) -> TrainLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RuntimeError(f"run {self.path.parent} is being trained by {holder}; stop it first") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file drops the flock
            self._handle = None


def prepare_out_dir(out: str | Path, config: ExperimentConfig, *, resume: bool) -> tuple[RunDir, TrainLock]:
    """The run folder for `pcam train --out OUT`, locked for this process: created (it must be new,
    empty, or a queued run made by `create_run`) or, with `resume`, an existing run whose saved config
    is used. The lock is taken before anything is checked or written, so two trainers started at the
    same moment on one folder cannot both pass."""
    run = RunDir(out)
    if resume:
        run.check_resumable()
    lock = TrainLock(run).acquire()
    try:
        if resume:
            return run, lock
        contents = [p for p in run.path.iterdir() if p.name != ".train.lock"]
        if contents:
            if run.exists() and run.raw_status().get("state") == "queued" and not run.epochs():
                return run, lock  # created by `create_run`/`launch`, not started yet
            raise FileExistsError(f"{run.path} exists and is not empty; choose a new --out or pass --resume")
        run.write_config(config)
        return run, lock
    except BaseException:
        lock.release()
        raise


class StatusWriter:
    """Owns status.json for a training process: merges updates, stamps a heartbeat from a background
    thread every `HEARTBEAT_S` seconds so long epochs never look dead, and writes atomically."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self._lock = threading.Lock()
        self._status = run.raw_status()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def update(self, **fields: Any) -> None:
        with self._lock:
            self._status.update(fields)
            self._status["updated_at"] = self._status["heartbeat"] = _now()
            try:
                atomic_write_json(self.run.status_path, self._status)
            except OSError as err:  # a full disk must not kill training; the log says it
                log.warning("could not write %s: %s", self.run.status_path, err)

    def start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                self.update()

        self._thread = threading.Thread(target=beat, name="pcam-heartbeat", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=HEARTBEAT_S * 2)


@dataclass
class RunSummary:
    run_id: str
    path: str
    state: str
    model: str
    data: str
    epochs_done: int
    epochs_total: int
    best: dict[str, Any] | None
    created_at: float | None
    message: str | None
    synthetic: bool = False  # trained on synthetic (demo) data, as the trainer recorded in status.json
    started_at: float | None = None  # the last (re)start of its training process
    epochs: list[dict[str, Any]] = field(default_factory=list, repr=False)  # epochs.jsonl, for learning curves

    def to_dict(self) -> dict[str, Any]:
        """The figures, without the epoch records."""
        return {k: v for k, v in self.__dict__.items() if k != "epochs"}


def summarize(run: RunDir) -> RunSummary:
    """The figures of a run, reading each of its files once."""
    status = run.status()
    try:
        config = run.config()
        model, data, total = config.model.name, config.data.path, config.train.epochs
    except (ValueError, FileNotFoundError):
        model, data, total = "?", "?", 0
    epochs = run.epochs()
    best = _best_of(epochs)
    best_view = None
    if best:
        best_view = {k: best.get(k) for k in ("epoch", "roc_auc", "pr_auc", "accuracy", "f1", "loss")}
    done = _epochs_done(epochs)
    # a cross-validation's epochs are its folds': K runs of `total` epochs; its figures the out-of-fold ones. Queued,
    # before its job made folds/, it is known by its config (`launch` starts any queued run with data.folds as one)
    if run.is_cross_validation or (status.get("state") == "queued" and cross_validation_folds(run)):
        done, total, best_view = _cross_validation_figures(run, total)
        if model == "auto" and run.fold(0).config_path.exists():  # the job resolves it once every fold has trained
            try:
                model = run.fold(0).config().model.name
            except (ValueError, FileNotFoundError):
                pass
    return RunSummary(
        run.run_id,
        str(run.path),
        status.get("state", "unknown"),
        model,
        data,
        done,
        total,
        best_view,
        status.get("created_at"),
        status.get("message") or status.get("error"),
        bool(status.get("synthetic_data")),
        status.get("started_at"),
        epochs,
    )


def list_runs(root: str | Path) -> list[RunSummary]:
    """Every run folder directly under `root`, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [RunDir(p) for p in root.iterdir() if p.is_dir()]
    summaries = [summarize(r) for r in runs if r.exists()]
    return sorted(summaries, key=lambda s: (s.created_at or 0, s.run_id), reverse=True)


def cross_validation_folds(run: RunDir) -> int:
    """K where `run` is a cross-validation (its config's `data.folds`), else 0 (a folder without a readable config too)."""
    try:
        return run.config().data.folds
    except (FileNotFoundError, ValueError):
        return 0


def folds_in_words(folds: Sequence[int], total: int) -> str:
    """Folds (from 1) of a cross-validation of `total` in words: "fold 2 of 5", "folds 1, 2 and 3 of 5"."""
    words = [str(f) for f in folds]
    if len(words) == 1:
        return f"fold {words[0]} of {total}"
    return f"folds {', '.join(words[:-1])} and {words[-1]} of {total}"


def _cross_validation_figures(run: RunDir, epochs_per_fold: int) -> tuple[int, int, dict[str, Any] | None]:
    """A cross-validated run's epochs done and planned (over its K folds) and, once `cv.json` is written, its pooled
    out-of-fold figures (one pass) in place of a best epoch: `epoch` None, `cross_validated` True."""
    folds = cross_validation_folds(run)
    done = sum(_epochs_done(run.fold(k).epochs()) for k in range(folds))
    try:
        pooled = json.loads(run.cv_path.read_text())["one_pass"]["pooled"]
        figures = {"epoch": None, "cross_validated": True,
                   **{k: pooled[k]["value"] for k in ("roc_auc", "pr_auc", "accuracy", "f1") if k in pooled}}
    except (OSError, ValueError, KeyError, TypeError):
        figures = None
    return done, folds * epochs_per_fold, figures


def _epochs_done(epochs: list[dict[str, Any]]) -> int:
    """Completed epochs of a run's epoch records, each counted once."""
    return len({e.get("epoch") for e in epochs})


def _best_of(epochs: list[dict[str, Any]]) -> dict[str, Any] | None:
    best = [e for e in epochs if e.get("is_best")]
    return best[-1] if best else None


def predictions_beside(metrics_path: str | Path) -> Path:
    """The per-patch predictions CSV written beside an evaluation's metrics JSON (`<stem>_predictions.csv`)."""
    metrics_path = Path(metrics_path)
    return metrics_path.with_name(metrics_path.stem + "_predictions.csv")


def robustness_files(folder: str | Path, split: str) -> tuple[Path, Path]:
    """(`<split>.csv`, `<split>.json`) in `folder`: a run's `robustness/`, or the folder `pcam robustness --out` names."""
    if not isinstance(split, str) or not _RUN_ID.match(split) or ".." in split:
        raise ValueError(f"invalid split name {split!r}: use letters, digits, '.', '_' or '-'")
    folder = Path(folder)
    return folder / f"{split}.csv", folder / f"{split}.json"
