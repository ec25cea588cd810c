"""Watching runs: progress and time left, the runs table, learning curves.

Pure functions of what a run folder holds (`status.json`, `steps.jsonl`, `epochs.jsonl`), so that the
dashboard can poll a training process it did not start, and a test can feed in records by hand.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pandas as pd

from ..decision import DEFAULT_THRESHOLD
from ..runs import RunDir, RunSummary, cross_validation_folds, folds_in_words

# Epoch-level series a learning-curve chart can show, with the words for its axis.
CURVE_METRICS = {
    "roc_auc": "validation ROC-AUC",
    "pr_auc": "validation PR-AUC",
    "loss": "validation loss",
    "train_loss": "training loss",
    "accuracy": f"validation accuracy (threshold {DEFAULT_THRESHOLD})",  # as the trainer measures them
    "f1": f"validation F1 (threshold {DEFAULT_THRESHOLD})",
}
# Plain text symbols (not emoji): they render in any font, in tables and select boxes alike.
STATE_ICONS = {"queued": "…", "running": "▶", "finished": "✓", "stopped": "■", "interrupted": "⚠", "failed": "✗", "unknown": "?"}
RESUMABLE_STATES = ("stopped", "interrupted", "failed")


def format_duration(seconds: float | None) -> str:
    """"2 h 05 min", "3 min 07 s", "42 s"; "-" when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


@dataclass(frozen=True)
class RunProgress:
    """Where a run stands: `fraction` of its optimiser steps done, and the time left when it can be told.
    `elapsed_s` is the training time of every segment: what the trainer recorded before its last
    (re)start plus the time since."""

    state: str
    fraction: float
    epoch: int  # completed epochs
    epochs: int
    step: int
    total_steps: int
    elapsed_s: float | None
    eta_s: float | None
    images_per_s: float | None
    train_loss: float | None = None  # the latest step line's, or the last epoch's mean for a run too short to log steps

    @property
    def current_epoch(self) -> int:
        """The epoch the run is in, or was in when it ended, counted from 1 (as the trainer's stop message
        counts it): the completed epochs of a finished run, the one after them otherwise."""
        return self.epoch if self.state == "finished" else min(self.epoch + 1, self.epochs)

    @property
    def text(self) -> str:
        if self.state == "queued":
            return "starting the training process..."
        parts = [f"epoch {self.current_epoch} of {self.epochs}"]
        if self.total_steps:
            parts.append(f"step {self.step:,} of {self.total_steps:,}")
        if self.state == "running":
            parts.append(f"about {format_duration(self.eta_s)} left" if self.eta_s is not None else "estimating the time left")
            parts.append(f"running for {format_duration(self.elapsed_s)}")
        else:
            parts.append(f"{self.state} after {format_duration(self.elapsed_s)}" if self.elapsed_s is not None else self.state)
        return " · ".join(parts)


def run_progress(status: Mapping[str, Any], steps: Sequence[Mapping[str, Any]], epochs: Sequence[Mapping[str, Any]],
                 *, now: float | None = None) -> RunProgress:
    """Progress of a run from its status, step records and epoch records.

    Time left comes from the run's own pace since it last (re)started: the mean duration of its recent
    epochs (validation included) once one has finished, else its recent step rate."""
    now = time.time() if now is None else now
    state = str(status.get("state", "unknown"))
    step = int(status.get("step") or 0)
    total = int(status.get("total_steps") or 0)
    epoch = int(status.get("epoch") or 0)
    n_epochs = int(status.get("epochs") or 0)
    per_epoch_steps = int(status.get("steps_per_epoch") or 0)
    if state == "finished":
        fraction = 1.0
    elif total:
        fraction = min(1.0, step / total)
    else:
        fraction = min(1.0, epoch / n_epochs) if n_epochs else 0.0
    started = status.get("started_at")
    before = float(status.get("train_seconds_before") or 0.0)  # segments before a resume
    elapsed = before + float(status.get("finished_at") or now) - float(started) if started is not None else None
    recent_steps = [s for s in steps if started is None or float(s.get("time", 0)) >= float(started)][-6:]
    rate = None
    if len(recent_steps) >= 2:
        dt = float(recent_steps[-1]["time"]) - float(recent_steps[0]["time"])
        ds = int(recent_steps[-1]["step"]) - int(recent_steps[0]["step"])
        rate = ds / dt if dt > 0 and ds > 0 else None
    images_per_s = recent_steps[-1].get("images_per_s") if recent_steps else None
    if images_per_s is None and epochs and (started is None or float(epochs[-1].get("time", 0)) >= float(started)):
        images_per_s = epochs[-1].get("train_images_per_s")  # a run too short to log a step line: its last epoch's pace
    eta = None
    if state == "running" and total:
        remaining = max(0, total - step)
        recent_epochs = [e for e in epochs if started is None or float(e.get("time", 0)) >= float(started)][-3:]
        if recent_epochs and per_epoch_steps:
            per_epoch = sum(float(e.get("epoch_seconds", 0)) for e in recent_epochs) / len(recent_epochs)
            eta = remaining / per_epoch_steps * per_epoch
        elif rate:
            eta = remaining / rate
    # a run too short to log a step line (`train.log_every` steps) still has each epoch's mean training loss
    loss = steps[-1].get("loss") if steps else epochs[-1].get("train_loss") if epochs else None
    return RunProgress(state, fraction, epoch, n_epochs, step, total, elapsed, eta, images_per_s, loss)


@dataclass(frozen=True)
class FoldsProgress:
    """Where a cross-validation (`pcam train --folds K`) stands: its own state, the fold under way (from 1; the first of
    them where several train side by side, `running`) and the progress of each fold started so far. `fraction` counts
    every fold alike; the time left is that of the folds under way plus, for each fold not started, the mean length of
    the folds trained (those under way projected), shared among the folds trained side by side."""

    state: str
    fold: int
    folds: int
    members: tuple[RunProgress, ...]
    running: tuple[int, ...] = ()  # the folds under way (from 1), where several train side by side
    parallel: int = 1  # how many folds the job trains side by side (`pcam train --parallel-folds`)
    started_at: float | None = None  # when the job (last) started: a side-by-side job's time is its wall clock

    @property
    def current(self) -> RunProgress | None:
        return self.members[self.fold - 1] if 0 < self.fold <= len(self.members) else None

    @property
    def side_by_side(self) -> bool:
        """Several folds under way at once (or, for a job stopped or failed, when it ended)."""
        return self.state != "finished" and len(self.running) > 1

    @property
    def fraction(self) -> float:
        return 1.0 if self.state == "finished" else min(1.0, sum(m.fraction for m in self.members) / max(self.folds, 1))

    @property
    def elapsed_s(self) -> float | None:
        if self.state == "running" and self.parallel > 1 and self.started_at is not None:
            return max(0.0, time.time() - self.started_at)
        times = [m.elapsed_s for m in self.members if m.elapsed_s is not None]
        return sum(times) if times else None

    @property
    def eta_s(self) -> float | None:
        if self.state != "running" or self.current is None:
            return None
        under_way = [self.members[f - 1] for f in (self.running if self.side_by_side else (self.fold,)) if f <= len(self.members)]
        left = []
        for member in under_way:
            if member.state == "finished":  # trained: the fold's held-out patches are being scored
                left.append(0.0)
            elif member.eta_s is None or member.elapsed_s is None:
                return None
            else:
                left.append(member.eta_s)
        lengths = [m.elapsed_s for m in self.members if m.state == "finished" and m.elapsed_s is not None]
        if not lengths:
            lengths = [m.elapsed_s + t for m, t in zip(under_way, left) if m.elapsed_s is not None]
        not_started = (self.folds - len(self.members)) * (sum(lengths) / len(lengths) if lengths else 0.0)
        width = max(len(under_way), 1)
        return max(max(left), (sum(left) + not_started) / width)

    @property
    def text(self) -> str:
        current = self.current
        if self.state == "queued" or current is None:
            return "starting the cross-validation..."
        added = " (the folds' times added up)" if self.parallel > 1 else ""  # side by side, they overlapped
        if self.state == "finished":
            return f"{self.folds} folds finished after {format_duration(self.elapsed_s)} of training{added}"
        if self.side_by_side:
            parts = [f"{folds_in_words(self.running, self.folds)} side by side",
                     ", ".join(f"fold {f} " + ("scoring its held-out patches" if self.state == "running" and m.state == "finished"
                                               else _epoch_words(m, "at "))
                               for f in self.running if f <= len(self.members) for m in [self.members[f - 1]])]
        else:
            parts = [f"fold {self.fold} of {self.folds}"]
            if self.state == "running" and current.state == "finished":
                parts.append("scoring its held-out patches" + (", then the ensemble's figures" if self.fold == self.folds else ""))
            else:
                parts.append(_epoch_words(current))
        if self.state == "running":
            eta = self.eta_s
            if eta is None:
                parts.append("estimating the time left")
            elif eta >= 1:  # none left but scoring: said above
                parts.append(f"about {format_duration(eta)} left in all")
            parts.append(f"training for {format_duration(self.elapsed_s)}")
        else:
            parts.append(f"{self.state} after {format_duration(self.elapsed_s)}{added}" if self.elapsed_s is not None else self.state)
        return " · ".join(parts)


def _epoch_words(progress: RunProgress, at: str = "") -> str:
    """"epoch 3 of 54" (the epoch in progress, from 1), or "starting" before a fold's trainer has said how many."""
    return f"{at}epoch {progress.current_epoch} of {progress.epochs}" if progress.epochs else "starting"


def folds_progress(status: Mapping[str, Any], members: Sequence[RunProgress], folds: int) -> FoldsProgress:
    """Progress of a cross-validation from its own status (`fold`: the fold under way, from 1; `folds_running`: those
    under way side by side) and the progress of each of its folds started so far (`run_progress` of
    `folds/fold-<k>`, in order)."""
    running = tuple(int(f) for f in status.get("folds_running") or ())
    fold = int(running[0] if running else status.get("fold") or len(members) or 1)
    started = status.get("started_at")
    return FoldsProgress(str(status.get("state", "unknown")), min(fold, max(len(members), 1)), folds, tuple(members),
                         running, int(status.get("parallel_folds") or 1), float(started) if started is not None else None)


def cross_validation_progress(run: RunDir) -> FoldsProgress:
    """`folds_progress` of the cross-validation in `run` (`RunDir.is_cross_validation`), read from its folders."""
    members = [run.fold(k) for k in range(cross_validation_folds(run))]
    started = [m for m in members if m.status_path.exists()]
    return folds_progress(run.status(), [run_progress(m.status(), m.steps(), m.epochs()) for m in started], len(members))


def epochs_text(summary: RunSummary) -> str:
    """A run's epochs as every view of it says them: "epoch 2 of 3" while it runs (the epoch in
    progress, as its progress line counts), "1/3" (completed of planned) otherwise."""
    done, total = summary.epochs_done, summary.epochs_total
    if summary.state == "running" and done < total:
        return f"epoch {done + 1} of {total}"
    return f"{done}/{total}"


def run_caption(summary: RunSummary) -> str:
    """One line on a run: state, model, epochs and the best validation ROC-AUC so far."""
    best = (summary.best or {}).get("roc_auc")
    epochs = epochs_text(summary)
    which = "cross-validated" if (summary.best or {}).get("cross_validated") else "best"
    return (f"{STATE_ICONS.get(summary.state, '')} {summary.state} · {summary.model} · "
            + (epochs if epochs.startswith("epoch") else f"{epochs} epochs")
            + (f" · {which} ROC-AUC {best:.3f}" if best is not None else ""))


def progress_key(summary: RunSummary) -> tuple:
    """What a page drew of a run that changes while it trains (state, completed epochs, the best epoch
    and its ROC-AUC): a live view whose run's key moved on redraws the whole page, so that the
    sidebar and the runs table keep up with it."""
    best = summary.best or {}
    roc_auc = best.get("roc_auc")
    return summary.state, summary.epochs_done, best.get("epoch"), roc_auc if roc_auc == roc_auc else None  # NaN != NaN


FIGURE_COLUMNS = ("ROC-AUC", "PR-AUC", "accuracy", "F1", "valid loss")


def runs_table(summaries: Sequence[RunSummary], source_names: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per run with its key figures (best epoch by the run's monitored metric)."""
    source_names = dict(source_names or {})
    rows = []
    for s in summaries:
        best = s.best or {}
        rows.append({
            "run": s.run_id,
            "state": f"{STATE_ICONS.get(s.state, '')} {s.state}",
            "model": s.model,
            "data": source_names.get(s.data, s.data),
            "synthetic data": s.synthetic,
            "epochs": epochs_text(s),
            "best epoch": best.get("epoch"),
            "ROC-AUC": best.get("roc_auc"),
            "PR-AUC": best.get("pr_auc"),
            "accuracy": best.get("accuracy"),
            "F1": best.get("f1"),
            "valid loss": best.get("loss"),
            "created": pd.to_datetime(created, unit="s") if (created := s.created_at or s.started_at) else pd.NaT,
        })
    columns = ["run", "state", "model", "data", "synthetic data", "epochs", "best epoch", *FIGURE_COLUMNS, "created"]
    table = pd.DataFrame(rows, columns=columns)
    # numbers stay numbers when no run has one yet (a column of None would read "None" in a table)
    table[list(FIGURE_COLUMNS)] = table[list(FIGURE_COLUMNS)].astype(float)
    table["best epoch"] = table["best epoch"].astype("Int64")
    return table


def state_counts(summaries: Sequence[RunSummary]) -> dict[str, int]:
    """How many runs are in each state (states with no run left out)."""
    counts: dict[str, int] = {}
    for s in summaries:
        counts[s.state] = counts.get(s.state, 0) + 1
    return counts


def learning_curves(summary: RunSummary) -> dict[str, list[dict[str, Any]]]:
    """The epoch records to draw for a run, by curve name: its own (read by `summarize`), or for a cross-validation,
    whose folder holds none, each fold's as "<run> · fold k"."""
    run = RunDir(summary.path)
    folds = cross_validation_folds(run) if not summary.epochs else 0
    if not folds:
        return {summary.run_id: summary.epochs} if summary.epochs else {}
    curves = {f"{summary.run_id} · fold {k + 1}": run.fold(k).epochs() for k in range(folds)}
    return {name: epochs for name, epochs in curves.items() if epochs}


def epoch_frame(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> pd.DataFrame:
    """Epoch records of several runs in one long frame: run, epoch and every `CURVE_METRICS` column."""
    rows = [{"run": run_id, "epoch": e.get("epoch"), **{m: e.get(m) for m in CURVE_METRICS}}
            for run_id, records in runs.items() for e in records]
    return pd.DataFrame(rows, columns=["run", "epoch", *CURVE_METRICS])


def step_frame(steps: Sequence[Mapping[str, Any]], steps_per_epoch: int | None = None) -> pd.DataFrame:
    """Step records as a frame with `step`, `loss`, `lr`, `images_per_s` and fractional `epoch`."""
    frame = pd.DataFrame(list(steps), columns=["step", "loss", "lr", "images_per_s", "epoch", "step_in_epoch"])
    if steps_per_epoch:
        frame["epoch"] = frame["step"] / steps_per_epoch
    return frame
