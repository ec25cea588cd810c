"""Where the tissue is: a low-resolution thumbnail aligned with the map lattice, Otsu on saturation.

The thumbnail has one pixel per `THUMB_PCAM_PX` PCam-scale pixels from level-0 pixel (0, 0), so a map
cell of `stride` PCam pixels is exactly `stride / THUMB_PCAM_PX` thumbnail pixels on a side.
"""

from __future__ import annotations

import math

import numpy as np
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_holes, remove_small_objects

from .reader import PCAM_MPP, Slide

THUMB_PCAM_PX = 8  # PCam-scale pixels per thumbnail pixel (7.8 um)
MIN_SATURATION = 0.07  # below this nothing is tissue, whatever Otsu says (a blank slide has only noise)
MIN_OBJECT_PX = 16  # specks smaller than 16 thumbnail pixels (about 31 x 31 um) are dust, not tissue


def read_thumbnail(slide: Slide, *, band_rows: int = 256) -> np.ndarray:
    """uint8 RGB thumbnail, one pixel per `THUMB_PCAM_PX` PCam pixels, read band by band."""
    scale = THUMB_PCAM_PX * PCAM_MPP / slide.mpp  # level-0 pixels per thumbnail pixel
    width, height = slide.dimensions
    tw, th = math.ceil(width / scale), math.ceil(height / scale)
    thumb = np.empty((th, tw, 3), dtype=np.uint8)
    for y in range(0, th, band_rows):
        rows = min(band_rows, th - y)
        thumb[y:y + rows] = slide.read_scaled(0, y * scale, tw * scale, rows * scale, (tw, rows))
    return thumb


def tissue_mask(thumb: np.ndarray) -> np.ndarray:
    """Boolean tissue mask: saturation above its Otsu threshold (and above `MIN_SATURATION`), small
    specks removed and small holes filled."""
    saturation = rgb2hsv(thumb)[..., 1]
    if saturation.max() < MIN_SATURATION:
        return np.zeros(saturation.shape, dtype=bool)
    threshold = max(float(threshold_otsu(saturation)), MIN_SATURATION)
    mask = saturation > threshold
    mask = remove_small_objects(mask, max_size=MIN_OBJECT_PX - 1)
    return remove_small_holes(mask, max_size=MIN_OBJECT_PX - 1)


def cell_fraction(mask: np.ndarray, stride: int, shape: tuple[int, int]) -> np.ndarray:
    """Share of tissue in each map cell of `stride` PCam pixels; `shape` is the map's (rows, cols)."""
    k = stride // THUMB_PCAM_PX
    rows, cols = shape
    padded = np.zeros((rows * k, cols * k), dtype=np.float32)
    h, w = min(mask.shape[0], rows * k), min(mask.shape[1], cols * k)
    padded[:h, :w] = mask[:h, :w]
    return padded.reshape(rows, k, cols, k).mean(axis=(1, 3))
