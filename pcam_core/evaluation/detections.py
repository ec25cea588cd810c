"""Lesion detections from a map, as CAMELYON16 asks for them: one CSV per slide (`<slide>.csv`), a line
`probability,x,y` per detection, x and y integer level-0 pixels.

The points are the map's local maxima by non-maximum suppression, as NCRF (Li & Ping 2018) made them for the
challenge's FROC: take the highest cell left, write its centre with its probability, clear every cell whose centre
lies within `radius_um` of it, repeat while the highest cell left is at or above `floor`. Defaults: NCRF's, a
radius of 12 pixels at level 6 (12 x 64 x 0.243 um = 187 um) and a floor of 0.5. Cells without a probability
(not tissue, unreadable, out of the model's scope) are never detections.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..fileio import atomic_write_text
from .options import NMS_FLOOR, NMS_RADIUS_UM

if TYPE_CHECKING:
    from ..slides.analysis import Lattice


def lesion_points(heat: np.ndarray, lattice: Lattice, *, floor: float = NMS_FLOOR,
                  radius_um: float = NMS_RADIUS_UM) -> list[tuple[float, int, int]]:
    """(probability, x, y) of the map's local maxima at or above `floor`, highest first; x, y the cell's centre."""
    from ..slides.outputs import valid_cells

    heat = np.asarray(heat, dtype=np.float64)
    left = np.where(valid_cells(heat), heat, -np.inf)
    radius = radius_um / (lattice.cell_px * lattice.mpp)  # in cells
    reach = int(np.floor(radius))
    points = []
    while left.size:
        index = int(np.argmax(left))
        i, j = divmod(index, left.shape[1])
        prob = left[i, j]
        if not prob >= floor:
            break
        points.append((round(float(prob), 6), int(round((j + 0.5) * lattice.cell_px)), int(round((i + 0.5) * lattice.cell_px))))
        i0, i1, j0, j1 = max(0, i - reach), i + reach + 1, max(0, j - reach), j + reach + 1
        rows, cols = np.ogrid[i0:min(i1, left.shape[0]), j0:min(j1, left.shape[1])]
        left[i0:i1, j0:j1][(rows - i) ** 2 + (cols - j) ** 2 <= radius**2] = -np.inf
    return points


def write_detections(path: str | Path, points: list[tuple[float, int, int]]) -> None:
    """The CAMELYON16 detection CSV: no header, `probability,x,y` per line."""
    atomic_write_text(Path(path), "".join(f"{p:.6f},{x},{y}\n" for p, x, y in points))


def read_detections(path: str | Path) -> list[tuple[float, int, int]]:
    """A CAMELYON16 detection CSV (`probability,x,y` lines) back as (probability, x, y)."""
    points = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            prob, x, y = line.split(",")[:3]
            points.append((float(prob), int(float(x)), int(float(y))))
        except ValueError as err:
            raise ValueError(f"{path}, line {number}: expected probability,x,y, not {line!r}") from err
    return points


__all__ = ["lesion_points", "read_detections", "write_detections"]
