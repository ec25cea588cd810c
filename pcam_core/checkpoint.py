"""The one checkpoint schema, written atomically and loaded with ``weights_only=True``.

A checkpoint is a dict of tensors and plain values only: ``format``, ``config`` (the experiment config
as a dict), ``model`` (training weights), ``ema`` (averaged weights or None), ``optimizer``,
``scheduler``, ``scaler``, ``epoch`` (completed epochs), ``step_in_epoch`` (batches done in the epoch
under way, for a mid-epoch stop), ``global_step``, ``best`` and ``bad_epochs`` (early stopping),
``rng`` (torch generator states), ``elapsed`` (training seconds so far, every segment) and
``epoch_loss_sum``/``epoch_loss_count`` (the running training loss of the epoch under way).
Nothing in it needs pickle to load, so a file that would run code is refused.
"""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ExperimentConfig
from .fileio import atomic_write_with
from .models import create_model

log = logging.getLogger(__name__)

FORMAT = "pcam_core.checkpoint/1"


class CheckpointError(ValueError):
    """A file that is not a checkpoint we can load safely."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Serialise in memory, then write atomically: a failed write (disk full, permission denied)
    leaves the previous checkpoint at `path` intact."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    data = buffer.getvalue()
    atomic_write_with(path, lambda handle: handle.write(data))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load with ``weights_only=True`` on the CPU; anything else (a pickle that would run code, a
    truncated or damaged file, another program's file) raises `CheckpointError` naming the file.
    torch's own advice for such files (to load them with ``weights_only=False``, which runs code
    from the file) is never passed on."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused: it is not a plain-weights checkpoint, and loading it would run code from the file; "
            "pcam_core loads only the checkpoints it writes"
        ) from err
    except Exception as err:  # noqa: BLE001 - torch raises many kinds on a damaged file; all mean the same here
        raise CheckpointError(f"{path}: the checkpoint file is damaged and cannot be read (truncated, corrupted in "
                              f"transfer, or not a checkpoint){_cause(err)}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a pcam_core checkpoint (expected format {FORMAT!r})")
    return payload


def _cause(err: BaseException) -> str:
    """torch's first sentence about a damaged file, unless it is advice about `weights_only`."""
    first = str(err).strip().split(". ")[0].splitlines()[0].strip() if str(err).strip() else ""
    if not first or "weights_only" in first or len(first) > 200:
        return ""
    return f": {first.rstrip('.')}"


def checkpoint_config(payload: dict[str, Any]) -> ExperimentConfig:
    return ExperimentConfig.from_dict(payload["config"])


def inference_weights(payload: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights to predict with: the moving average when the run kept one, else the raw weights."""
    return payload["ema"] if payload.get("ema") is not None else payload["model"]


def packaged(payload: dict[str, Any], data_name: str, **extra: Any) -> dict[str, Any]:
    """A checkpoint to ship (the bundled model, its members, a candidate run): the weights to predict with as its
    model and nothing of the optimiser, its config's data path replaced by `data_name` (a training machine's temporary
    path means nothing elsewhere), its epoch, step and threshold, and `extra`."""
    config = dict(payload["config"])
    config["data"] = {**config["data"], "path": data_name}
    return {"config": config, "model": {k: v.detach().clone().contiguous() for k, v in inference_weights(payload).items()},
            "ema": None, "epoch": payload.get("epoch"), "global_step": payload.get("global_step"),
            "threshold": payload.get("threshold"), "synthetic_data": bool(payload.get("synthetic_data", False)), **extra}


def model_from_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, ExperimentConfig, dict[str, Any]]:
    """(model in eval mode on `device`, its config, the checkpoint's bookkeeping without weights)."""
    payload = load_checkpoint(path)
    config = checkpoint_config(payload)
    model = create_model(config.model.name, dropout=config.model.dropout)
    try:
        model.load_state_dict(inference_weights(payload))
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit model {config.model.name!r}: {err}") from err
    model.to(device).eval()
    info = {k: v for k, v in payload.items() if k not in ("model", "ema", "optimizer", "scheduler", "scaler", "rng")}
    return model, config, info
