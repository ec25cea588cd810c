"""CAMELYON16's FROC, computed as the challenge's own evaluation code computes it
(computationalpathologygroup/Camelyon16, `Python/Evaluation_FROC.py` and `Matlab/`), in Python 3 on arrays.

- Evaluation mask (`evaluation_mask`): on the level-5 mask, the pixels whose Euclidean distance to tumour is under
  75 / (resolution x 2^5 x 2) pixels (with 0.243 um/px: 4.82 pixels, i.e. the annotations grown by 37.5 um, half
  of the "75 um, the size of 5 tumour cells" the code names), holes filled, 8-connected components labelled:
  each label is one lesion; lesions nearer than 75 um merge.
- ITC (`itc_labels`): a lesion whose major axis (of the ellipse with the same second moments, skimage's
  `major_axis_length`) is under 275 / (resolution x 2^5) pixels (200 um plus the 75 um of growth) is isolated tumour
  cells: neither a hit nor a false positive.
- A detection (probability, x, y in level-0 pixels) at mask pixel (y // 32, x // 32): on a tumour slide outside
  every lesion it is a false positive; in a non-ITC lesion it is a hit, the lesion taking its highest probability;
  in an ITC lesion it counts for nothing. On a normal slide every detection is a false positive.
- The curve (`froc_curve`): for each distinct probability but the lowest, the false positives at or above it divided
  by the number of slides (all of them, tumour and normal) and the lesions hit at or above it divided by all
  non-ITC lesions; then the point (0, 0).
- The FROC score (`froc_score`): the mean sensitivity at 1/4, 1/2, 1, 2, 4 and 8 false positives per slide, each
  read off the curve by linear interpolation (`np.interp`) as the widely used Python 3 ports do (e.g. NCRF's);
  the official script draws the curve and leaves this step to the challenge's site.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

L0_RESOLUTION = 0.243  # CAMELYON16's level-0 microns per pixel
FP_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
GROWTH_UM = 75.0
ITC_AXIS_UM = 275.0


def evaluation_mask(tumour: np.ndarray, resolution: float = L0_RESOLUTION, level: int = 5) -> np.ndarray:
    """The labelled evaluation mask (0: no lesion; 1..n: lesions) of a boolean tumour mask at `level`."""
    from scipy import ndimage
    from skimage import measure

    tumour = np.asarray(tumour, dtype=bool)
    if not tumour.any():  # a normal slide (the official code never builds its mask); the transform needs a zero
        return np.zeros(tumour.shape, dtype=np.int64)
    distance = ndimage.distance_transform_edt(~tumour)
    threshold = GROWTH_UM / (resolution * 2**level * 2)
    filled = ndimage.binary_fill_holes(distance < threshold)
    return measure.label(filled, connectivity=2)


def itc_labels(labels: np.ndarray, resolution: float = L0_RESOLUTION, level: int = 5) -> set[int]:
    """The labels of the lesions that are isolated tumour cells."""
    from skimage import measure

    threshold = ITC_AXIS_UM / (resolution * 2**level)
    return {int(p.label) for p in measure.regionprops(labels) if p.axis_major_length < threshold}  # the official's major_axis_length, renamed


@dataclass
class SlideHits:
    """One slide's part of the FROC: the probabilities of its false positives, the highest probability of the
    detections in each lesion (`lesion_probs[label - 1]`; 0: missed or ITC, as the official code keeps them, or no
    lesion truth), the ITC labels and the number of lesions that count."""

    fp_probs: list[float] = field(default_factory=list)
    lesion_probs: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    itc: set[int] = field(default_factory=set)
    lesions: int = 0
    itc_probs: dict[int, float] = field(default_factory=dict)  # the highest probability in each ITC lesion (ours)


def label_at(labels: np.ndarray, x: int, y: int, level: int = 5) -> int:
    """The lesion label under level-0 point (x, y); 0 outside every lesion or outside the mask."""
    r, c = int(y) // 2**level, int(x) // 2**level
    return int(labels[r, c]) if 0 <= r < labels.shape[0] and 0 <= c < labels.shape[1] else 0


def slide_hits(detections: list[tuple[float, int, int]], labels: np.ndarray | None, itc: set[int], *, is_tumour: bool,
               level: int = 5) -> SlideHits:
    """Hits and false positives of one slide's detections (probability, x, y); `labels`: its evaluation mask."""
    n = int(labels.max(initial=0)) if labels is not None else 0
    hits = SlideHits(lesion_probs=np.zeros(n, dtype=np.float32), itc=set(itc), lesions=n - len(itc))
    for prob, x, y in detections:
        label = label_at(labels, x, y, level) if is_tumour and labels is not None else 0
        if label == 0:
            hits.fp_probs.append(float(prob))
        elif label in itc:
            hits.itc_probs[label] = max(hits.itc_probs.get(label, 0.0), float(prob))
        elif prob > hits.lesion_probs[label - 1]:
            hits.lesion_probs[label - 1] = prob
    return hits


def froc_curve(slides: list[SlideHits]) -> tuple[np.ndarray, np.ndarray]:
    """(false positives per slide, sensitivity) over the thresholds, as the official `computeFROC`."""
    fps = np.asarray([p for s in slides for p in s.fp_probs], dtype=np.float64)
    tps = np.asarray([p for s in slides for p in s.lesion_probs], dtype=np.float64)
    lesions = sum(s.lesions for s in slides)
    thresholds = np.unique(np.concatenate([fps, tps]))[1:]
    total_fps = [int((fps >= t).sum()) for t in thresholds] + [0]
    total_tps = [int((tps >= t).sum()) for t in thresholds] + [0]
    sensitivity = np.asarray(total_tps, dtype=np.float64) / lesions if lesions else np.full(len(total_tps), np.nan)
    return np.asarray(total_fps, dtype=np.float64) / max(1, len(slides)), sensitivity


def froc_score(fps: np.ndarray, sensitivity: np.ndarray, rates: tuple[float, ...] = FP_RATES) -> tuple[float | None, dict[str, float]]:
    """The mean sensitivity at the `rates` (false positives per slide), and the sensitivity at each; None when the
    slides hold no lesion that counts."""
    if not len(sensitivity) or not np.isfinite(sensitivity).all():
        return None, {}
    at = np.interp(rates, fps[::-1], sensitivity[::-1])
    return float(np.mean(at)), {f"{rate:g}": float(s) for rate, s in zip(rates, at)}


__all__ = ["FP_RATES", "GROWTH_UM", "ITC_AXIS_UM", "L0_RESOLUTION", "SlideHits", "evaluation_mask", "froc_curve", "froc_score",
           "itc_labels", "label_at", "slide_hits"]
