"""Scoring images from Python: `load_predictor(run).predict(images)` (see docs/python.md).

A model's `forward` takes normalised float tensors and returns logits; called on raw pixels it gives
nothing useful. A `Predictor` holds the model together with what it needs around it (the
normalisation, the batching, the checks every other entry point makes on an image) and returns
tumour probabilities.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from .data.common import PATCH_SHAPE, decode_image
from .data.common import _to_rgb_patch as to_rgb_patch  # decode_image's checks, for an image already open
from .calibration import Calibration
from .decision import DEFAULT_THRESHOLD, REFER, calls
from .inference import predict_pixels, predict_pixels_in_scope
from .scope import ScopeModel
from .loading import load_run_model
from .models import EnsembleModel

log = logging.getLogger(__name__)

Image1 = Union[np.ndarray, Image.Image, str, os.PathLike, bytes]
Images = Union[Image1, Sequence[Image1]]


@dataclass(frozen=True)
class Predictor:
    """A trained model ready to score 96x96 patches. Make one with `load_predictor`."""

    model: nn.Module  # in eval mode on `device`; returns logits of normalised images
    model_name: str
    threshold: float  # a probability >= threshold is called tumour
    device: torch.device
    source: str  # what it was loaded from: the run folder, or "bundled"
    checkpoint: Path
    epoch: int | None  # completed training epochs of the checkpoint
    calibration: Calibration | None = None  # the run's fitted temperature (`calibrated`), or None
    scope: ScopeModel | None = None  # the run's out-of-scope guard (`predict_in_scope`), or None
    calibration_tta: Calibration | None = None  # the temperature fitted on TTA predictions (cross-validated runs), or None

    @property
    def members(self) -> int:
        """How many networks score each patch: 1, or an ensemble's members (the bundled model's 5), each a forward pass."""
        return len(self.model.members) if isinstance(self.model, EnsembleModel) else 1

    def predict(self, images: Images, *, tta: bool = False, batch_size: int = 256) -> np.ndarray:
        """Tumour probabilities, a float64 array of shape (N,), one per image.

        `images`: uint8 RGB patches as an array (N, 96, 96, 3) or one (96, 96, 3), PIL images, paths
        of image files, or a list mixing them. An image that is not 96x96 is refused with a
        `ValueError` naming it (another size is another magnification); grayscale, RGBA and 16-bit
        images are converted to 8-bit RGB (logged), as everywhere else in pcam_core. With `tta`, the
        mean probability over the 8 symmetries of the square (8 forward passes per patch).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        return predict_pixels(self.model, as_patches(images), tta=tta, batch_size=batch_size)

    def predict_in_scope(self, images: Images, *, tta: bool = False, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, out-of-scope distances) from the same forward passes; the distances are None when the
        run has no guard. A patch is out of scope when `in_scope` says so: its call is "refer" (`call`)."""
        pixels = as_patches(images)
        if self.scope is None:
            return predict_pixels(self.model, pixels, tta=tta, batch_size=batch_size), None
        probs, _, distances = predict_pixels_in_scope(self.model, pixels, self.scope, tta=tta, batch_size=batch_size)
        return probs, distances

    def in_scope(self, distances: np.ndarray | None) -> np.ndarray | None:
        """Which distances lie within the guard's threshold (None without a guard)."""
        return None if distances is None or self.scope is None else self.scope.in_scope(distances)

    def calibration_for(self, *, tta: bool) -> Calibration | None:
        """The temperature of the scoring mode: the one fitted on TTA predictions where the run has one."""
        return self.calibration_tta if tta and self.calibration_tta is not None else self.calibration

    def calibrated(self, probabilities: np.ndarray, *, tta: bool = False) -> np.ndarray:
        """`probabilities` (scored with `tta` or not) after the run's temperature of that scoring mode; unchanged
        when the run has none."""
        probs = np.asarray(probabilities, dtype=np.float64)
        calibration = self.calibration_for(tta=tta)
        return probs if calibration is None else calibration.apply(probs)

    def call(self, probabilities: np.ndarray, distances: np.ndarray | None = None, *,
             threshold: float | None = None) -> np.ndarray:
        """"tumour"/"normal" for each probability at the run's threshold (or `threshold`; `pcam_core.decision`), and
        "refer" for each patch whose out-of-scope distance (`predict_in_scope`) is above the guard's threshold."""
        out = calls(probabilities, self.threshold if threshold is None else threshold)
        inside = self.in_scope(distances)
        return out if inside is None else np.where(inside, out, REFER)


def load_predictor(run: str | os.PathLike, *, device: str = "auto", checkpoint: str = "best") -> Predictor:
    """The model of a run folder (written by `pcam train`), or of "bundled" (the model trained on real
    patches that ships with pcam_core: `pcam_core/bundled/MODEL_CARD.md`), ready to score images.

    `checkpoint`: "best" (the best validated epoch; the last one when none was validated yet) or
    "last". `device`: "auto" (the GPU when there is one), "cpu" or "cuda". The moving-average weights
    are used when the run kept them, as `pcam predict` and `pcam evaluate` do."""
    loaded = load_run_model(run, checkpoint=checkpoint, device=device)
    return Predictor(loaded.model, loaded.model_name, loaded.threshold, loaded.device, loaded.run.arg,
                     loaded.checkpoint, loaded.epoch, loaded.calibration, loaded.scope, loaded.calibration_tta)


def as_patches(images: Images) -> np.ndarray:
    """`images` (see `Predictor.predict`) as one (N, 96, 96, 3) uint8 array, each checked (and
    converted where needed) by the rules of `decode_image`."""
    if isinstance(images, np.ndarray):
        if images.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"images: pixels must be uint8 (0-255; uint16 for 16-bit grayscale), got dtype {images.dtype}")
        if images.ndim == 4 and images.shape[1:] == PATCH_SHAPE and images.dtype == np.uint8:
            return np.ascontiguousarray(images)  # the common case, checked as a whole
        items: list[Any] = list(images) if images.ndim == 4 else [images]
    elif isinstance(images, (Image.Image, str, os.PathLike, bytes)):
        items = [images]
    else:
        items = list(images)
    if not items:
        raise ValueError("images: nothing to score (an empty list)")
    return np.stack([_patch(item, f"images[{i}]") for i, item in enumerate(items)])


def _patch(item: Any, label: str) -> np.ndarray:
    """One image as (96, 96, 3) uint8; `label` names it in errors when it has no file name."""
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"{label}: image file not found: {path}")
        decoded = decode_image(path, convert=True)
        label = str(path)
    elif isinstance(item, bytes):
        decoded = decode_image(item, name=label, convert=True)
    elif isinstance(item, Image.Image):
        decoded = to_rgb_patch(item, getattr(item, "filename", "") or label, convert=True)
    elif isinstance(item, np.ndarray):
        if item.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"{label}: pixels must be uint8 (0-255; uint16 for 16-bit grayscale), got dtype {item.dtype}")
        try:
            image = Image.fromarray(item)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{label}: an array of shape {item.shape} is not an image; expected (96, 96, 3) RGB, "
                             f"(96, 96, 4) RGBA or (96, 96) grayscale") from err
        decoded = to_rgb_patch(image, label, convert=True)
    else:
        raise TypeError(f"{label}: cannot score a {type(item).__name__}; give a numpy array, a PIL image, a path or bytes")
    for note in decoded.notes:
        log.warning("%s: %s", label, note)
    return decoded.pixels


__all__ = ["DEFAULT_THRESHOLD", "Predictor", "as_patches", "load_predictor"]
