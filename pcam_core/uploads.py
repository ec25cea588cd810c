"""Scoring patches a user hands over as files (the dashboard's Predict page); nothing touches the disk.

Each file is decoded on its own (`decode_image` with `convert=True`): an image that is not 96x96 is
refused with the reason (another size means another magnification, and resizing would change what the
model sees), and a grayscale, RGBA or 16-bit patch is converted to 8-bit RGB with a note that says so.
One bad file never stops the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .data import DataError, decode_image, patch_id
from .inference import predict_batch
from .predict import submission_csv
from .transforms import eval_preset


@dataclass(frozen=True)
class ScoredPatch:
    """One accepted file: its pixels as the model saw them and the tumour probability."""

    name: str
    id: str  # the file name without its extension, as Kaggle names patches
    pixel_id: str  # SHA-1 of the pixels; equal to `id` for an unaltered Kaggle patch
    pixels: np.ndarray  # (96, 96, 3) uint8
    probability: float
    notes: tuple[str, ...] = ()


@dataclass
class UploadResult:
    scored: list[ScoredPatch] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (file name, why)

    def table(self, threshold: float) -> pd.DataFrame:
        """One row per scored file: file, id, probability, the call at `threshold`, conversion notes."""
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {threshold}")
        rows = [{"file": p.name, "id": p.id, "probability": p.probability,
                 "call": "tumour" if p.probability >= threshold else "normal", "notes": "; ".join(p.notes)}
                for p in self.scored]
        return pd.DataFrame(rows, columns=["file", "id", "probability", "call", "notes"])

    def submission(self) -> bytes:
        """Kaggle's submission format for the scored files (id,label with label the probability)."""
        return submission_csv([p.id for p in self.scored], np.array([p.probability for p in self.scored]))


RESULTS_COLUMNS = ["file", "id", "probability", "call", "threshold", "model", "run", "notes"]


def results_table(result: UploadResult, threshold: float, *, model: str, run: str) -> pd.DataFrame:
    """The results file of a batch of uploads: each scored file with its tumour probability and the call
    at `threshold`, and what produced them (the threshold, the model, the run), so that the file read
    on its own says how every call was made. Refused files are not in it (they have no probability)."""
    table = result.table(threshold)
    table.insert(4, "threshold", float(threshold))
    table.insert(5, "model", model)
    table.insert(6, "run", run)
    return table[RESULTS_COLUMNS]


def score_files(model: nn.Module, files: Sequence[tuple[str, bytes]], *, tta: bool = False, batch_size: int = 64) -> UploadResult:
    """Decode and score `(file name, bytes)` pairs with `model` (in eval mode; it is not modified).

    Files that cannot be used are listed in `refused` with the reason: unreadable, not 96x96, or an id
    (file name without extension) that an earlier file already has."""
    result = UploadResult()
    accepted: list[tuple[str, str, np.ndarray, tuple[str, ...]]] = []
    seen: dict[str, str] = {}
    for name, data in files:
        stem = PurePath(name).stem
        if stem in seen:
            result.refused.append((name, f"same id {stem!r} as {seen[stem]}; a submission needs one row per id"))
            continue
        try:
            decoded = decode_image(data, name=name, convert=True)
        except DataError as err:
            result.refused.append((name, str(err).removeprefix(f"{name}: ")))
            continue
        seen[stem] = name
        accepted.append((name, stem, decoded.pixels, tuple(decoded.notes)))
    if not accepted:
        return result
    device = next(model.parameters()).device
    normalize = eval_preset().to(device)
    probs: list[float] = []
    for start in range(0, len(accepted), batch_size):
        chunk = np.stack([pixels for _, _, pixels, _ in accepted[start : start + batch_size]])
        images = torch.from_numpy(chunk).permute(0, 3, 1, 2).contiguous().to(device)
        probs += predict_batch(model, images, tta=tta, normalize=normalize).double().cpu().tolist()
    result.scored = [ScoredPatch(name, stem, patch_id(pixels), pixels, p, notes)
                     for (name, stem, pixels, notes), p in zip(accepted, probs)]
    return result
