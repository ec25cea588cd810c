"""What is fitted on a run once its weights are final, from its own data: the temperature that calibrates its
probabilities (`calibration.json`, docs/trust.md) and the out-of-scope guard (`scope.npz`, docs/scope.md). The
trainer calls `fit_posthoc` when a run ends; `pcam calibrate` and `pcam scope` refit one of them."""

from __future__ import annotations

import logging

import torch

from .calibration import calibrate_run
from .loading import load_run_model
from .runs import RunDir
from .scope import fit_run_scope

log = logging.getLogger(__name__)


def fit_posthoc(run: RunDir, device: torch.device | str = "cpu") -> None:
    """Fit the run's temperature (on its validation predictions) and its out-of-scope guard (on its training and
    validation patches, with the weights it ships). A failure of either is logged; the run still finishes."""
    if run.valid_predictions_path.exists():
        try:
            calibration = calibrate_run(run.path)
        except ValueError as err:  # a validation split without both classes
            log.warning("no calibration fitted: %s", err)
        else:
            log.info("calibration: %s on %d validation patches; ECE %.4f -> %.4f, Brier %.4f -> %.4f",
                     calibration.describe, calibration.n, calibration.before["ece"], calibration.after["ece"],
                     calibration.before["brier"], calibration.after["brier"])
            if calibration.warning:
                log.warning("%s", calibration.warning)
    try:
        loaded = load_run_model(run.path, device=device)
        scope = fit_run_scope(run, loaded.model, loaded.config)
    except (ValueError, OSError) as err:
        log.warning("no out-of-scope guard fitted: %s", err)
        return
    log.info("out-of-scope guard: %d training patches; threshold %.3f flags %.1f%% of %d validation patches",
             scope.n_fit, scope.threshold, 100 * scope.rate, scope.n_calibration)


__all__ = ["fit_posthoc"]
