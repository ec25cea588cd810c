"""One training process's session: the run folder, the model with its optimiser, schedule and EMA, the data, the
progress (`TrainState`), and how they are checkpointed, restored and booked epoch by epoch. `pcam_core.train` runs the
loop over it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from . import distributed as D
from .checkpoint import load_checkpoint, save_checkpoint
from .config import ExperimentConfig
from .distil import Teacher
from .fileio import append_jsonl, atomic_write_with
from .inference import Predictions
from .devices import amp_dtype_for
from .models import count_parameters, create_model
from .optim import EMA, build_optimizer, build_scheduler
from .runs import RunDir, StatusWriter
from .tracking import NullTracker, Tracker

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0
    global_step: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    elapsed: float = 0.0  # training seconds of the segments before this process (see TrainSession.elapsed)
    loss_sum: float = 0.0  # running training loss of the epoch under way, summed over its images
    loss_count: int = 0  # images in loss_sum
    warnings: list[str] = field(default_factory=list)


def _is_better(value: float, best: float | None, monitor: str) -> bool:
    if best is None:
        return True
    return value < best if monitor == "loss" else value > best


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _advance(scheduler: Any, steps: int) -> None:
    """Step a fresh scheduler `steps` times, as training would have (closed forms differ per scheduler,
    and cosine annealing is computed recursively); this also sets the optimiser's rate."""
    import warnings

    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": on purpose here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(steps):
            scheduler.step()


@dataclass
class TrainSession:
    """Everything one training process holds: the run folder, the model and its optimiser, the data,
    the progress (`state`), and how they are saved and restored."""

    config: ExperimentConfig
    run: RunDir
    info: D.DistInfo
    device: torch.device
    status: StatusWriter | None
    data: Any
    model: nn.Module
    train_model: nn.Module
    ema: EMA | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    pos_weight: torch.Tensor
    sampler: DistributedSampler
    steps_per_epoch: int
    total_steps: int
    state: TrainState = field(default_factory=TrainState)
    tracker: Tracker = field(default_factory=NullTracker)  # rank 0's MLflow run, if asked (`pcam_core.tracking`)
    teacher: Teacher | None = None  # `train.teacher`, loaded (`pcam_core.distil`)
    started: float = field(default_factory=time.time)
    last_checkpoint_at: float = field(default_factory=time.time)

    def payload(self) -> dict[str, Any]:
        t, st = self.config.train, self.state
        return {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": st.epoch,
            "step_in_epoch": st.step_in_epoch,
            "global_step": st.global_step,
            "best": {"metric": t.monitor, "value": st.best_value, "epoch": st.best_epoch},
            "bad_epochs": st.bad_epochs,
            "rng": _rng_state(self.device),
            "elapsed": self.elapsed(),
            "epoch_loss_sum": st.loss_sum,
            "epoch_loss_count": st.loss_count,
            "synthetic_data": self.data.synthetic,
        }

    def elapsed(self) -> float:
        return self.state.elapsed + (time.time() - self.started)

    def save(self, path: Path) -> None:
        """Write a checkpoint (rank 0 only). A failed write is reported, not fatal: the previous file
        stays intact and training goes on."""
        if not self.info.is_main:
            return
        try:
            save_checkpoint(path, self.payload())
        except OSError as err:
            msg = f"could not write checkpoint {path.name} ({err.strerror or err}); the previous one is intact"
            log.error(msg)
            self.state.warnings.append(msg)
            if self.status is not None:
                self.status.update(warnings=self.state.warnings[-5:], message=msg)
        if path == self.run.last_checkpoint:
            self.last_checkpoint_at = time.time()

    def track_files(self) -> None:
        """Copy config.json, summary.json (once written) and the best checkpoint (else the last) to the tracker."""
        self.tracker.log_artifacts([self.run.config_path, self.run.summary_path])
        best = next((p for p in (self.run.best_checkpoint, self.run.last_checkpoint) if p.exists()), None)
        if best is not None:
            self.tracker.log_artifacts([best], folder="checkpoints")

    def restore(self) -> None:
        """Load `checkpoints/last.pt` into every part and the progress, if the run has one.

        When the number of epochs was changed on resume (`fit(..., epochs=N)`), the learning-rate
        schedule is not the saved one: it is rebuilt for the new total of steps and continued at the
        step reached, as if the run had been planned with N epochs from the start. Extending a finished
        one-cycle or cosine run thus raises the rate again from its final value to where the longer
        schedule stands at this step, and anneals it to the end of the new total.
        """
        path = self.run.last_checkpoint
        if not path.exists():
            log.info("no checkpoint in %s yet: starting from scratch", self.run.path)
            return
        ckpt = load_checkpoint(path)
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.module.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        saved = ExperimentConfig.from_dict(ckpt["config"])
        saved_epochs = saved.train.epochs
        epochs_changed = saved_epochs != self.config.train.epochs and saved.replace(train={"epochs": self.config.train.epochs}) == self.config
        if self.scheduler is not None and epochs_changed:
            _advance(self.scheduler, ckpt["global_step"])
            log.info("epochs changed from %d to %d: the learning-rate schedule is rebuilt for %d steps and continued "
                     "at step %d (learning rate now %.3g)", saved_epochs, self.config.train.epochs, self.total_steps,
                     ckpt["global_step"], self.optimizer.param_groups[0]["lr"])
        elif self.scheduler is not None and ckpt.get("scheduler"):
            saved_total = ckpt["scheduler"].get("total_steps")
            if saved_total is not None and saved_total != getattr(self.scheduler, "total_steps", saved_total):
                raise ValueError(
                    f"the checkpoint's learning-rate schedule spans {saved_total} steps but the config now implies "
                    f"{self.scheduler.total_steps} (was the batch size edited in config.json?); start a new run instead"
                )
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"], self.device)
        best = ckpt.get("best") or {}
        self.state = TrainState(
            epoch=ckpt["epoch"], step_in_epoch=ckpt["step_in_epoch"], global_step=ckpt["global_step"],
            best_value=best.get("value"), best_epoch=best.get("epoch"), bad_epochs=ckpt.get("bad_epochs", 0),
            elapsed=ckpt.get("elapsed", 0.0), loss_sum=ckpt.get("epoch_loss_sum", 0.0), loss_count=ckpt.get("epoch_loss_count", 0),
        )
        log.info("resumed from %s: epoch %d, step %d of the epoch, global step %d, %.0f s of training so far",
                 path, self.state.epoch + 1, self.state.step_in_epoch, self.state.global_step, self.state.elapsed)

    def record_epoch(self, result: dict[str, Any], metrics: dict[str, Any], preds: Predictions, epoch_start: float) -> None:
        """Book a validated epoch: best/last checkpoints, validation predictions, epochs.jsonl, status."""
        t, st = self.config.train, self.state
        value = metrics.get(t.monitor)
        # "best" is the epoch the run keeps as its model: the last one, when the config says so (`keeps_last_epoch`)
        keep_last = self.config.keeps_last_epoch
        improved = keep_last or (value is not None and _is_better(value, st.best_value, t.monitor))
        if improved:
            st.best_value, st.best_epoch, st.bad_epochs = value, st.epoch, 0
        else:
            st.bad_epochs += 1
        if not self.info.is_main:
            return
        if improved:
            self.save(self.run.best_checkpoint)
            frame = preds.to_frame()
            atomic_write_with(self.run.valid_predictions_path, lambda h: h.write(frame.to_csv(index=False).encode()))
        self.save(self.run.last_checkpoint)
        record = {
            "epoch": st.epoch, "step": st.global_step, "train_loss": result["train_loss"],
            "lr": self.optimizer.param_groups[0]["lr"], "epoch_seconds": time.time() - epoch_start,
            "train_images_per_s": result["images_per_s"],  # this process's training pace over the epoch, validation apart
            "time": time.time(), "is_best": improved, **metrics,
        }
        append_jsonl(self.run.epochs_path, record)
        self.tracker.log_epoch(st.epoch, record)
        roc = f"{metrics['roc_auc']:.4f}" if metrics["roc_auc"] is not None else "n/a"
        log.info("epoch %d/%d: train loss %.4f, valid loss %.4f, ROC-AUC %s, accuracy %.4f%s", st.epoch, t.epochs,
                 result["train_loss"], metrics["loss"], roc, metrics["accuracy"],
                 " (best)" if improved and not keep_last else "")
        if self.status is not None:
            self.status.update(epoch=st.epoch, step=st.global_step, epoch_progress=0.0,
                               best={"metric": t.monitor, "value": st.best_value, "epoch": st.best_epoch})


def build_session(config: ExperimentConfig, run: RunDir, info: D.DistInfo, device: torch.device, status: StatusWriter | None,
                   data: Any) -> TrainSession:
    t = config.train
    torch.manual_seed(t.seed + info.rank)
    np.random.seed(t.seed + info.rank)
    log.info("data: %s%s", data.description, " (SYNTHETIC demo data)" if data.synthetic else "")
    model = create_model(config.model.name, weights=config.model.weights, dropout=config.model.dropout).to(
        device, memory_format=torch.channels_last if t.channels_last else torch.contiguous_format)
    log.info("model %s: %.2f M parameters on %s", config.model.name, count_parameters(model) / 1e6, device)
    train_model: nn.Module = model
    if info.enabled:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        train_model = torch.compile(train_model)
    sampler = DistributedSampler(data.train, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=t.seed, drop_last=True)
    steps_per_epoch = len(sampler) // t.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"the training set has {len(sampler)} patches per process, fewer than the batch size {t.batch_size}; lower --batch-size"
        )
    total_steps = min(steps_per_epoch * t.epochs, t.max_steps or steps_per_epoch * t.epochs)
    optimizer = build_optimizer(model, t)
    amp_dtype = amp_dtype_for(device, t.amp)
    labels = data.train.labels
    n_pos = int((labels == 1).sum())
    pos_weight = t.pos_weight if t.pos_weight is not None else (len(labels) - n_pos) / max(n_pos, 1)
    return TrainSession(
        config=config, run=run, info=info, device=device, status=status, data=data, model=model,
        train_model=train_model, ema=EMA(model, t.ema_decay) if t.ema_decay > 0 else None, optimizer=optimizer,
        scheduler=build_scheduler(optimizer, t, total_steps), amp_dtype=amp_dtype,
        scaler=torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None,
        pos_weight=torch.tensor(pos_weight, device=device, dtype=torch.float32), sampler=sampler,
        steps_per_epoch=steps_per_epoch, total_steps=total_steps,
    )
