"""Where the tissue is: a low-resolution thumbnail aligned with the map lattice; saturation or darkness.

The thumbnail has one pixel per `THUMB_PCAM_PX` PCam-scale pixels from level-0 pixel (0, 0), so a map
cell of `stride` PCam pixels is exactly `stride / THUMB_PCAM_PX` thumbnail pixels on a side.

A pixel is tissue when its HSV saturation is above a threshold, or its optical density (darkness) is.
The saturation threshold is Otsu's, kept between `MIN_SATURATION` (glass and its tint stay out) and
`MAX_SATURATION`: Otsu alone lands between the strongly stained tissue and everything else, and on a
slide with pale H&E (real PCam patches: a quarter of them have a median saturation under 0.1) it put
pale tissue with the glass. Optical density catches dark tissue whose colour is grey (dense nuclei,
faded eosin); glass, even dim, stays far below `MIN_OPTICAL_DENSITY`.

A CAMELYON-size slide's thumbnail is 3,125 x 6,875 pixels: saturation and darkness are computed band by band
(`saturation`, the formula of skimage's `rgb2hsv`, bit for bit), not as whole float64 HSV and density images, which
took about 2 GB at that size (benchmarks/bench_camelyon_size.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_holes, remove_small_objects

from .reader import PCAM_MPP, Slide

THUMB_PCAM_PX = 8  # PCam-scale pixels per thumbnail pixel (7.8 um)
MIN_SATURATION = 0.07  # below this nothing is tissue, whatever Otsu says (a blank slide has only noise)
MAX_SATURATION = 0.10  # above this everything is tissue, whatever Otsu says (pale eosin is about 0.1-0.15)
MIN_OPTICAL_DENSITY = 0.15  # -log10(I/255) of the darkest channel: any channel below 180 of 255 is tissue (glass: < 0.05)
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


BAND_ROWS = 512  # thumbnail rows per band of `saturation` and `tissue_mask`'s darkness


def _by_band(thumb: np.ndarray, per_pixel: Any, dtype: type) -> np.ndarray:
    """`per_pixel` (an (h, w, 3) band -> (h, w) function) over `thumb`, `BAND_ROWS` rows at a time: its temporaries
    are a band's, not the whole image's."""
    out = np.empty(thumb.shape[:2], dtype=dtype)
    for y in range(0, thumb.shape[0], BAND_ROWS):
        out[y:y + BAND_ROWS] = per_pixel(thumb[y:y + BAND_ROWS])
    return out


def _band_saturation(band: np.ndarray) -> np.ndarray:
    high = band.max(axis=-1) * (1.0 / 255)  # as rgb2hsv: on the image scaled to [0, 1] as img_as_float scales it
    delta = high - band.min(axis=-1) * (1.0 / 255)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = delta / high
    s[delta == 0.0] = 0.0
    return s


def saturation(thumb: np.ndarray) -> np.ndarray:
    """HSV saturation (max - min) / max of each pixel, float64 in [0, 1]: `skimage.color.rgb2hsv(thumb)[..., 1]`, bit
    for bit, band by band (no whole float64 copy of the image)."""
    return _by_band(thumb, _band_saturation, np.float64)


def optical_density(thumb: np.ndarray) -> np.ndarray:
    """Optical density of each pixel's darkest channel, -log10(I / 255): 0 for white, 0.3 at half intensity."""
    darkest = thumb.min(axis=-1).astype(np.float32)
    return -np.log10(np.maximum(darkest, 1.0) / 255.0)


def tissue_mask(thumb: np.ndarray) -> np.ndarray:
    """Boolean tissue mask: saturation above its Otsu threshold clipped to [`MIN_SATURATION`,
    `MAX_SATURATION`], or optical density above `MIN_OPTICAL_DENSITY`; small specks removed and small
    holes filled."""
    sat = saturation(thumb)
    dark = _by_band(thumb, lambda band: optical_density(band) > MIN_OPTICAL_DENSITY, bool)
    if sat.max() < MIN_SATURATION and not dark.any():
        return np.zeros(sat.shape, dtype=bool)
    threshold = min(max(float(threshold_otsu(sat)), MIN_SATURATION), MAX_SATURATION)
    mask = sat > threshold
    del sat
    mask |= dark
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
