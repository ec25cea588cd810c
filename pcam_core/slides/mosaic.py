"""Slides with known truth, assembled from real PCam patches: a grid of 96 x 96 patches at PCam scale
(0.972 µm/px) on glass, normal patches everywhere but in rectangular lesions of tumour patches.

The tests (`tests/helpers.real_mosaic_slide`, on the CC0 fixture patches) and `scripts/fit_slide_decision.py`
(which fits the slide decision on mosaics of the bundled model's held-out patches) build their slides here. A
lesion is a block of patch rows [r0, r1) and columns [c0, c1); its truth is its box in level-0 pixels and its
longest diameter (the box's diagonal), so its size class is known.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..staging import size_class
from .reader import PCAM_MPP

PATCH = 96  # PCam pixels a patch
MARGIN = 96  # glass around the grid, level-0 pixels


def lesion_truth(block: Sequence[int]) -> dict[str, Any]:
    """A lesion block (r0, r1, c0, c1) in patches as truth: its box (x, y, width, height in level-0 pixels), its
    longest diameter (the box's diagonal, mm) and the size class of that diameter."""
    r0, r1, c0, c1 = (int(v) for v in block)
    box = [MARGIN + PATCH * c0, MARGIN + PATCH * r0, PATCH * (c1 - c0), PATCH * (r1 - r0)]
    diameter = math.hypot(box[2], box[3]) * PCAM_MPP / 1000
    return {"patches": [r0, r1, c0, c1], "box": box, "diameter_mm": diameter, "size_class": size_class(diameter)}


def write_mosaic_slide(path: str | Path, normal: Sequence[np.ndarray], tumour: Sequence[np.ndarray], *, rows: int, cols: int,
                       lesions: Sequence[Sequence[int]] = (), seed: int = 0, size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Write a mosaic slide to `path` (a two-level pyramidal tiled JPEG TIFF that OpenSlide opens as generic-tiff,
    resolution tags at PCam scale): `rows` x `cols` patches, each drawn at random (flipped, rotated) from `tumour`
    inside a lesion block and from `normal` elsewhere. Returns its truth: mpp, size, patches, lesions
    (`lesion_truth` of each). `size` (width, height): the slide's exact size in pixels (at least the grid's and
    its margin), else the grid with a margin of one patch."""
    import tifffile

    if not normal or (lesions and not tumour):
        raise ValueError("a mosaic needs normal patches, and tumour patches when it has lesions")
    rng = np.random.default_rng(seed)
    width, height = size or (cols * PATCH + 2 * MARGIN, rows * PATCH + 2 * MARGIN)
    canvas = np.clip(rng.normal((242, 241, 244), 3, (height, width, 3)), 0, 255).astype(np.uint8)
    for r in range(rows):
        for c in range(cols):
            inside = any(b[0] <= r < b[1] and b[2] <= c < b[3] for b in lesions)
            pool = tumour if inside else normal
            patch = pool[rng.integers(len(pool))]
            patch = np.rot90(patch[:, ::-1] if rng.integers(2) else patch, k=int(rng.integers(4)))
            canvas[MARGIN + PATCH * r: MARGIN + PATCH * (r + 1), MARGIN + PATCH * c: MARGIN + PATCH * (c + 1)] = patch
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    res = 1e4 / PCAM_MPP
    with tifffile.TiffWriter(path) as tif:
        for index, d in enumerate((1, 2)):
            level = canvas if d == 1 else np.asarray(Image.fromarray(canvas).reduce(d))
            tif.write(level, tile=(256, 256), photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                      resolution=(res / d, res / d), resolutionunit="CENTIMETER", subfiletype=1 if index else 0,
                      metadata=None, software="pcam_core mosaic")
    return {"mpp": PCAM_MPP, "width": width, "height": height, "patches": [rows, cols],
            "lesions": [lesion_truth(b) for b in lesions]}


__all__ = ["MARGIN", "PATCH", "lesion_truth", "write_mosaic_slide"]
