"""Training: `fit(config, run_dir)` with `train_one_epoch` and `evaluate` as plain functions.

Adam/AdamW on binary cross-entropy with logits (positive-class weight for imbalance), a one-cycle or
cosine schedule, batch augmentation on the device, an exponential moving average of the weights,
validation on every epoch with every metric of `pcam_core.metrics`, early stopping, atomic best/last
checkpoints ("best" is the epoch the run keeps: by `train.monitor`, or the last where `config.keeps_last_epoch`),
a clean stop on SIGTERM, exact resume, AMP on CUDA and DistributedDataParallel under torchrun. Progress goes to
the run folder (see `pcam_core.runs`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from . import distributed as D
from .posthoc import fit_posthoc
from .checkpoint import load_checkpoint
from .config import ExperimentConfig
from .data.base import PatchDataset
from .data.loader import SkipBatchesSampler, fits_in_memory, make_loader, run_datasets
from .data.overrides import apply_overrides
from .distil import Teacher, load_teacher
from .fileio import append_jsonl, atomic_write_json, atomic_write_with, read_jsonl
from .inference import Predictions, autocast_context, predict_loader
from .metrics import binary_metrics, choose_threshold
from .devices import resolve_device
from .models import resolve_model_name
from .optim import EMA
from .runs import RunDir, StatusWriter, prepare_out_dir, process_start_time
from .train_session import TrainSession, build_session
from .tracking import FAILED, FINISHED, KILLED, NullTracker, Tracker, create_tracker
from .transforms import mixup, train_preset

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


class StopRequested(Exception):
    """SIGTERM/SIGINT arrived; the run saves a checkpoint and ends as "stopped"."""


# -- one epoch -------------------------------------------------------------------------------------

@dataclass
class StepContext:
    """What `train_one_epoch` needs besides the model and the data."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    augment: nn.Module
    pos_weight: torch.Tensor | None
    device: torch.device
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    ema: EMA | None = None
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Beta(a, a) of `transforms.mixup`; 0 off
    teacher: Teacher | None = None  # distillation (`pcam_core.distil`): targets lean towards its probabilities
    distil: float = 0.5  # how far: target = (1 - distil) * label + distil * the teacher's probability
    channels_last: bool = True
    max_steps: int | None = None
    global_step: int = 0
    should_stop: Callable[[], bool] = lambda: False
    on_log: Callable[[dict[str, Any]], None] | None = None
    log_every: int = 10
    checkpoint_due: Callable[[int, float, int], None] | None = None  # (step_in_epoch, loss_sum, loss_count)
    on_step: Callable[[dict[str, Any]], None] | None = None  # after every step: a progress bar


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    ctx: StepContext,
    epoch: int,
    step_in_epoch: int = 0,
    loss_sum: float = 0.0,
    loss_count: int = 0,
) -> dict[str, Any]:
    """Train over `loader` (which already skips the `step_in_epoch` batches done before a resume).

    `loss_sum` and `loss_count` carry the epoch's running loss (summed over images) from before a
    resume, so that a resumed epoch reports the same mean loss as an uninterrupted one. Returns the
    epoch's mean loss (with its running sum and count), the steps done and whether the epoch ended
    early (a stop request or `max_steps`). Raises `NonFiniteLoss` as soon as a loss is NaN or infinite.
    """
    model.train()
    total_loss, total_n = loss_sum, loss_count
    window_loss, window_n, window_start = 0.0, 0, time.perf_counter()
    started = window_start  # this call's pace (`images_per_s`): the images before a resume were trained at another time
    interrupted = False
    for batch in loader:
        if ctx.should_stop():
            interrupted = True
            break
        if ctx.max_steps is not None and ctx.global_step >= ctx.max_steps:
            interrupted = True
            break
        images = batch["image"].to(ctx.device, non_blocking=True)
        targets = batch["label"].to(ctx.device, non_blocking=True).float()
        if ctx.teacher is not None:  # before mixup, which blends the targets as it blends the patches
            targets = ctx.teacher.targets(targets, batch["index"], ctx.distil)
        with torch.no_grad():
            x = ctx.augment(images)
            x, targets = mixup(x, targets, ctx.mixup)
            if ctx.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        if ctx.label_smoothing:
            targets = targets * (1 - ctx.label_smoothing) + 0.5 * ctx.label_smoothing
        with autocast_context(ctx.device, ctx.amp_dtype):
            logits = model(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=ctx.pos_weight)
        value = loss.detach()
        if not torch.isfinite(value):
            raise NonFiniteLoss(f"loss became {value.item()} at epoch {epoch + 1}, step {ctx.global_step + 1}")
        ctx.optimizer.zero_grad(set_to_none=True)
        if ctx.scaler is not None:
            ctx.scaler.scale(loss).backward()
            ctx.scaler.step(ctx.optimizer)
            ctx.scaler.update()
        else:
            loss.backward()
            ctx.optimizer.step()
        if ctx.scheduler is not None:
            ctx.scheduler.step()
        ctx.global_step += 1
        step_in_epoch += 1
        if ctx.ema is not None:
            ctx.ema.update(_unwrap(model), ctx.global_step)
        n = images.shape[0]
        loss_value = float(value)
        total_loss += loss_value * n
        total_n += n
        window_loss += loss_value * n
        window_n += n
        if ctx.on_log and ctx.global_step % ctx.log_every == 0:
            elapsed = time.perf_counter() - window_start
            ctx.on_log({
                "step": ctx.global_step, "epoch": epoch + 1, "step_in_epoch": step_in_epoch,
                "loss": window_loss / max(window_n, 1), "lr": ctx.optimizer.param_groups[0]["lr"],
                "images_per_s": window_n / elapsed if elapsed > 0 else None,
            })
            window_loss, window_n, window_start = 0.0, 0, time.perf_counter()
        if ctx.on_step:
            ctx.on_step({"step": ctx.global_step, "epoch": epoch + 1, "step_in_epoch": step_in_epoch, "loss": loss_value, "images": n})
        if ctx.checkpoint_due:
            ctx.checkpoint_due(step_in_epoch, total_loss, total_n)
    return {"train_loss": total_loss / max(total_n, 1), "step_in_epoch": step_in_epoch, "interrupted": interrupted,
            "images": total_n, "loss_sum": total_loss, "loss_count": total_n,
            "images_per_s": (total_n - loss_count) / max(time.perf_counter() - started, 1e-9)}


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DistributedDataParallel
    return getattr(model, "_orig_mod", model)  # torch.compile


# -- evaluation ------------------------------------------------------------------------------------

def evaluate(
    model: nn.Module,
    dataset: PatchDataset,
    device: torch.device,
    info: D.DistInfo,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    pos_weight: torch.Tensor | None = None,
) -> tuple[dict[str, Any], Predictions]:
    """Metrics of `model` on `dataset`, from the predictions of every rank gathered together (so
    ROC-AUC is computed over all of them, not averaged per rank). Every rank gets the same result."""
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=False) if info.enabled else None
    loader = make_loader(dataset, batch_size, shuffle=False, num_workers=num_workers, sampler=sampler, ids=True)
    local = predict_loader(model, loader, device, amp_dtype=amp_dtype, channels_last=channels_last)
    preds = Predictions.concat(D.gather_objects(local, info)).deduplicated()
    metrics = binary_metrics(preds.labels, preds.probs, 0.5)
    probs = np.clip(preds.probs, 1e-7, 1 - 1e-7)
    weight = float(pos_weight.item()) if pos_weight is not None else 1.0
    losses = -(weight * preds.labels * np.log(probs) + (1 - preds.labels) * np.log(1 - probs))
    metrics["loss"] = float(losses.mean())
    if metrics["roc_auc"] is not None:
        metrics["threshold_youden"] = choose_threshold(preds.labels, preds.probs, "youden")
    return metrics, preds


# -- the run ---------------------------------------------------------------------------------------

def _trim_jsonl(path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Rewrite a metrics file keeping only the records `keep` accepts (used on resume so that every
    epoch and step appears exactly once, even after a kill -9 between a write and a checkpoint)."""
    if path.exists():
        records = [r for r in read_jsonl(path) if keep(r)]
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        atomic_write_with(path, lambda h: h.write(text.encode()))


class _SignalFlag:
    """Turns SIGTERM/SIGINT into a flag the loop polls, so the step under way finishes and a
    checkpoint is written before the process ends."""

    def __init__(self) -> None:
        self.raised = threading.Event()
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        self.raised.set()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _setup_logging(run: RunDir, info: D.DistInfo) -> logging.Handler | None:
    if not info.is_main:  # one voice: other ranks report only problems
        logging.getLogger("pcam_core").setLevel(logging.WARNING)
        return None
    handler = logging.FileHandler(run.log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("pcam_core")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


def fit(
    config: ExperimentConfig,
    out: str | Path,
    *,
    resume: bool = False,
    epochs: int | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train per `config` into the run folder `out` and return the final summary.

    With `resume`, continue the run in `out` from `checkpoints/last.pt` with the config saved there
    (`config` is then not used); `epochs` gives the resumed run a new number of epochs, more to extend
    a finished run or fewer to end a longer one sooner (see `TrainSession.restore` for the schedule).
    The model name and the data are checked before the run folder is created or touched, so bad data
    leaves nothing behind. `on_step` is called on rank 0 after every optimiser step with the progress:
    epoch, epochs, step, total_steps, loss, and the images of the step over every process.
    Under torchrun this runs on every rank; only rank 0 writes the run folder.
    """
    run, lock = RunDir(out), None
    if resume:
        config = _resume_config(run, epochs)
    elif epochs is not None:
        raise ValueError("epochs= changes the number of epochs of a resumed run; for a new run set config.train.epochs")
    device_pref = config.train.device
    info = D.setup("cuda" if resolve_device(device_pref).type == "cuda" else "cpu")
    device = resolve_device(device_pref, info.local_rank)
    try:
        model_name = resolve_model_name(config.model.name, device)
        data = _load_data(config, _overrides_file(config, run, resume=resume))  # a data error ends here, before a run folder exists
        tracker = create_tracker(config.tracking) if info.is_main else NullTracker()  # so does a missing mlflow
        if info.is_main:
            run, lock = prepare_out_dir(out, config, resume=resume)
        D.barrier(info)
        if resume and config.world_size != info.world_size:
            raise ValueError(
                f"run {run.path} was trained with {config.world_size} process(es); resume it with the same number "
                f"(now {info.world_size}) so that the batches and the sampler line up"
            )
    except BaseException:
        if lock is not None:
            lock.release()
        D.cleanup()
        raise
    config = config.replace(model={"name": model_name}, world_size=info.world_size)
    handler = _setup_logging(run, info)
    status = StatusWriter(run) if info.is_main else None
    flag = _SignalFlag()
    flag.install()
    try:
        return _fit(config, run, info, device, data, resume=resume, status=status, flag=flag, tracker=tracker,
                    on_step=on_step if info.is_main else None)
    except StopRequested:
        raise
    except BaseException as err:
        if status is not None:
            reason = f"{type(err).__name__}: {err}" if not isinstance(err, KeyboardInterrupt) else "interrupted"
            status.update(state="failed", error=reason, message=reason, finished_at=time.time())
            log.error("run failed: %s", reason)
            if handler is not None:  # the traceback is for the log file, not the user's terminal
                handler.stream.write(traceback.format_exc())
                handler.flush()
        tracker.end(FAILED)
        raise
    finally:
        if status is not None:
            status.stop_heartbeat()
        flag.restore()
        if handler is not None:
            logging.getLogger("pcam_core").removeHandler(handler)
            handler.close()
        if lock is not None:
            lock.release()
        D.cleanup()


def _resume_config(run: RunDir, epochs: int | None) -> ExperimentConfig:
    """The saved config of the run to resume, with its new number of `epochs` if one is given. Fewer
    epochs than the checkpoint has already trained (or begun) are refused."""
    run.check_resumable()
    config = run.config()
    status = run.status()
    done = status.get("epoch", config.train.epochs)
    if status.get("state") == "finished" and (epochs is None or epochs == done):  # fewer: refused below, saying so
        raise ValueError(
            f"{run.path} has finished training ({done} of {config.train.epochs} epoch(s)); there is nothing to resume. "
            f"To train it longer, give a new total number of epochs: "
            f"`pcam train --out {run.path} --resume --epochs {max(done, config.train.epochs) + 1}` (or more)"
        )
    if epochs is None or epochs == config.train.epochs:
        return config
    config = config.replace(train={"epochs": epochs})  # validated: at least 1
    if run.last_checkpoint.exists():
        ckpt = load_checkpoint(run.last_checkpoint)
        begun = ckpt["epoch"] + (1 if ckpt["step_in_epoch"] else 0)
        if epochs < begun:
            raise ValueError(
                f"cannot resume {run.path} with --epochs {epochs}: it has already trained {ckpt['epoch']} epoch(s)"
                + (f" and part of epoch {begun}" if ckpt["step_in_epoch"] else "") + f"; give at least {begun}"
            )
    return config


def _load_data(config: ExperimentConfig, overrides: Path | None = None) -> Any:
    """Open (and check) the training and validation sets, cached in RAM per `config.data.cache`, with
    the reviewed labels of `overrides` (a review export) applied to the training set."""
    data = run_datasets(config)
    for ds in (data.train, data.valid):
        if config.data.cache == "yes" or (config.data.cache == "auto" and fits_in_memory(ds.source, config.data.cache_max_gb)):
            ds.source.cache()
    if overrides is not None:
        data.train, data.overrides = apply_overrides(data.train, overrides)
        c = data.overrides
        data.description += f"; reviewed labels from {overrides}: {c.flipped} flipped, {c.dropped} dropped, {c.unmatched} unmatched"
    return data


def _overrides_file(config: ExperimentConfig, run: RunDir, *, resume: bool) -> Path | None:
    """The review export to train with: the run's own copy when resuming (the original may have changed
    since), else `config.data.label_overrides`."""
    if config.data.label_overrides is None:
        return None
    return run.label_overrides_path if resume and run.label_overrides_path.exists() else Path(config.data.label_overrides)


def _fit(
    config: ExperimentConfig,
    run: RunDir,
    info: D.DistInfo,
    device: torch.device,
    data: Any,
    *,
    resume: bool,
    status: StatusWriter | None,
    flag: _SignalFlag,
    tracker: Tracker,
    on_step: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    t = config.train
    if status is not None:
        for stale in run.path.glob("**/.*.tmp"):  # left by a process killed in the middle of a write
            stale.unlink(missing_ok=True)
        run.write_config(config)
        status.update(
            state="running", pid=os.getpid(), pid_start=process_start_time(os.getpid()), host=socket.gethostname(),
            started_at=time.time(), device=str(device), world_size=info.world_size, error=None, message=None,
            created_at=run.raw_status().get("created_at") or time.time(),  # a folder made by `pcam train` has none yet
        )
        status.start_heartbeat()
    s = build_session(config, run, info, device, status, data)
    s.teacher = load_teacher(config, data.train, data.valid, device)  # before any training: a leaking teacher is refused here
    if resume:
        s.restore()
    if s.teacher is not None and s.teacher.warning and s.teacher.warning not in s.state.warnings:
        log.warning(s.teacher.warning)
        s.state.warnings.append(s.teacher.warning)
    if data.overrides is not None and info.is_main:
        run.record_label_overrides(_overrides_file(config, run, resume=resume), data.overrides.as_dict())
        if (warning := data.overrides.warning(config.data.label_overrides)) and warning not in s.state.warnings:
            log.warning(warning)
            s.state.warnings.append(warning)
    if status is not None and s.state.warnings:  # said while the run trains (the Train page), not only in its summary
        status.update(warnings=s.state.warnings[-5:])
    s.tracker = tracker
    tracker.start(run, synthetic=data.synthetic, name=config.name or None)
    tracker.log_params(config)
    st = s.state
    if info.is_main:  # the metrics files hold each epoch and step once, up to the checkpoint
        _trim_jsonl(run.epochs_path, lambda r: r.get("epoch", 0) <= st.epoch)
        _trim_jsonl(run.steps_path, lambda r: r.get("step", 0) <= st.global_step)

    def on_log(record: dict[str, Any]) -> None:
        if info.is_main:
            append_jsonl(run.steps_path, {**record, "time": time.time()})
            if status is not None:
                status.update(step=record["step"], epoch_progress=record["step_in_epoch"] / s.steps_per_epoch)

    def checkpoint_due(step_in_epoch: int, loss_sum: float, loss_count: int) -> None:
        if t.checkpoint_minutes > 0 and time.time() - s.last_checkpoint_at > t.checkpoint_minutes * 60:
            st.step_in_epoch, st.global_step = step_in_epoch, ctx.global_step
            st.loss_sum, st.loss_count = loss_sum, loss_count
            s.save(run.last_checkpoint)

    def step_done(record: dict[str, Any]) -> None:
        assert on_step is not None
        on_step({**record, "epochs": t.epochs, "total_steps": s.total_steps, "images": record["images"] * info.world_size})

    ctx = StepContext(
        optimizer=s.optimizer, scheduler=s.scheduler, augment=train_preset(config.augment).to(device), pos_weight=s.pos_weight,
        device=device, amp_dtype=s.amp_dtype, scaler=s.scaler, ema=s.ema, label_smoothing=t.label_smoothing,
        mixup=config.augment.mixup, teacher=s.teacher, distil=t.distil, channels_last=t.channels_last, max_steps=t.max_steps, global_step=st.global_step,
        should_stop=lambda: D.any_rank(flag.raised.is_set(), info, device), on_log=on_log, log_every=t.log_every,
        checkpoint_due=checkpoint_due, on_step=step_done if on_step is not None else None,
    )
    if status is not None:  # the time trained before this process, which `started_at` does not count
        status.update(epoch=st.epoch, epochs=t.epochs, step=st.global_step, total_steps=s.total_steps,
                      steps_per_epoch=s.steps_per_epoch, model=config.model.name, synthetic_data=s.data.synthetic,
                      train_seconds_before=st.elapsed)
    log.info("training %s for %d epochs of %d steps (global batch %d, lr %g, pos_weight %.3f, amp %s)", config.model.name,
             t.epochs, s.steps_per_epoch, config.global_batch_size, t.lr, float(s.pos_weight), s.amp_dtype)
    ended_by = "finished"
    while st.epoch < t.epochs:
        if t.max_steps is not None and ctx.global_step >= t.max_steps:
            ended_by = "max_steps"
            break
        epoch, epoch_start = st.epoch, time.time()
        s.sampler.set_epoch(epoch)
        skip = st.step_in_epoch * t.batch_size
        loader: Any = make_loader(s.data.train, t.batch_size, shuffle=False, num_workers=config.data.num_workers, drop_last=True,
                                  sampler=SkipBatchesSampler(s.sampler, skip) if skip else s.sampler, ids=False)
        result = train_one_epoch(s.train_model, loader, ctx, epoch, st.step_in_epoch, st.loss_sum, st.loss_count)
        st.global_step, st.step_in_epoch = ctx.global_step, result["step_in_epoch"]
        st.loss_sum, st.loss_count = result["loss_sum"], result["loss_count"]
        if result["interrupted"] and flag.raised.is_set():
            s.save(run.last_checkpoint)
            if status is not None:
                # In the words of who asked (the dashboard's Stop and `pcam stop` send SIGTERM, a terminal's
                # Ctrl-C SIGINT), the epoch counted from 1 as the dashboard's progress line counts it.
                status.update(state="stopped", message=f"stopped on request (Stop on the dashboard, `pcam stop` or Ctrl-C) "
                              f"at epoch {epoch + 1} of {t.epochs}, step {st.global_step:,} of {s.total_steps:,}; "
                              "checkpoint saved", finished_at=time.time(), step=st.global_step)
            log.info("stopped by request at global step %d; checkpoint written", st.global_step)
            s.track_files()
            tracker.end(KILLED)
            raise StopRequested()
        # validation on every epoch (also on a partial last epoch cut short by max_steps)
        metrics, preds = evaluate(s.ema.module if s.ema is not None else s.model, s.data.valid, device, info,
                                  batch_size=max(256, t.batch_size), num_workers=config.data.num_workers,
                                  amp_dtype=s.amp_dtype, channels_last=t.channels_last, pos_weight=s.pos_weight)
        st.epoch, st.step_in_epoch, st.loss_sum, st.loss_count = epoch + 1, 0, 0.0, 0
        s.record_epoch(result, metrics, preds, epoch_start)
        if result["interrupted"]:  # max_steps reached inside the epoch
            ended_by = "max_steps"
            break
        if t.early_stopping and st.bad_epochs >= t.early_stopping:
            ended_by = "early_stopping"
            log.info("early stopping: no improvement of %s for %d epochs", t.monitor, st.bad_epochs)
            break
    return _finish(s, ended_by)


def _finish(s: TrainSession, ended_by: str) -> dict[str, Any]:
    st, run, t = s.state, s.run, s.config.train
    summary = {
        "run_id": run.run_id, "model": s.config.model.name, "epochs_done": st.epoch, "global_step": st.global_step,
        "ended_by": ended_by, "best_epoch": st.best_epoch, "monitor": t.monitor, "best_value": st.best_value,
        "train_seconds": s.elapsed(), "synthetic_data": s.data.synthetic, "warnings": st.warnings,
        "teacher": s.teacher.source if s.teacher is not None else None,
        "best_metrics": run.best_epoch() if s.info.is_main else None,
        "label_overrides": s.data.overrides.as_dict() if s.data.overrides is not None else None,
    }
    if s.info.is_main:
        fit_posthoc(run, s.device)
        atomic_write_json(run.summary_path, summary)
        if s.status is not None:
            s.status.update(state="finished", finished_at=time.time(), message=f"finished ({ended_by})",
                            epoch=st.epoch, step=st.global_step)
        best = st.best_value if st.best_value is not None else float("nan")
        # the summary's training time, as `pcam train` prints it (not the calibration and guard fitted since)
        log.info("finished after %d epoch%s in %.1f min (%s); %s %s %.4f at epoch %s", st.epoch, "" if st.epoch == 1 else "s",
                 summary["train_seconds"] / 60, ended_by,
                 "kept the last epoch:" if s.config.keeps_last_epoch else "best", t.monitor, best, st.best_epoch)
        s.track_files()
        s.tracker.end(FINISHED)
    D.barrier(s.info)
    return summary
