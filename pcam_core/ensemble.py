"""An ensemble as a run: a run folder whose `ensemble.json` lists member runs, scored as one model whose
probability is the mean of the members' (`models.EnsembleModel`).

A cross-validated run (`pcam train --folds K`, `pcam_core.crossval`) is one: its K fold runs are its members,
and its temperature, triage and out-of-scope guard are fitted on their out-of-fold predictions. `pcam ensemble
--runs A B C --out E` makes one of any runs of one architecture. Every face loads it through
`loading.load_run_model`, as any run; each member's checkpoint is loaded with ``weights_only=True``.

How the members are combined (`combine`): "prob" (default), the mean of their probabilities; "logit", the mean of
their logits. Measured on real patches in docs/training.md ("Ensembles").
"""

from __future__ import annotations

import datetime as _dt
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from .checkpoint import model_from_checkpoint
from .config import COMBINES, DEFAULT_COMBINE, ExperimentConfig
from .fileio import atomic_write_json, read_json
from .models import EnsembleModel
from .runs import RunArg, RunDir, resolve_run

ENSEMBLE_FORMAT = "pcam_core.ensemble/1"


def check_combine(combine: str) -> str:
    if combine not in COMBINES:
        raise ValueError(f"unknown ensemble combine {combine!r}; valid: {', '.join(COMBINES)} (prob: mean probability, "
                         "logit: mean logit)")
    return combine


def read_record(folder: RunDir) -> dict[str, Any]:
    """The folder's `ensemble.json`, checked."""
    record = read_json(folder.ensemble_path, default=None)
    if not isinstance(record, dict) or record.get("format") != ENSEMBLE_FORMAT or not record.get("members"):
        raise ValueError(f"{folder.ensemble_path}: not an ensemble record (format {ENSEMBLE_FORMAT!r} with members)")
    check_combine(record.get("combine", DEFAULT_COMBINE))
    return record


def member_runs(folder: RunDir) -> list[RunDir]:
    """The member run folders of an ensemble (relative paths are relative to the ensemble's folder)."""
    out = []
    for member in read_record(folder)["members"]:
        ref = resolve_run(member if member == "bundled" or Path(member).is_absolute() else folder.path / member)
        out.append(ref.folder)
    return out


def write_record(folder: RunDir, members: list[RunDir], combine: str, **extra: Any) -> None:
    """Write `ensemble.json`: members inside the folder by relative path (the folder can move), others absolute."""
    names = []
    for member in members:
        path = member.path.resolve()
        names.append(str(path.relative_to(folder.path.resolve())) if path.is_relative_to(folder.path.resolve()) else str(path))
    atomic_write_json(folder.ensemble_path, {"format": ENSEMBLE_FORMAT, "members": names, "combine": check_combine(combine),
                                             "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                                             **extra})


def load_ensemble(folder: RunDir, device: torch.device, checkpoint: str = "best") -> tuple[EnsembleModel, ExperimentConfig, dict[str, Any]]:
    """(the ensemble in eval mode on `device`, its first member's config, its bookkeeping: members, combine,
    threshold). Every member must be of one architecture (Grad-CAM layers and the guard are the first member's)."""
    record = read_record(folder)
    models, configs = [], []
    for member in member_runs(folder):
        if member.is_ensemble:
            raise ValueError(f"{folder.ensemble_path}: member {member.path} is itself an ensemble; list its members instead")
        model, config, _ = model_from_checkpoint(resolve_run(member.path).checkpoint(checkpoint), device)
        models.append(model)
        configs.append(config)
    names = {c.model.name for c in configs}
    if len(names) > 1:
        raise ValueError(f"{folder.ensemble_path}: members of different architectures ({', '.join(sorted(names))}); "
                         "an ensemble is of one architecture")
    ensemble = EnsembleModel(models, record.get("combine", DEFAULT_COMBINE)).to(device).eval()
    info = {"epoch": None, "members": record["members"], "combine": ensemble.combine, "threshold": record.get("threshold")}
    return ensemble, configs[0], info


def create_ensemble(runs: list[RunArg], out: str | Path, *, combine: str = DEFAULT_COMBINE) -> RunDir:
    """Make the ensemble run `out` of `runs` (run folders or `bundled`; at least two, one architecture). The new
    folder holds config.json (the first member's config), status.json, ensemble.json and the first member's
    out-of-scope guard, when it has one (the guard taps that member). It has no validation predictions of its
    own, hence no temperature or triage: a cross-validated run's ensemble has them (`pcam train --folds`)."""
    check_combine(combine)
    if len(runs) < 2:
        raise ValueError(f"an ensemble needs at least two runs, got {len(runs)}")
    members = [resolve_run(run).folder for run in runs]
    for member in members:
        if member.is_ensemble:
            raise ValueError(f"{member.path} is itself an ensemble; list its member runs instead")
    folder = RunDir(out)
    if folder.path.exists() and any(folder.path.iterdir()):
        raise FileExistsError(f"{folder.path} exists and is not empty; choose a new --out")
    folder.path.mkdir(parents=True, exist_ok=True)
    write_record(folder, members, combine)
    try:
        _, config, _ = load_ensemble(folder, torch.device("cpu"))  # every member loads, one architecture
    except BaseException:
        shutil.rmtree(folder.path, ignore_errors=True)
        raise
    folder.write_config(config.replace(name=f"ensemble of {len(members)}"))
    atomic_write_json(folder.status_path, {"state": "finished", "created_at": time.time(),
                                           "message": f"ensemble of {len(members)} runs ({combine} mean)"})
    if members[0].scope_path.exists():
        shutil.copyfile(members[0].scope_path, folder.scope_path)
    return folder


__all__ = ["DEFAULT_COMBINE", "ENSEMBLE_FORMAT", "check_combine", "create_ensemble", "load_ensemble", "member_runs",
           "read_record", "write_record"]
