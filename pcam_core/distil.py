"""Distillation: a run taught by another (`train.teacher`, `pcam train --teacher RUN`).

Each training patch's target leans towards the teacher's probability of it, scored with TTA (the mean of the 8
symmetric views) once before training starts: ``target = (1 - w) * label + w * p_teacher``, with
``w = train.distil`` (Hinton et al., 2015; Furlanello et al., ICML 2018, for a teacher of the student's own kind).
Every augmented view of the patch (and mixup, which blends targets as it blends patches) then learns that target:
the teacher's best estimate of the patch, which no symmetry or stain jitter changes. Scoring the teacher on every
view instead would add its forward pass to every step: for a `pcamscan` student taught by a `pcamnet` member on this
CPU, about 7 ms a patch on top of about 4 ms of training, some three times the training (estimated from the two
networks' speeds, not measured alone); once per patch it cost 39-60 s a fold here. Its use is to hand what a larger model (an ensemble, a wider net) learnt to a cheaper one:
the exactly-scanning `pcamscan`, say, that analyses a slide in minutes.

A teacher that trained on the patches a run is validated on would make the run's figures dishonest: through the
teacher's targets, the student learns the labels it is judged on. So:

- a fold of a cross-validation (`pcam train --folds K --teacher T`) is taught by the one member of T that held out
  the same patches. T must be a cross-validation (a run of `--folds`, or `bundled`) whose out-of-fold predictions
  put every patch of the fold in one fold of T, and the patches must be the same (their ids agree); anything else
  is refused with the reason, before training starts. Fold k is then taught by one member, not by the whole
  ensemble: the honest measure of what distillation keeps.
- any other run is taught by the whole teacher (an ensemble's mean, as it scores). Its validation figures are
  honest only where the teacher never trained on its validation split, which cannot be checked here: the run
  carries a warning that says so.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .checkpoint import model_from_checkpoint
from .config import ExperimentConfig
from .data.base import PatchDataset
from .data.loader import cv_pool
from .ensemble import member_runs
from .loading import load_run_model
from .predict import predict_dataset
from .runs import RunDir, resolve_run

log = logging.getLogger(__name__)


@dataclass
class Teacher:
    """The teacher's TTA probability of every training patch (by its index in the training set), what the teacher
    is (for the run's log and summary), and a warning where the run's validation figures may be optimistic."""

    probs: torch.Tensor
    source: str
    warning: str | None = None

    def targets(self, labels: torch.Tensor, index: torch.Tensor, weight: float) -> torch.Tensor:
        """The distilled targets of a batch: its labels and its patches' indices in the training set."""
        return blend(labels, self.probs[index.to(self.probs.device)], weight)


def blend(targets: torch.Tensor, teacher_probs: torch.Tensor, weight: float) -> torch.Tensor:
    """The distilled targets: ``(1 - weight) * targets + weight * teacher_probs``."""
    return (1.0 - weight) * targets + weight * teacher_probs.to(targets.dtype)


def load_teacher(config: ExperimentConfig, train: PatchDataset, valid: PatchDataset, device: torch.device) -> Teacher | None:
    """The teacher of a run with `config` (training set `train`, validation split `valid`), its probabilities of
    `train` scored, or None where it has none. Raises ValueError (naming the reason) where a fold run's teacher
    trained on that fold's patches or cannot be shown not to have."""
    ref = config.train.teacher
    if ref is None:
        return None
    folder = resolve_run(ref).folder
    if config.data.folds:
        model, member, fold = _held_out_member(folder, config, valid, ref, device)
        source = f"{ref}'s member {member.parent.parent.name}, which held out the same patches (fold {fold + 1} of {config.data.folds})"
        warning = None
    else:
        model = load_run_model(folder.path, device=device, posthoc=False).model
        source, warning = str(ref), (
            f"taught by {ref}: the validation figures are honest only if it never trained on this run's validation "
            "patches; train with --folds K and a cross-validated teacher to have that checked")
    started = time.perf_counter()
    scored = predict_dataset(model.eval(), train, device=device, tta=True, num_workers=config.data.num_workers).predictions
    probs = np.full(len(train), np.nan, dtype=np.float32)
    probs[scored.index] = scored.probs
    if np.isnan(probs).any():
        raise RuntimeError(f"the teacher scored {len(scored)} of the {len(train)} training patches")
    log.info("distilling from %s: its TTA probabilities of the %d training patches in %.0f s (target = %.2f x label + "
             "%.2f x that probability)", source, len(train), time.perf_counter() - started, 1 - config.train.distil,
             config.train.distil)
    return Teacher(torch.from_numpy(probs).to(device), source, warning)


def check_teacher(config: ExperimentConfig) -> None:
    """What can be told of `config`'s teacher without its models or the patches themselves, so that a form or a
    launcher refuses it at once rather than in the training process: its folder exists (else FileNotFoundError), and a
    cross-validation's (`data.folds`) is a finished cross-validation of as many patches as the data's pool holds (else
    ValueError; a cross-validation of other data, mostly). The patches of each fold are matched when the fold trains
    (`load_teacher`)."""
    ref = config.train.teacher
    if ref is None:
        return
    folder = resolve_run(ref).folder
    if config.data.folds:
        _check_cross_validated(folder, ref, f"each of the {config.data.folds} folds")
        taught = len(pd.read_csv(folder.oof_predictions_path, usecols=["index"]))
        patches = len(cv_pool(config.data.path, config.data.format))
        if taught != patches:
            raise ValueError(f"teacher {ref} was cross-validated on other data: {taught:,} patches, where the pool of "
                             f"{config.data.path} holds {patches:,}")


def _check_cross_validated(folder: RunDir, ref: str, fold_name: str) -> None:
    if not folder.is_ensemble or not folder.oof_predictions_path.exists():
        raise ValueError(
            f"teacher {ref} is not a finished cross-validation (no {folder.oof_predictions_path.name}), so nothing shows it did not "
            f"train on the held-out patches of {fold_name}, whose figures it would then inflate; give a run of "
            "`pcam train --folds K` on the same data (or bundled), or train without --folds")


def _held_out_member(folder: RunDir, config: ExperimentConfig, valid: PatchDataset, ref: str,
                     device: torch.device) -> tuple[torch.nn.Module, Path, int]:
    """The member of the cross-validated teacher `folder` that held out every patch of `valid` (a fold of the
    cross-validation `config` trains), loaded on `device`: (its model, its checkpoint, its fold)."""
    fold_name = f"fold {config.data.fold + 1} of {config.data.folds}"
    _check_cross_validated(folder, ref, fold_name)
    oof = pd.read_csv(folder.oof_predictions_path, dtype={"id": str}).set_index("index")
    positions = np.asarray(valid.parent_indices)  # a fold is a subset of the pool (`data.loader.train_valid_datasets`)
    missing = np.setdiff1d(positions, oof.index.to_numpy())
    if missing.size:
        raise ValueError(f"teacher {ref} was cross-validated on other data: {missing.size} of the {positions.size} held-out "
                         f"patches of {fold_name} are not among its {len(oof):,} out-of-fold predictions")
    ids = [i for start in range(0, len(valid), 512)
           for i in valid.fetch(np.arange(start, min(start + 512, len(valid))))["id"]]
    rows = oof.loc[positions]
    if list(rows["id"]) != ids:
        differ = int(sum(a != b for a, b in zip(rows["id"], ids)))
        raise ValueError(f"teacher {ref} was cross-validated on other data: {differ} of the {len(ids)} held-out patches of "
                         f"{fold_name} are other patches at the same positions of its pool")
    folds = sorted(int(f) for f in rows["fold"].unique())
    if len(folds) != 1:
        raise ValueError(
            f"the held-out patches of {fold_name} lie in {len(folds)} folds of teacher {ref} ({', '.join(str(f + 1) for f in folds)}), "
            f"so each of its members trained on some of them; cross-validate the teacher with the same --folds "
            f"({config.data.folds}) and --split-seed ({config.data.split_seed}) as this run")
    for member in member_runs(folder):
        checkpoint = resolve_run(member.path).checkpoint("best")
        model, member_config, _ = model_from_checkpoint(checkpoint, device)
        if member_config.data.folds and member_config.data.fold == folds[0]:
            return model, checkpoint, folds[0]
    raise ValueError(f"teacher {ref} has no member that held out its fold {folds[0] + 1}")


__all__ = ["Teacher", "blend", "check_teacher", "load_teacher"]
