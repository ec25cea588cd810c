"""Training: `fit(config, run_dir)` with `train_one_epoch` and `evaluate` as plain functions.

Adam/AdamW on binary cross-entropy with logits (positive-class weight for imbalance), a one-cycle or
cosine schedule, batch augmentation on the device, an exponential moving average of the weights,
validation on every epoch with every metric of `pcam_core.metrics`, early stopping, atomic best/last
checkpoints, a clean stop on SIGTERM, exact resume, AMP on CUDA and DistributedDataParallel under
torchrun. Progress goes to the run folder (see `pcam_core.runs`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from . import distributed as D
from .checkpoint import load_checkpoint, save_checkpoint
from .config import ExperimentConfig
from .data.base import PatchDataset
from .data.loader import SkipBatchesSampler, detect_format, fits_in_memory, make_loader, train_valid_datasets
from .fileio import append_jsonl, atomic_write_json, atomic_write_with, read_jsonl
from .inference import Predictions, autocast_context, predict_loader
from .metrics import binary_metrics, choose_threshold
from .models import count_parameters, create_model, resolve_model_name
from .runs import RunDir, StatusWriter, _process_start_time, prepare_out_dir
from .transforms import train_preset

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


class StopRequested(Exception):
    """SIGTERM/SIGINT arrived; the run saves a checkpoint and ends as "stopped"."""


# -- devices and precision ---------------------------------------------------------------------

def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu or auto")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def amp_dtype_for(device: torch.device, amp: bool | None) -> torch.dtype | None:
    """bf16 autocast on GPUs that support it (fp16 otherwise); on the CPU only when asked (bf16)."""
    if amp is None:
        amp = device.type == "cuda"
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


# -- the moving average of weights ---------------------------------------------------------------

class EMA:
    """Exponential moving average of a model's weights (buffers copied), with a warm-up so early
    averages are not dominated by the random initialisation."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        ema_params = [p for p in self.module.parameters()]
        params = [p.detach() for p in model.parameters()]
        torch._foreach_mul_(ema_params, d)
        torch._foreach_add_(ema_params, params, alpha=1 - d)
        for be, bm in zip(self.module.buffers(), model.buffers()):
            be.copy_(bm)


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
    channels_last: bool = True
    max_steps: int | None = None
    global_step: int = 0
    should_stop: Callable[[], bool] = lambda: False
    on_log: Callable[[dict[str, Any]], None] | None = None
    log_every: int = 10
    checkpoint_due: Callable[[int], None] | None = None


def train_one_epoch(model: nn.Module, loader: DataLoader, ctx: StepContext, epoch: int, step_in_epoch: int = 0) -> dict[str, Any]:
    """Train over `loader` (which already skips the `step_in_epoch` batches done before a resume).

    Returns the epoch's mean loss, the steps done and whether the epoch ended early (a stop request or
    `max_steps`). Raises `NonFiniteLoss` as soon as a loss is NaN or infinite.
    """
    model.train()
    total_loss, total_n = 0.0, 0
    window_loss, window_n, window_start = 0.0, 0, time.perf_counter()
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
        with torch.no_grad():
            x = ctx.augment(images)
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
        if ctx.checkpoint_due:
            ctx.checkpoint_due(step_in_epoch)
    return {"train_loss": total_loss / max(total_n, 1), "step_in_epoch": step_in_epoch, "interrupted": interrupted, "images": total_n}


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
    loader = make_loader(dataset, batch_size, shuffle=False, num_workers=num_workers, sampler=sampler)
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

@dataclass
class TrainState:
    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0
    global_step: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    elapsed: float = 0.0
    warnings: list[str] = field(default_factory=list)


def _is_better(value: float, best: float | None, monitor: str) -> bool:
    if best is None:
        return True
    return value < best if monitor == "loss" else value > best


def _build_optimizer(model: nn.Module, config: ExperimentConfig) -> torch.optim.Optimizer:
    t = config.train
    lr = t.lr
    if t.optimizer == "adamw":
        decay = [p for n, p in model.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=t.weight_decay)


def _build_scheduler(optimizer: torch.optim.Optimizer, config: ExperimentConfig, total_steps: int):
    t = config.train
    if t.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=t.lr, total_steps=max(total_steps, 2), pct_start=max(t.warmup_frac, 1e-3),
            div_factor=25.0, final_div_factor=1e3,
        )
    if t.schedule == "cosine":
        warm = max(1, int(total_steps * t.warmup_frac))
        return torch.optim.lr_scheduler.SequentialLR(
            optimizer,
            [torch.optim.lr_scheduler.LinearLR(optimizer, 0.05, 1.0, warm),
             torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, total_steps - warm), eta_min=t.lr * 1e-3)],
            milestones=[warm],
        )
    return None


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


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


def fit(config: ExperimentConfig, out: str | Path, *, resume: bool = False, progress_bar: bool | None = None) -> dict[str, Any]:
    """Train per `config` into the run folder `out` and return the final summary.

    With `resume`, continue the run in `out` from `checkpoints/last.pt` with the config saved there.
    Under torchrun this runs on every rank; only rank 0 writes the run folder.
    """
    device_pref = config.train.device
    info = D.setup("cuda" if resolve_device(device_pref).type == "cuda" else "cpu")
    device = resolve_device(device_pref, info.local_rank)
    run, lock = RunDir(out), None
    if not resume:  # refuse bad data or model names before anything is written
        resolve_model_name(config.model.name, device)
        detect_format(config.data.path)
    try:
        if info.is_main:
            run, lock = prepare_out_dir(out, config, resume=resume)
        D.barrier(info)
        if resume:
            config = run.config()
            if config.world_size != info.world_size:
                raise ValueError(
                    f"run {run.path} was trained with {config.world_size} process(es); resume it with the same number "
                    f"(now {info.world_size}) so that the batches and the sampler line up"
                )
    except BaseException:
        if lock is not None:
            lock.release()
        D.cleanup()
        raise
    model_name = resolve_model_name(config.model.name, device)
    config = config.replace(model={"name": model_name}, world_size=info.world_size)
    handler = _setup_logging(run, info)
    status = StatusWriter(run) if info.is_main else None
    flag = _SignalFlag()
    flag.install()
    try:
        return _fit(config, run, info, device, resume=resume, status=status, flag=flag, progress_bar=progress_bar)
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


def _fit(
    config: ExperimentConfig,
    run: RunDir,
    info: D.DistInfo,
    device: torch.device,
    *,
    resume: bool,
    status: StatusWriter | None,
    flag: _SignalFlag,
    progress_bar: bool | None,
) -> dict[str, Any]:
    t = config.train
    started = time.time()
    if status is not None:
        for stale in run.path.glob("**/.*.tmp"):  # left by a process killed in the middle of a write
            stale.unlink(missing_ok=True)
        atomic_write_json(run.config_path, config.to_dict())
        status.update(
            state="running", pid=os.getpid(), pid_start=_process_start_time(os.getpid()), host=socket.gethostname(),
            started_at=started, device=str(device), world_size=info.world_size, error=None, message=None,
        )
        status.start_heartbeat()
    torch.manual_seed(t.seed + info.rank)
    np.random.seed(t.seed + info.rank)

    data = train_valid_datasets(config.data.path, format=config.data.format, valid_frac=config.data.valid_frac, seed=config.data.split_seed)
    for ds in (data.train, data.valid):
        source = ds.source
        if config.data.cache == "yes" or (config.data.cache == "auto" and fits_in_memory(source, config.data.cache_max_gb)):
            source.cache()
    workers = config.data.num_workers
    log.info("data: %s%s", data.description, " (SYNTHETIC demo data)" if data.synthetic else "")

    model_name = config.model.name
    model = create_model(model_name, weights=config.model.weights, dropout=config.model.dropout)
    model.to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    log.info("model %s: %.2f M parameters on %s", model_name, count_parameters(model) / 1e6, device)
    ema = EMA(model, t.ema_decay) if t.ema_decay > 0 else None
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
    total_steps = steps_per_epoch * t.epochs
    if t.max_steps is not None:
        total_steps = min(total_steps, t.max_steps)
    optimizer = _build_optimizer(model, config)
    scheduler = _build_scheduler(optimizer, config, total_steps)
    amp_dtype = amp_dtype_for(device, t.amp)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    labels = data.train.labels
    n_pos = int((labels == 1).sum())
    pos_weight_value = t.pos_weight if t.pos_weight is not None else (len(labels) - n_pos) / max(n_pos, 1)
    pos_weight = torch.tensor(pos_weight_value, device=device, dtype=torch.float32)

    state = TrainState()
    if resume and run.last_checkpoint.exists():
        ckpt = load_checkpoint(run.last_checkpoint)
        model.load_state_dict(ckpt["model"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.module.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler"):
            saved_total = ckpt["scheduler"].get("total_steps")
            if saved_total is not None and saved_total != getattr(scheduler, "total_steps", saved_total):
                raise ValueError(
                    f"the checkpoint's learning-rate schedule spans {saved_total} steps but the config now implies "
                    f"{scheduler.total_steps} (were epochs or batch size edited in config.json?); start a new run instead"
                )
            scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"], device)
        best = ckpt.get("best") or {}
        state = TrainState(
            ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"], best.get("value"), best.get("epoch"),
            ckpt.get("bad_epochs", 0), ckpt.get("elapsed", 0.0),
        )
        log.info("resumed from %s: epoch %d, step %d of the epoch, global step %d",
                 run.last_checkpoint, state.epoch + 1, state.step_in_epoch, state.global_step)
    elif resume:
        log.info("no checkpoint in %s yet: starting from scratch", run.path)
    if info.is_main:  # the metrics files hold each epoch and step once, up to the checkpoint
        _trim_jsonl(run.epochs_path, lambda r: r.get("epoch", 0) <= state.epoch)
        _trim_jsonl(run.steps_path, lambda r: r.get("step", 0) <= state.global_step)

    def checkpoint_payload() -> dict[str, Any]:
        return {
            "config": config.to_dict(),
            "model": model.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": state.epoch,
            "step_in_epoch": state.step_in_epoch,
            "global_step": state.global_step,
            "best": {"metric": t.monitor, "value": state.best_value, "epoch": state.best_epoch},
            "bad_epochs": state.bad_epochs,
            "rng": _rng_state(device),
            "elapsed": state.elapsed + (time.time() - session_start),
            "synthetic_data": data.synthetic,
        }

    def write_checkpoint(path: Path) -> bool:
        if not info.is_main:
            return True
        try:
            save_checkpoint(path, checkpoint_payload())
            return True
        except OSError as err:
            msg = f"could not write checkpoint {path.name} ({err.strerror or err}); the previous one is intact"
            log.error(msg)
            state.warnings.append(msg)
            if status is not None:
                status.update(warnings=state.warnings[-5:], message=msg)
            return False

    session_start = time.time()
    last_ckpt_time = [time.time()]
    augment = train_preset(config.augment).to(device)

    def should_stop() -> bool:
        return D.any_rank(flag.raised.is_set(), info, device)

    def on_log(record: dict[str, Any]) -> None:
        if info.is_main:
            record["time"] = time.time()
            append_jsonl(run.steps_path, record)
            if status is not None:
                status.update(step=record["step"], epoch_progress=record["step_in_epoch"] / steps_per_epoch)

    def checkpoint_due(step_in_epoch: int) -> None:
        if t.checkpoint_minutes > 0 and time.time() - last_ckpt_time[0] > t.checkpoint_minutes * 60:
            state.step_in_epoch = step_in_epoch
            state.global_step = ctx.global_step
            write_checkpoint(run.last_checkpoint)
            last_ckpt_time[0] = time.time()

    ctx = StepContext(
        optimizer=optimizer, scheduler=scheduler, augment=augment, pos_weight=pos_weight, device=device,
        amp_dtype=amp_dtype, scaler=scaler, ema=ema, label_smoothing=t.label_smoothing,
        channels_last=t.channels_last, max_steps=t.max_steps, global_step=state.global_step,
        should_stop=should_stop, on_log=on_log, log_every=t.log_every, checkpoint_due=checkpoint_due,
    )
    if status is not None:
        status.update(
            epoch=state.epoch, epochs=t.epochs, step=state.global_step, total_steps=total_steps,
            steps_per_epoch=steps_per_epoch, model=model_name, synthetic_data=data.synthetic,
        )
    log.info("training %s for %d epochs of %d steps (global batch %d, lr %g, pos_weight %.3f, amp %s)",
             model_name, t.epochs, steps_per_epoch, config.global_batch_size, t.lr, pos_weight_value, amp_dtype)
    show_bar = (progress_bar if progress_bar is not None else sys.stderr.isatty()) and info.is_main
    final_reason = "finished"
    while state.epoch < t.epochs:
        if ctx.max_steps is not None and ctx.global_step >= ctx.max_steps:
            final_reason = "max_steps"
            break
        epoch = state.epoch
        sampler.set_epoch(epoch)
        skip = state.step_in_epoch * t.batch_size
        loader = make_loader(data.train, t.batch_size, shuffle=False, num_workers=workers, drop_last=True,
                             sampler=SkipBatchesSampler(sampler, skip) if skip else sampler, ids=False)
        loader_iter: Any = loader
        if show_bar:
            from tqdm import tqdm

            loader_iter = tqdm(loader, total=len(loader), desc=f"epoch {epoch + 1}/{t.epochs}", unit="batch", leave=False)
        epoch_start = time.time()
        result = train_one_epoch(train_model, loader_iter, ctx, epoch, state.step_in_epoch)
        state.global_step = ctx.global_step
        state.step_in_epoch = result["step_in_epoch"]
        if result["interrupted"] and flag.raised.is_set():
            write_checkpoint(run.last_checkpoint)
            if status is not None:
                sig = signal.Signals(flag.signum).name if flag.signum else "a signal"
                status.update(state="stopped", message=f"stopped by {sig} at epoch {epoch + 1}, step {state.global_step}; "
                              "checkpoint saved, resume to continue", finished_at=time.time(), step=state.global_step)
            log.info("stopped by request at global step %d; checkpoint written", state.global_step)
            raise StopRequested()
        # validation on every epoch (also on a partial last epoch cut short by max_steps)
        eval_model = ema.module if ema is not None else model
        metrics, preds = evaluate(eval_model, data.valid, device, info, batch_size=max(256, t.batch_size),
                                  num_workers=workers, amp_dtype=amp_dtype, channels_last=t.channels_last, pos_weight=pos_weight)
        state.epoch = epoch + 1
        state.step_in_epoch = 0
        value = metrics.get(t.monitor)
        improved = value is not None and _is_better(value, state.best_value, t.monitor)
        if improved:
            state.best_value, state.best_epoch, state.bad_epochs = value, state.epoch, 0
        else:
            state.bad_epochs += 1
        record = {
            "epoch": state.epoch, "step": state.global_step, "train_loss": result["train_loss"],
            "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": time.time() - epoch_start,
            "time": time.time(), "is_best": improved, **{k: v for k, v in metrics.items()},
        }
        if info.is_main:
            if improved:
                write_checkpoint(run.best_checkpoint)
                frame = preds.to_frame()
                atomic_write_with(run.valid_predictions_path, lambda h: h.write(frame.to_csv(index=False).encode()))
            write_checkpoint(run.last_checkpoint)
            last_ckpt_time[0] = time.time()
            append_jsonl(run.epochs_path, record)
            log.info("epoch %d/%d: train loss %.4f, valid loss %.4f, ROC-AUC %s, accuracy %.4f%s",
                     state.epoch, t.epochs, result["train_loss"], metrics["loss"],
                     f"{metrics['roc_auc']:.4f}" if metrics["roc_auc"] is not None else "n/a", metrics["accuracy"],
                     " (best)" if improved else "")
            if status is not None:
                status.update(epoch=state.epoch, step=state.global_step, epoch_progress=0.0,
                              best={"metric": t.monitor, "value": state.best_value, "epoch": state.best_epoch})
        if result["interrupted"]:  # max_steps reached inside the epoch
            final_reason = "max_steps"
            break
        if t.early_stopping and state.bad_epochs >= t.early_stopping:
            final_reason = "early_stopping"
            log.info("early stopping: no improvement of %s for %d epochs", t.monitor, state.bad_epochs)
            break

    elapsed = state.elapsed + (time.time() - session_start)
    summary = {
        "run_id": run.run_id, "model": model_name, "epochs_done": state.epoch, "global_step": state.global_step,
        "ended_by": final_reason, "best_epoch": state.best_epoch, "monitor": t.monitor, "best_value": state.best_value,
        "train_seconds": elapsed, "synthetic_data": data.synthetic, "warnings": state.warnings,
        "best_metrics": next((e for e in reversed(run.epochs()) if e.get("is_best")), None) if info.is_main else None,
    }
    if info.is_main:
        atomic_write_json(run.summary_path, summary)
        if status is not None:
            status.update(state="finished", finished_at=time.time(), message=f"finished ({final_reason})",
                          epoch=state.epoch, step=state.global_step)
        log.info("finished after %d epochs in %.1f min (%s); best %s %.4f at epoch %s", state.epoch, elapsed / 60,
                 final_reason, t.monitor, state.best_value if state.best_value is not None else float("nan"), state.best_epoch)
    D.barrier(info)
    return summary
