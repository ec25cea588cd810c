"""What an analysis writes beside its map: tumour regions (GeoJSON), tiles.csv, heatmap.png,
heatmap.tif (a pyramidal TIFF aligned with the slide) and tissue.png. Every file is written atomically.

A region is a 4-connected set of cells at or above the threshold. Its area is its cells' area; its mean and
highest probability and its neighbour agreement feed the reporting rule (`slides.decision`); its longest diameter is the maximum Feret diameter of its cells (skimage's `feret_diameter_max`) in mm; its
polygon traces the cells' outline in level-0 pixels (corners rounded by an eighth of a cell).

Regions are numbered once, here, largest first: #1 is the largest (`slides.regions`: the number is the
feature's `region` property and its `name`, "tumour region #1", what QuPath shows).
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from skimage import measure

from ..decision import is_tumour
from ..fileio import atomic_write_json, atomic_write_with
from .analysis import UNREADABLE, Lattice
from .scope_map import OUT_OF_SCOPE
from .folder import AnalysisFolder
from .decision import region_agreement
from .regions import region_name
from .tissue import THUMB_PCAM_PX

THUMB_SHOWN_PX = 2048  # the longest side of the thumbnail drawn under heatmap.png
_UPSAMPLE = 4  # cells are traced on a 4x finer grid so the polygon follows their edges


def valid_cells(heat: np.ndarray) -> np.ndarray:
    """Cells holding a probability: scored, readable and (in an `assessed_map`) in scope."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(heat) & (heat >= 0)


def _ring_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def tumour_regions(heat: np.ndarray, lattice: Lattice, threshold: float) -> list[dict[str, Any]]:
    """GeoJSON Features, largest first, of the connected cells with probability >= `threshold`."""
    positive = valid_cells(heat) & is_tumour(heat, threshold)
    labels = measure.label(positive, connectivity=1)
    features = []
    for prop in measure.regionprops(labels):
        r0, c0, r1, c1 = prop.bbox
        region = labels[r0:r1, c0:c1] == prop.label
        fine = np.pad(np.kron(region, np.ones((_UPSAMPLE, _UPSAMPLE), dtype=bool)), 1).astype(np.float32)
        rings = []
        for contour in measure.find_contours(fine, 0.5):
            # fine pixel u (after the 1-pixel pad) has its centre at cell coordinate (u - 1 + 0.5) / _UPSAMPLE
            rows = (contour[:, 0] - 0.5) / _UPSAMPLE + r0
            cols = (contour[:, 1] - 0.5) / _UPSAMPLE + c0
            ring = np.stack([cols * lattice.cell_px, rows * lattice.cell_px], axis=1)
            if not np.array_equal(ring[0], ring[-1]):
                ring = np.vstack([ring, ring[:1]])
            rings.append(ring)
        rings.sort(key=lambda ring: -abs(_ring_area(ring)))  # the outline encloses the most; the rest are holes
        values = heat[r0:r1, c0:c1][region]
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [np.round(ring, 1).tolist() for ring in rings]},
            "properties": {
                "objectType": "annotation",
                "classification": {"name": "Tumor", "color": [200, 0, 0]},
                "name": "",  # numbered below, once sorted
                "cells": int(prop.area),
                "area_mm2": float(prop.area * lattice.cell_mm**2),
                "longest_diameter_mm": float(prop.feret_diameter_max * lattice.cell_mm),
                "max_probability": float(values.max()),
                "mean_probability": float(values.mean()),
                "agreement": region_agreement(region),
                "centroid_x": float((prop.centroid[1] + 0.5) * lattice.cell_px),
                "centroid_y": float((prop.centroid[0] + 0.5) * lattice.cell_px),
            },
        })
    features.sort(key=lambda feat: -feat["properties"]["area_mm2"])
    for number, feature in enumerate(features, start=1):
        feature["properties"]["region"] = number
        feature["properties"]["name"] = region_name(number)
    return features



def write_regions(folder: AnalysisFolder, features: list[dict[str, Any]], slide: dict[str, Any] | None = None) -> None:
    """The regions as a GeoJSON FeatureCollection; `slide`: what holds for the whole slide (a slide not assessed),
    as the collection's `properties` (a foreign member: QuPath reads the features alone)."""
    atomic_write_json(folder.regions_geojson, {"type": "FeatureCollection", **({"properties": slide} if slide else {}),
                                               "features": features})


def write_tiles_csv(folder: AnalysisFolder, heat: np.ndarray, lattice: Lattice, distances: np.ndarray | None = None,
                    scope_threshold: float | None = None) -> int:
    """`x`, `y` (top-left of each scored window, level-0 pixels), `probability`, the cell's `row`, `col`, and with
    the model's guard its `ood_score` (`pcam_core.scope` distance) and `in_scope`."""
    rows, cols = np.nonzero(valid_cells(heat))
    x, y = lattice.window_origin(rows, cols)
    frame = pd.DataFrame({"x": np.round(x).astype(np.int64), "y": np.round(y).astype(np.int64),
                          "probability": np.round(heat[rows, cols].astype(np.float64), 6), "row": rows, "col": cols})
    if distances is not None and scope_threshold is not None:
        score = np.asarray(distances, dtype=np.float64)[rows, cols]
        frame["ood_score"] = np.round(score, 4)
        frame["in_scope"] = np.nan_to_num(score, nan=np.inf) <= scope_threshold
    atomic_write_with(folder.tiles_csv, lambda h: h.write(frame.to_csv(index=False).encode()))
    return len(frame)


def colour_map(heat: np.ndarray, cmap: str = "inferno") -> np.ndarray:
    """uint8 RGB of the map: probabilities through `cmap`, white where not scored, grey where unreadable or out
    of scope."""
    from matplotlib import colormaps

    rgb = (colormaps[cmap](np.clip(np.nan_to_num(heat, nan=0.0), 0, 1))[..., :3] * 255).astype(np.uint8)
    rgb[~np.isfinite(heat)] = 255
    rgb[heat == UNREADABLE] = 128
    rgb[heat == OUT_OF_SCOPE] = 176
    return rgb


def write_heatmap_png(folder: AnalysisFolder, heat: np.ndarray, thumb: np.ndarray, lattice: Lattice, threshold: float, title: str) -> None:
    """The map over the thumbnail, with its colour scale; unreadable regions dark grey, out-of-scope cells (an
    `assessed_map`) light grey hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = heat.shape
    extent = (0, cols * lattice.cell_px, rows * lattice.cell_px, 0)
    fig, ax = plt.subplots(figsize=(8, 8 * rows / max(cols, 1) + 0.6), dpi=120)
    th, tw = thumb.shape[:2]
    scale = THUMB_PCAM_PX * lattice.f  # level-0 pixels per thumbnail pixel
    # matplotlib resamples an image in float RGBA: a CAMELYON-size thumbnail (3,125 x 6,875) took about a GB there.
    # The figure is about 1,000 px wide, so the thumbnail is first reduced to at most THUMB_SHOWN_PX a side.
    reduce = max(1, math.ceil(max(th, tw) / THUMB_SHOWN_PX))
    shown_thumb = np.asarray(Image.fromarray(thumb).reduce(reduce)) if reduce > 1 else thumb
    ax.imshow(shown_thumb, extent=(0, tw * scale, th * scale, 0))
    shown = np.ma.masked_where(~valid_cells(heat), heat)
    image = ax.imshow(shown, extent=extent, cmap="inferno", vmin=0, vmax=1, alpha=0.6, interpolation="nearest")
    unreadable = np.ma.masked_where(heat != UNREADABLE, np.ones_like(heat))
    ax.imshow(unreadable, extent=extent, cmap="Greys", vmin=0, vmax=2, alpha=0.8, interpolation="nearest")
    outside = heat == OUT_OF_SCOPE
    if outside.any():
        ax.imshow(np.ma.masked_where(~outside, np.ones_like(heat)), extent=extent, cmap="Greys", vmin=0, vmax=4, alpha=0.7,
                  interpolation="nearest")
        ax.contourf((np.arange(cols) + 0.5) * lattice.cell_px, (np.arange(rows) + 0.5) * lattice.cell_px, outside.astype(float),
                    levels=[0.5, 1.5], colors="none", hatches=["////"])
    positive = valid_cells(heat) & is_tumour(heat, threshold)
    if positive.any():
        centres_x = (np.arange(cols + 2) - 0.5) * lattice.cell_px  # padded cell centres
        centres_y = (np.arange(rows + 2) - 0.5) * lattice.cell_px
        ax.contour(centres_x, centres_y, np.pad(positive, 1).astype(float), levels=[0.5], colors="cyan", linewidths=0.8)
    ax.set_xlim(0, lattice.width)
    ax.set_ylim(lattice.height, 0)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("level-0 x (px)")
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label=f"tumour probability (outline: >= {threshold:g})")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_with(folder.heatmap_png, lambda h: h.write(buffer.getvalue()))


def write_heatmap_tif(folder: AnalysisFolder, heat: np.ndarray, lattice: Lattice) -> None:
    """The colour-mapped map as a tiled pyramidal TIFF, one pixel per cell, resolution set so that it
    spans the slide's physical size (OpenSlide reads it as generic-tiff; viewers overlay it)."""
    import tifffile

    rgb = colour_map(heat)
    cell_um = lattice.cell_px * lattice.mpp
    folder.path.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".heatmap.", suffix=".tif", dir=folder.path)
    os.close(fd)
    try:
        with tifffile.TiffWriter(tmp) as tif:
            level, d = rgb, 1
            while True:
                res = 1e4 / (cell_um * d)  # pixels per centimetre
                tif.write(level, tile=(256, 256), photometric="rgb", compression="zlib", resolution=(res, res),
                          resolutionunit="CENTIMETER", subfiletype=1 if d > 1 else 0, metadata=None,
                          description="pcam_core tumour probability map (colour-mapped, inferno; white: not scored)" if d == 1 else None)
                if max(level.shape[:2]) <= 256:
                    break
                h, w = math.ceil(level.shape[0] / 2), math.ceil(level.shape[1] / 2)
                level = np.asarray(Image.fromarray(level).resize((w, h), Image.Resampling.NEAREST))
                d *= 2
        os.replace(tmp, folder.heatmap_tif)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_tissue_png(folder: AnalysisFolder, mask: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray((mask * 255).astype(np.uint8)).save(buffer, format="PNG")
    atomic_write_with(folder.tissue_png, lambda h: h.write(buffer.getvalue()))
