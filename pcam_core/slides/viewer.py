"""What a slide viewer draws over a slide from its analysis folder: the tumour map and the tissue mask as
transparent images placed in level-0 pixels, the tumour regions as outlines, and the 96-px window under a
point with its probability.

The map overlay is one image of the whole map, one block of `k` x `k` pixels per cell (`k` a whole number,
so a cell edge blurs over at most one of its pixels when the browser scales it up): a 50,000 x 40,000-px
slide at 0.243 µm/px has 391 x 313 cells, so the overlay is a few hundred kilobytes, fetched once, and cell
boundaries stay sharp down to full resolution. Cells below the threshold and cells not scored are
transparent; unreadable cells are grey. The opacity is the viewer's; the threshold is a parameter.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..decision import check_threshold, is_tumour
from ..fileio import read_json
from .analysis import UNREADABLE, WINDOW, Lattice
from .folder import AnalysisFolder
from .outputs import colour_map, valid_cells
from .scope_map import OUT_OF_SCOPE, assessed_map
from ..staging import size_class
from .decision import is_reported, reporting_words
from .regions import region_number
from .reader import open_slide
from .tissue import THUMB_PCAM_PX

OVERLAY_MAX_PX = 4096  # the map overlay's longest side at most (cells drawn as k x k blocks below it)
TISSUE_RGB = (0, 150, 255)
COLOUR_SCALE = "inferno"


@dataclass(frozen=True)
class Overlay:
    """An image laid over the slide: its top-left at level-0 (0, 0), spanning `width` x `height` level-0 pixels."""

    png: bytes
    width: float
    height: float


def _png(rgba: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def lattice_of(summary: dict[str, Any]) -> Lattice:
    """The lattice an analysis was computed on, from its summary.json."""
    info = summary.get("slide_info") or {}
    try:
        return Lattice(int(info["width"]), int(info["height"]), float(summary["mpp"]), int(summary["stride"]))
    except (KeyError, TypeError) as err:
        raise ValueError(f"the analysis summary lacks the slide's size, mpp or stride ({err}); analyse the slide again") from err


def load_summary(folder: AnalysisFolder) -> dict[str, Any]:
    """summary.json of a complete analysis; `FileNotFoundError` naming the folder otherwise."""
    summary = read_json(folder.summary_json)
    if summary is None:
        raise FileNotFoundError(f"{folder.path}: no complete analysis (summary.json is missing)")
    return summary


def load_heat(folder: AnalysisFolder) -> np.ndarray:
    """The map as the viewer draws it: probabilities, NaN where not scored, `UNREADABLE`, and `OUT_OF_SCOPE` where
    the model's guard flagged the window (`scope_map.assessed_map`, when the analysis has a scope map)."""
    if not folder.heatmap_npy.is_file():
        raise FileNotFoundError(f"{folder.heatmap_npy}: the analysis has no map")
    heat = np.load(folder.heatmap_npy, mmap_mode="r")
    summary = read_json(folder.summary_json) or {}
    guard = (summary.get("scope") or {}).get("guard")
    if guard is None or not folder.scope_npy.is_file():
        return heat
    return assessed_map(heat, np.load(folder.scope_npy, mmap_mode="r"), guard)


def heat_overlay(heat: np.ndarray, lattice: Lattice, threshold: float) -> Overlay:
    """The map as RGBA: cells >= `threshold` in the colour scale, unreadable cells grey, out-of-scope cells light
    grey with diagonal stripes, the rest transparent."""
    check_threshold(threshold)
    heat = np.asarray(heat)
    rows, cols = heat.shape
    rgba = np.zeros((rows, cols, 4), dtype=np.uint8)
    rgba[..., :3] = colour_map(heat, COLOUR_SCALE)
    outside = heat == OUT_OF_SCOPE
    shown = (valid_cells(heat) & is_tumour(heat, threshold)) | (heat == UNREADABLE)
    rgba[..., 3] = np.where(shown, 255, np.where(outside, 150, 0))
    k = max(1, min(16, OVERLAY_MAX_PX // max(rows, cols)))
    rgba = np.repeat(np.repeat(rgba, k, axis=0), k, axis=1)
    if k >= 4 and outside.any():  # stripes, so that grey reads as "not judged" and not as a colour of the scale
        yy, xx = np.indices(rgba.shape[:2])
        stripe = np.repeat(np.repeat(outside, k, axis=0), k, axis=1) & (((yy + xx) // max(1, k // 4)) % 2 == 0)
        rgba[stripe, :3] = 110
    return Overlay(_png(rgba), cols * lattice.cell_px, rows * lattice.cell_px)


def tissue_overlay(folder: AnalysisFolder, lattice: Lattice) -> Overlay:
    """The tissue mask (tissue.png, one pixel per 8 PCam-scale pixels) tinted, glass transparent."""
    if not folder.tissue_png.is_file():
        raise FileNotFoundError(f"{folder.tissue_png}: the analysis has no tissue mask")
    with Image.open(folder.tissue_png) as image:
        mask = np.asarray(image.convert("L")) > 127
    rgba = np.zeros((*mask.shape, 4), dtype=np.uint8)
    rgba[mask] = (*TISSUE_RGB, 255)
    scale = THUMB_PCAM_PX * lattice.f  # level-0 pixels per mask pixel
    return Overlay(_png(rgba), mask.shape[1] * scale, mask.shape[0] * scale)


def regions(folder: AnalysisFolder) -> list[dict[str, Any]]:
    """The tumour regions of tumour_regions.geojson, largest first: `id` (their number, `outputs.region_number`:
    1 = largest, as in the GeoJSON, the report and reviews), their rings (level-0
    pixels: the outline first, then holes), bounding box (x, y, width, height), longest diameter, area,
    highest probability, cells, and whether it is reported (`reported`, `reporting`: its words; `size_class`, None
    below the reporting threshold: `slides.decision`)."""
    data = read_json(folder.regions_geojson)
    if data is None:
        raise FileNotFoundError(f"{folder.regions_geojson}: the analysis has no regions file")
    out = []
    for number, feature in enumerate(data.get("features", []), start=1):
        rings = feature["geometry"]["coordinates"]
        outline = np.asarray(rings[0], dtype=float)
        x0, y0 = outline.min(axis=0)
        x1, y1 = outline.max(axis=0)
        p = feature["properties"]
        out.append({"id": region_number(feature, number), "rings": rings, "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "longest_diameter_mm": float(p["longest_diameter_mm"]), "area_mm2": float(p["area_mm2"]),
                    "max_probability": float(p["max_probability"]), "cells": int(p["cells"]),
                    "reported": is_reported(p), "reporting": reporting_words(p),
                    "size_class": size_class(float(p["longest_diameter_mm"])) if is_reported(p) else None})
    return out


def cell_at(lattice: Lattice, x: float, y: float) -> tuple[int, int]:
    """The map cell (row, column) holding level-0 point (x, y); `ValueError` outside the slide."""
    if not (0 <= x < lattice.width and 0 <= y < lattice.height):
        raise ValueError(f"point ({x:.0f}, {y:.0f}) is outside the slide's {lattice.width} x {lattice.height} pixels")
    return min(int(y // lattice.cell_px), lattice.shape[0] - 1), min(int(x // lattice.cell_px), lattice.shape[1] - 1)


def window_at(slide_path: str | Path, heat: np.ndarray, lattice: Lattice, x: float, y: float) -> dict[str, Any]:
    """The 96 x 96 PCam-scale window of the cell under level-0 point (x, y), read as the analysis read it:
    `row`, `col`, its level-0 box (`x`, `y`, `size`), `pixels` (96, 96, 3) uint8, and the map's `probability`
    (None when the cell was not scored) with `state` "scored", "not scored" (no tissue), "unreadable" or "out of
    scope" (`heat` from `load_heat`: the guard flagged the window, so its probability is not shown)."""
    row, col = cell_at(lattice, x, y)
    wx, wy = lattice.window_origin(row, col)
    size = WINDOW * lattice.f
    with open_slide(slide_path, mpp=lattice.mpp) as slide:
        pixels = slide.read_scaled(float(wx), float(wy), size, size, (WINDOW, WINDOW))
    value = float(heat[row, col])
    state = ("unreadable" if value == UNREADABLE else "out of scope" if value == OUT_OF_SCOPE
             else "not scored" if math.isnan(value) else "scored")
    return {"row": row, "col": col, "x": float(wx), "y": float(wy), "size": size, "pixels": pixels,
            "probability": value if state == "scored" else None, "state": state}


def window_from_corner(slide_path: str | Path, heat: np.ndarray, lattice: Lattice, x: float, y: float) -> dict[str, Any]:
    """The window whose top-left corner is level-0 point (x, y) (the position every face names a window by), as
    `window_at` gives it; `ValueError` when no window of the map's lattice starts there (within a pixel)."""
    size = WINDOW * lattice.f
    window = window_at(slide_path, heat, lattice, x + size / 2, y + size / 2)
    if abs(window["x"] - x) > 1 or abs(window["y"] - y) > 1:
        raise ValueError(f"no window of this map starts at ({x:.0f}, {y:.0f}); the nearest starts at "
                         f"({window['x']:.0f}, {window['y']:.0f}) (level-0 px, top-left)")
    return window


def is_synthetic(slide_path: str | Path, summary: dict[str, Any] | None = None) -> bool:
    """Whether a slide is SYNTHETIC: `pcam demo-slide` writes truth.json beside it saying so, and an
    analysis summary may carry the flag too."""
    if summary and summary.get("synthetic"):
        return True
    truth = read_json(Path(slide_path).parent / "truth.json")
    return bool(isinstance(truth, dict) and truth.get("synthetic") and truth.get("slide") == Path(slide_path).name)


def overlay_extents(folder: AnalysisFolder, lattice: Lattice) -> dict[str, dict[str, float] | None]:
    """The level-0 width and height the map and tissue overlays span (what `heat_overlay` and
    `tissue_overlay` draw), without drawing them: {"heatmap": {...}, "tissue": {...} or None}."""
    rows, cols = lattice.shape
    tissue = None
    if folder.tissue_png.is_file():
        with Image.open(folder.tissue_png) as image:
            scale = THUMB_PCAM_PX * lattice.f
            tissue = {"width": image.width * scale, "height": image.height * scale}
    return {"heatmap": {"width": cols * lattice.cell_px, "height": rows * lattice.cell_px}, "tissue": tissue}
