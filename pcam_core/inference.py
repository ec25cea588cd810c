"""Running a model over a loader: probabilities per patch, optionally averaged over the 8 symmetries."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn

from .scope import ScopeModel, tap_for
from .transforms import dihedral, eval_preset


@dataclass
class Predictions:
    """Per-patch outputs, aligned: dataset index, id, label (-1 when unknown), tumour probability, and
    the uncertainty (the standard deviation of the 8 views' probabilities) when scored with TTA."""

    index: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    ids: list[str] = field(default_factory=list)
    labels: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    probs: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float64))
    uncertainty: np.ndarray | None = None  # None: scored with one pass, no spread to measure
    ood_score: np.ndarray | None = None  # the out-of-scope guard's distance (`pcam_core.scope`); None: no guard

    def __len__(self) -> int:
        return len(self.ids)

    def to_frame(self) -> pd.DataFrame:
        """id, label, probability, index, and uncertainty when measured."""
        frame = pd.DataFrame({"id": self.ids, "label": self.labels, "probability": self.probs, "index": self.index})
        if self.uncertainty is not None:
            frame["uncertainty"] = self.uncertainty
        if self.ood_score is not None:
            frame["ood_score"] = self.ood_score
        return frame

    @classmethod
    def concat(cls, parts: Iterable[Predictions]) -> Predictions:
        parts = list(parts)
        if not parts:
            return cls()
        spreads, oods = [p.uncertainty for p in parts], [p.ood_score for p in parts]
        return cls(
            np.concatenate([p.index for p in parts]),
            [i for p in parts for i in p.ids],
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.probs for p in parts]),
            None if any(s is None for s in spreads) else np.concatenate(spreads),
            None if any(o is None for o in oods) else np.concatenate(oods),
        )

    def take(self, positions: np.ndarray) -> Predictions:
        """The predictions at `positions` (of this object), in that order."""
        return Predictions(self.index[positions], [self.ids[i] for i in positions], self.labels[positions], self.probs[positions],
                           None if self.uncertainty is None else self.uncertainty[positions],
                           None if self.ood_score is None else self.ood_score[positions])

    def deduplicated(self) -> Predictions:
        """Sorted by dataset index with repeats removed (a DistributedSampler pads the last shard)."""
        _, first = np.unique(self.index, return_index=True)
        return self.take(first)

    def one_per_id(self) -> tuple[Predictions, list[int]]:
        """The first prediction of each id, and the positions of the later ones: patches of one id (in PCam's HDF5 files
        the id is a hash of the pixels, so two identical patches share one) would be two rows of one id in a
        submission, which Kaggle refuses."""
        repeated = pd.Series(self.ids).duplicated().to_numpy()
        return (self.take(np.flatnonzero(~repeated)), np.flatnonzero(repeated).tolist()) if repeated.any() else (self, [])


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def predict_batch(
    model: nn.Module,
    images: torch.Tensor,
    *,
    tta: bool = False,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    normalize: nn.Module | None = None,
    spread: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Tumour probabilities for a uint8 batch ``(B, 3, 96, 96)`` already on the model's device.
    With `tta`, the mean probability over the 8 symmetries of the square. With `spread`, also the
    standard deviation of the views' probabilities per patch (the TTA uncertainty, from the same
    forward passes; NaN without `tta`): a tuple (mean, spread)."""
    normalize = normalize or eval_preset()
    x = normalize(images)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    views = range(8) if tta else range(1)
    with autocast_context(x.device, amp_dtype):
        probs = torch.stack([torch.sigmoid(model(dihedral(x, k) if k else x).float()) for k in views])
    mean = probs.mean(dim=0)
    if not spread:
        return mean
    return mean, (probs.std(dim=0, correction=0) if tta else torch.full_like(mean, float("nan")))


def predict_pixels(model: nn.Module, pixels: np.ndarray, *, tta: bool = False, batch_size: int = 256,
                   spread: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Tumour probabilities (float64, (N,)) of uint8 RGB patches `pixels` (N, 96, 96, 3), scored in batches of
    `batch_size` on the model's device with the eval normalisation (`predict_batch`). With `spread`, a
    tuple (probabilities, TTA uncertainty) as `predict_batch` gives it."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    device = next(model.parameters()).device
    normalize = eval_preset().to(device)
    probs = np.empty(len(pixels), dtype=np.float64)
    spreads = np.empty(len(pixels), dtype=np.float64)
    for start in range(0, len(pixels), batch_size):
        # (B, 3, 96, 96) from the (B, 96, 96, 3) pixels, as the loaders deliver them
        batch = torch.from_numpy(pixels[start : start + batch_size]).permute(0, 3, 1, 2).contiguous().to(device)
        mean, sd = predict_batch(model, batch, tta=tta, normalize=normalize, spread=True)
        probs[start : start + len(batch)] = mean.double().cpu().numpy()
        spreads[start : start + len(batch)] = sd.double().cpu().numpy()
    return (probs, spreads) if spread else probs


def predict_pixels_in_scope(model: nn.Module, pixels: np.ndarray, scope: ScopeModel, *, tta: bool = False,
                            batch_size: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tumour probabilities, TTA uncertainty, out-of-scope distances) of uint8 RGB patches (N, 96, 96, 3), from the
    same forward passes (`predict_pixels` with the guard's `FeatureTap`; the uncertainty is NaN without `tta`)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    probs, spreads, distances = np.empty(len(pixels)), np.empty(len(pixels)), np.empty(len(pixels))
    with tap_for(model, scope.model_name) as tap:
        for start in range(0, len(pixels), batch_size):
            part = slice(start, start + batch_size)
            probs[part], spreads[part] = predict_pixels(model, pixels[part], tta=tta, batch_size=batch_size, spread=True)
            distances[part] = scope.distance(tap.take())
    return probs, spreads, distances


def predict_loader(
    model: nn.Module,
    loader: Iterable[dict],
    device: torch.device,
    *,
    tta: bool = False,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: Callable[[int], None] | None = None,
    scope: ScopeModel | None = None,
) -> Predictions:
    """Run `model` (put in eval mode) over every batch of `loader`, which must carry ids
    (`make_loader(..., ids=True)`): predictions are written under them, with the TTA uncertainty when `tta`, and
    with `scope` (the run's guard) each patch's out-of-scope distance from the same forward pass."""
    model.eval()
    normalize = eval_preset().to(device)
    parts: list[Predictions] = []
    with contextlib.ExitStack() as stack:
        tap = stack.enter_context(tap_for(model, scope.model_name)) if scope is not None else None
        for batch in loader:
            if batch["id"] is None:
                raise ValueError("the loader's batches carry no ids; make it with make_loader(..., ids=True)")
            images = batch["image"].to(device, non_blocking=True)
            probs, spread = predict_batch(model, images, tta=tta, amp_dtype=amp_dtype, channels_last=channels_last,
                                          normalize=normalize, spread=True)
            parts.append(
                Predictions(
                    batch["index"].numpy().astype(np.int64),
                    list(batch["id"]),
                    batch["label"].numpy().astype(np.int64),
                    probs.double().cpu().numpy(),
                    spread.double().cpu().numpy() if tta else None,
                    scope.distance(tap.take()) if tap is not None else None,
                )
            )
            if progress:
                progress(len(images))
    return Predictions.concat(parts)
