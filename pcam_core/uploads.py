"""Patches a user hands over as files (the dashboard's Predict page): decoding and checking them, nothing
else (no model; `predict.score_uploads` scores what is accepted here). Nothing touches the disk.

Each file is decoded on its own (`decode_image` with `convert=True`): an image that is not 96x96 is
refused with the reason (another size means another magnification, and resizing would change what the
model sees), and a grayscale, RGBA or 16-bit patch is converted to 8-bit RGB with a note that says so.
One bad file never stops the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import Sequence

import numpy as np

from .data.common import DataError, decode_image, same_id_reason


@dataclass(frozen=True)
class UploadedPatch:
    """One accepted file, decoded."""

    name: str
    id: str  # the file name without its extension, as Kaggle names patches
    pixels: np.ndarray  # (96, 96, 3) uint8
    notes: tuple[str, ...] = ()


def read_uploads(files: Sequence[tuple[str, bytes]]) -> tuple[list[UploadedPatch], list[tuple[str, str]]]:
    """Decode `(file name, bytes)` pairs: the accepted patches, and `(file name, why)` for each refused
    one: unreadable, not 96x96, or an id (file name without extension) that an earlier file already has."""
    accepted: list[UploadedPatch] = []
    refused: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for name, data in files:
        stem = PurePath(name).stem
        if stem in seen:
            refused.append((name, same_id_reason(stem, seen[stem])))
            continue
        try:
            decoded = decode_image(data, name=name, convert=True)
        except DataError as err:
            refused.append((name, str(err).removeprefix(f"{name}: ")))
            continue
        seen[stem] = name
        accepted.append(UploadedPatch(name, stem, decoded.pixels, tuple(decoded.notes)))
    return accepted, refused
