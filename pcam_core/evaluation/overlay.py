"""The truth of one analysed slide drawn against its map: the annotated tumour outlines and the map's regions, each
marked by how they match, as one GeoJSON FeatureCollection in level-0 pixels (what the Slides page's viewer draws).

The matching rule is the FROC's (`froc.py`, CAMELYON16's code): a lesion is a connected part of the *evaluation
mask* (the annotations grown by 37.5 µm at 0.243 µm/px, holes filled, on the level-5 grid), and lesions whose major
axis is under 275 µm are ITC. The FROC asks whether a detection *point* falls in a lesion; a region is an area, so
here a region matches a lesion when any of its cells falls in that lesion's evaluation mask (its filled outline,
on the same grid). Then:

- a region in a non-ITC lesion is a **true positive**; one in ITC lesions only is **itc** (neither hit nor false
  alarm, as the FROC counts it); one outside every lesion (any region of a normal slide) is a **false alarm**;
- a non-ITC lesion that some region falls in is **found**; one that none does is a **miss**; an ITC lesion is
  **itc** whether a region falls in it or not.

Each feature's `match` property says which; lesions are `kind: "lesion"` (the outline of their annotated tumour,
traced on the evaluation grid, with the lesion's label, size class and longest diameter), regions `kind: "region"`
(their number, `region`, and outline as the analysis wrote them).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..staging import size_class
from .froc import evaluation_mask, itc_labels
from .truth import EVALUATION_DOWNSAMPLE, EVALUATION_LEVEL, grid_shape, read_asap_xml, read_geojson, read_mask_tiff

MATCHES = {  # match -> the legend's words
    "found": "lesion found (a region falls in it)",
    "miss": "lesion missed (no region in it)",
    "true_positive": "region on a lesion (true positive)",
    "false_alarm": "region outside every lesion (false alarm)",
    "itc": "ITC: isolated tumour cells, neither hit nor false alarm (FROC rule)",
}
TRUTH_SUFFIXES = (".tif", ".tiff", ".xml", ".geojson", ".json")  # mask TIFF, ASAP XML, QuPath GeoJSON


def read_truth_file(path: str | Path, width: int, height: int) -> np.ndarray:
    """One slide's tumour truth from a file of any form `truth.py` reads (by its suffix: `.tif`/`.tiff` a mask TIFF,
    `.xml` ASAP XML, `.geojson`/`.json` QuPath GeoJSON), as a boolean mask on the evaluation grid of a slide of
    `width` x `height` level-0 pixels."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"truth file not found: {path}")
    shape = grid_shape(width, height)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return read_mask_tiff(path, shape)
    if suffix == ".xml":
        return read_asap_xml(path, shape)
    if suffix in (".geojson", ".json"):
        return read_geojson(path, shape)
    raise ValueError(f"{path.name}: not a truth file; valid: a mask TIFF (.tif), ASAP XML (.xml) or QuPath GeoJSON (.geojson, .json)")


def read_truth_upload(name: str, data: bytes, width: int, height: int) -> np.ndarray:
    """`read_truth_file` of an uploaded file's bytes (named `name`, whose suffix says its form)."""
    suffix = Path(name).suffix.lower()
    if suffix not in TRUTH_SUFFIXES:
        raise ValueError(f"{name}: not a truth file; valid: a mask TIFF (.tif), ASAP XML (.xml) or QuPath GeoJSON (.geojson, .json)")
    with tempfile.TemporaryDirectory(prefix="pcam-truth-") as folder:
        path = Path(folder) / f"truth{suffix}"
        path.write_bytes(data)
        return read_truth_file(path, width, height)


def _outline(mask: np.ndarray) -> list[list[list[float]]]:
    """The outlines of a boolean mask on the evaluation grid as rings in level-0 pixels (largest first): the
    0.5-level contours of the pixels, whose centres sit at level-0 32k + 16."""
    from skimage.measure import approximate_polygon, find_contours

    padded = np.pad(mask.astype(np.float32), 1)
    rings = []
    for contour in find_contours(padded, 0.5):
        contour = approximate_polygon(contour - 1, tolerance=0.3)
        rings.append([[round((c + 0.5) * EVALUATION_DOWNSAMPLE, 1), round((r + 0.5) * EVALUATION_DOWNSAMPLE, 1)]
                      for r, c in contour])
    return sorted(rings, key=len, reverse=True)


def _region_labels(region: dict[str, Any], labels: np.ndarray) -> set[int]:
    """The lesion labels under a region: those of the evaluation-grid pixels whose centres its outline holds (less
    its holes), or, for a region smaller than a grid pixel, of the pixel under its outline's mean."""
    from skimage.draw import polygon

    def pixels(ring: np.ndarray) -> set[tuple[int, int]]:  # pixel centres at level-0 32k + 16, as `truth._rasterise`
        rows, cols = polygon(ring[:, 1] / EVALUATION_DOWNSAMPLE - 0.5, ring[:, 0] / EVALUATION_DOWNSAMPLE - 0.5, labels.shape)
        return set(zip(rows.tolist(), cols.tolist()))

    rings = [np.asarray(ring, dtype=np.float64) for ring in region["rings"]]
    inside = pixels(rings[0]).difference(*(pixels(hole) for hole in rings[1:]))
    if not inside:
        x, y = rings[0].mean(axis=0)
        r, c = int(y) // EVALUATION_DOWNSAMPLE, int(x) // EVALUATION_DOWNSAMPLE
        inside = {(r, c)} if 0 <= r < labels.shape[0] and 0 <= c < labels.shape[1] else set()
    return {int(labels[r, c]) for r, c in inside} - {0}


def truth_overlay(tumour: np.ndarray | None, regions: Sequence[dict[str, Any]], *, mpp: float, width: int,
                  height: int) -> dict[str, Any]:
    """The lesions of `tumour` (a boolean mask on the evaluation grid; None or empty: a normal slide) and the
    `regions` (`slides.viewer.regions`: id, rings in level-0 pixels), matched as the module says, as a GeoJSON
    FeatureCollection; its `counts` give the number of features of each match."""
    from skimage import measure

    shape = grid_shape(width, height)
    tumour = np.zeros(shape, dtype=bool) if tumour is None else np.asarray(tumour, dtype=bool)
    if tumour.shape != shape:
        raise ValueError(f"the truth mask is {tumour.shape[1]} x {tumour.shape[0]} on the evaluation grid; a slide of "
                         f"{width} x {height} px needs {shape[1]} x {shape[0]}")
    labels = evaluation_mask(tumour, mpp, EVALUATION_LEVEL)
    itc = itc_labels(labels, mpp, EVALUATION_LEVEL)
    features, hit = [], set()
    for region in regions:
        under = _region_labels(region, labels)
        match = "true_positive" if under - itc else "itc" if under else "false_alarm"
        hit |= under
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": region["rings"]},
                         "properties": {"kind": "region", "region": region["id"], "match": match,
                                        "lesions": sorted(int(label) for label in under)}})
    pixel_mm = EVALUATION_DOWNSAMPLE * mpp / 1000
    lesions = []
    for prop in measure.regionprops(np.where(tumour, labels, 0)):
        label = int(prop.label)
        match = "itc" if label in itc else "found" if label in hit else "miss"
        diameter = float(prop.feret_diameter_max * pixel_mm)
        lesions.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": _outline(tumour & (labels == label))},
                        "properties": {"kind": "lesion", "lesion": label, "match": match, "size_class": size_class(diameter),
                                       "diameter_mm": round(diameter, 3)}})
    features = lesions + features
    counts = {match: sum(f["properties"]["match"] == match for f in features) for match in MATCHES}
    return {"type": "FeatureCollection", "features": features, "counts": counts,
            "rule": "a region matches a lesion when one of its cells falls in the lesion's evaluation mask "
                    "(annotations grown by 75 µm / 2, CAMELYON16's FROC); ITC lesions count neither way"}


__all__ = ["MATCHES", "TRUTH_SUFFIXES", "read_truth_file", "read_truth_upload", "truth_overlay"]
