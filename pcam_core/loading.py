"""One loader for every face: a run argument (a run folder or `bundled`) becomes the model to score
with, together with what decides its answers: the run's own threshold and its calibration.

`pcam predict`, `evaluate`, `explain`, `slide`, `robustness`, `export`, `pcam serve`, the dashboard and
`load_predictor` all load through `load_run_model`, so the same patch gets the same call from each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .calibration import Calibration, load_calibration
from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from .config import ExperimentConfig
from .decision import DEFAULT_THRESHOLD, check_threshold
from .devices import resolve_device
from .ensemble import load_ensemble, read_record
from .fileio import file_versions
from .models import EnsembleModel
from .runs import RunArg, RunRef, resolve_run
from .scope import ScopeModel, load_scope


@dataclass(frozen=True)
class RunModel:
    """A run's model in eval mode on `device`, with its threshold and calibration."""

    run: RunRef
    model: nn.Module  # returns logits of normalised images
    config: ExperimentConfig
    info: dict[str, Any]  # the checkpoint's bookkeeping (epoch, threshold, ...), no weights
    checkpoint: Path
    device: torch.device
    threshold: float  # the run's own threshold (recorded in its checkpoint), else DEFAULT_THRESHOLD
    calibration: Calibration | None  # the run's fitted temperature, or None
    scope: ScopeModel | None = None  # the run's out-of-scope guard (`pcam_core.scope`), or None when it has none
    calibration_tta: Calibration | None = None  # the temperature fitted on TTA predictions (cross-validated runs), or None

    @property
    def model_name(self) -> str:
        return self.config.model.name

    @property
    def epoch(self) -> int | None:
        return self.info.get("epoch")

    @property
    def is_ensemble(self) -> bool:
        return isinstance(self.model, EnsembleModel)

    def calibration_for(self, *, tta: bool) -> Calibration | None:
        """The temperature of the scoring mode applied: fitted on TTA predictions where the run has one."""
        return self.calibration_tta if tta and self.calibration_tta is not None else self.calibration

    def calibrated(self, probs: np.ndarray, *, tta: bool = False) -> np.ndarray | None:
        """Calibrated probabilities (with the temperature of the scoring mode), or None when the run has none."""
        calibration = self.calibration_for(tta=tta)
        return None if calibration is None else calibration.apply(np.asarray(probs, dtype=np.float64))


def threshold_of(info: dict[str, Any]) -> float:
    """The threshold a checkpoint records (the bundled model records the one it was judged at), else the default."""
    value = info.get("threshold")
    return DEFAULT_THRESHOLD if value is None else check_threshold(value, "the checkpoint's threshold")


def run_threshold(run: RunArg, checkpoint: str = "best") -> float:
    """A run's own threshold without building its model (an ensemble's is in its `ensemble.json`)."""
    ref = resolve_run(run)
    if ref.folder.is_ensemble:
        return threshold_of(read_record(ref.folder))
    return threshold_of(load_checkpoint(ref.checkpoint(checkpoint)))


def load_run_model(run: RunArg, *, checkpoint: str = "best", device: str | torch.device = "auto",
                   posthoc: bool = True) -> RunModel:
    """The model of a run folder or of `bundled` (its moving-average weights when it kept them), with its
    threshold and calibration. `checkpoint`: "best" (the last one when none was validated yet) or "last".
    `posthoc=False` leaves out what is fitted after the weights (`load_posthoc`: all None), for what refits it: a
    damaged or mismatched guard or calibration must not stop `pcam scope` from replacing it."""
    ref = resolve_run(run)
    path = ref.checkpoint(checkpoint)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    try:
        if ref.folder.is_ensemble:
            model, config, info = load_ensemble(ref.folder, dev, checkpoint)
        else:
            model, config, info = model_from_checkpoint(path, dev)
    except CheckpointError as err:
        last = None if ref.bundled else ref.folder.last_checkpoint
        if last is not None and last != path and last.exists():
            raise CheckpointError(f"{err}; the run's last checkpoint may be whole: try --checkpoint last") from err
        raise
    calibration, tta_calibration, scope = load_posthoc(ref, config.model.name) if posthoc else (None, None, None)
    return RunModel(ref, model, config, info, path, dev, threshold_of(info), calibration, scope, tta_calibration)


def load_posthoc(run: RunArg, model_name: str) -> tuple[Calibration | None, Calibration | None, ScopeModel | None]:
    """What is fitted on a run after its weights (`pcam_core.posthoc`): (its calibration, its calibration of TTA
    predictions, its out-of-scope guard), each None where the run has none. The guard must be of `model_name`."""
    ref = resolve_run(run)
    scope = load_scope(ref.folder.scope_path)
    if scope is not None and scope.model_name != model_name:
        raise ValueError(f"{ref.folder.scope_path}: the out-of-scope guard was fitted for {scope.model_name}, the run's "
                         f"model is {model_name}; refit it (`pcam scope --run {ref.arg}`) or delete the file")
    tta_calibration = load_calibration(ref, tta=True) if ref.folder.calibration_tta_path.exists() else None
    return load_calibration(ref), tta_calibration, scope


def posthoc_version(run: RunArg) -> tuple:
    """The versions (`fileio.file_versions`) of what `load_posthoc` reads: `pcam calibrate` or `pcam scope` rewrites
    those files and leaves the checkpoint, so whatever holds a loaded model reads them again when this changes."""
    folder = resolve_run(run).folder
    return file_versions(folder.calibration_path, folder.calibration_tta_path, folder.scope_path)


__all__ = ["RunModel", "load_posthoc", "load_run_model", "posthoc_version", "run_threshold", "threshold_of"]
