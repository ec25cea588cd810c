"""The truth of a slide, in the forms people have it, as one tumour mask on the evaluation grid.

The evaluation grid is CAMELYON16's: level 5, one pixel per 32 x 32 level-0 pixels (`EVALUATION_DOWNSAMPLE`);
pixel (r, c) covers level-0 [32c, 32c + 32) x [32r, 32r + 32) and is tumour when its centre is (polygons) or when
the mask's own level 5 says so (mask TIFFs). Forms read:

- CAMELYON16 mask TIFFs, `<slide>_mask.tif` (or `_Mask.tif`): tumour = 255 (a mask holding only 0 and 1: 1),
  read at their stored level of downsample 32 when they have one (as the official script reads level 5 through
  OpenSlide), else from the finest level, reduced by the block maximum.
- ASAP XML annotations, `<slide>.xml`, as CAMELYON16/17 distribute them: polygons of the groups "Tumor", "_0"
  and "_1" are tumour; those of "Exclusion" and "_2" are cut out of it (as CAMELYON16's masks were made).
- GeoJSON as QuPath exports it, `<slide>.geojson` (or `.json`): Polygon and MultiPolygon features classified
  "Tumor" / "Tumour" are tumour (holes kept); those classified "Exclusion" are cut out.
- `reference.csv` (`name,class[,type]`, CAMELYON16's: `Test_001,Tumor,Macro`) gives slide labels; without it a
  slide's label follows from its annotations (any tumour: tumour). A normal slide needs no annotation file.
"""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

EVALUATION_LEVEL = 5
EVALUATION_DOWNSAMPLE = 2**EVALUATION_LEVEL
TUMOUR_GROUPS = ("tumor", "tumour", "_0", "_1")
EXCLUSION_GROUPS = ("exclusion", "_2")
NORMAL_WORDS = ("normal", "negative")
TUMOUR_WORDS = ("tumor", "tumour", "positive", "itc", "micro", "macro")


@dataclass(frozen=True)
class Truth:
    """A slide's truth: `label` "tumour" or "normal" (None: unknown), `mask` the tumour on the evaluation grid
    (None: no lesion truth, e.g. a tumour slide listed in reference.csv without annotations), `source` the file
    or files it came from, `kind` reference.csv's third column (e.g. "Macro") when given."""

    name: str
    label: str | None
    mask: np.ndarray | None
    source: str
    kind: str | None = None


def grid_shape(width: int, height: int) -> tuple[int, int]:
    """The evaluation grid's (rows, columns) for a slide of `width` x `height` level-0 pixels."""
    return -(-int(height) // EVALUATION_DOWNSAMPLE), -(-int(width) // EVALUATION_DOWNSAMPLE)


def _fit(mask: np.ndarray, shape: tuple[int, int] | None) -> np.ndarray:
    """`mask` cropped or padded (with no tumour) to `shape`; as it is when no shape is known."""
    if shape is None or mask.shape == tuple(shape):
        return mask
    out = np.zeros(shape, dtype=bool)
    h, w = min(shape[0], mask.shape[0]), min(shape[1], mask.shape[1])
    out[:h, :w] = mask[:h, :w]
    return out


def read_mask_tiff(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A CAMELYON16 mask TIFF (tumour = 255) as a boolean mask on the evaluation grid."""
    import tifffile
    from skimage.measure import block_reduce

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            levels = tif.series[0].levels
            width = levels[0].shape[1]
            downsamples = [width / level.shape[1] for level in levels]
            exact = [i for i, d in enumerate(downsamples) if abs(d - EVALUATION_DOWNSAMPLE) < 0.5]
            index = exact[0] if exact else max(i for i, d in enumerate(downsamples) if d <= EVALUATION_DOWNSAMPLE)
            pixels = levels[index].asarray()
    except (tifffile.TiffFileError, ValueError, IndexError) as err:
        raise ValueError(f"{path}: not a readable mask TIFF ({err})") from err
    if pixels.ndim == 3:
        pixels = pixels[..., 0]
    tumour = pixels == 1 if pixels.max(initial=0) == 1 else pixels == 255
    if not exact:
        factor = round(EVALUATION_DOWNSAMPLE / downsamples[index])
        tumour = block_reduce(tumour, (factor, factor), np.max)
    return _fit(tumour, shape)


def _rasterise(tumour: list[list[np.ndarray]], exclusion: list[list[np.ndarray]], shape: tuple[int, int]) -> np.ndarray:
    """Polygons (each a list of rings in level-0 (x, y); rings after the first are holes) filled on the evaluation
    grid: the tumour's, less its holes, less the exclusions'."""
    from skimage.draw import polygon as fill

    def paint(target: np.ndarray, ring: np.ndarray, value: bool) -> None:
        # pixel centres sit at level-0 32k + 16, i.e. grid coordinate k: shift the vertices by half a pixel
        rows, cols = fill(ring[:, 1] / EVALUATION_DOWNSAMPLE - 0.5, ring[:, 0] / EVALUATION_DOWNSAMPLE - 0.5, shape)
        target[rows, cols] = value

    mask = np.zeros(shape, dtype=bool)
    for rings in tumour:
        piece = np.zeros(shape, dtype=bool)
        paint(piece, rings[0], True)
        for hole in rings[1:]:
            paint(piece, hole, False)
        mask |= piece
    for rings in exclusion:
        for ring in rings[:1]:
            paint(mask, ring, False)
    return mask


def read_asap_xml(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """ASAP XML annotations (CAMELYON16/17) as a boolean tumour mask on the evaluation grid."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{path}: not readable ASAP XML ({err})") from err
    tumour: list[list[np.ndarray]] = []
    exclusion: list[list[np.ndarray]] = []
    for annotation in root.iter("Annotation"):
        group = (annotation.get("PartOfGroup") or "").strip().lower()
        points = sorted(((int(c.get("Order", i)), float(c.get("X")), float(c.get("Y")))
                         for i, c in enumerate(annotation.iter("Coordinate"))))
        if len(points) < 3:
            continue
        ring = np.array([(x, y) for _, x, y in points])
        if group in TUMOUR_GROUPS:
            tumour.append([ring])
        elif group in EXCLUSION_GROUPS:
            exclusion.append([ring])
    return _rasterise(tumour, exclusion, shape)


def _classification(feature: dict[str, Any]) -> str:
    props = feature.get("properties") or {}
    value = props.get("classification") or {}
    name = value.get("name", "") if isinstance(value, dict) else str(value)
    return str(name or props.get("name", "")).strip().lower()


def read_geojson(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """QuPath's GeoJSON export (a FeatureCollection or a list of features) as a boolean tumour mask."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not readable GeoJSON ({err})") from err
    features = data.get("features", []) if isinstance(data, dict) else data
    tumour: list[list[np.ndarray]] = []
    exclusion: list[list[np.ndarray]] = []
    for feature in features:
        geometry = feature.get("geometry") or {}
        kind = geometry.get("type")
        polygons = ([geometry["coordinates"]] if kind == "Polygon" else geometry["coordinates"] if kind == "MultiPolygon" else [])
        name = _classification(feature)
        target = tumour if name in ("tumor", "tumour") else exclusion if name == "exclusion" else None
        if target is not None:
            target.extend([np.asarray(ring, dtype=float)[:, :2] for ring in rings] for rings in polygons if rings)
    return _rasterise(tumour, exclusion, shape)


def read_reference(path: str | Path) -> dict[str, tuple[str, str | None]]:
    """reference.csv (`name,class[,type]`, a header optional): slide name -> ("tumour" | "normal", type)."""
    path = Path(path)
    labels: dict[str, tuple[str, str | None]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.reader(handle):
            if not row or not row[0].strip() or row[0].strip().lower() in ("name", "image", "slide"):
                continue
            if len(row) < 2:
                raise ValueError(f"{path}: the row {row} has no class (expected name,class[,type])")
            word = row[1].strip().lower()
            if word not in NORMAL_WORDS + TUMOUR_WORDS:
                raise ValueError(f"{path}: unknown class {row[1]!r} for {row[0]}; valid: Tumor, Normal")
            kind = row[2].strip() if len(row) > 2 and row[2].strip() else None
            labels[slide_key(row[0])] = ("normal" if word in NORMAL_WORDS else "tumour", kind)
    return labels


def slide_key(name: str) -> str:
    """The name slides are matched by: the file name without its suffix, lower case."""
    name = Path(name.strip()).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)].lower()
    return Path(name).stem.lower() if "." in name else name.lower()


class TruthFolder:
    """A folder of truth files (searched recursively) and its reference.csv, looked up by slide name."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"truth folder not found: {self.path}")
        self.files: dict[tuple[str, str], Path] = {}
        for file in sorted(self.path.rglob("*")):
            low = file.name.lower()
            if low.endswith(("_mask.tif", "_mask.tiff")):
                self.files.setdefault((low.rsplit("_mask.", 1)[0], "mask"), file)
            elif low.endswith(".xml"):
                self.files.setdefault((low[:-4], "xml"), file)
            elif low.endswith((".geojson", ".json")):
                self.files.setdefault((slide_key(low), "geojson"), file)
        references = sorted(self.path.rglob("reference.csv"))
        self.reference = read_reference(references[0]) if references else {}

    def truth(self, name: str, width: int, height: int) -> Truth | None:
        """The truth of slide `name` (its analysis folder's name) of this level-0 size; None when there is none."""
        key, shape = slide_key(name), grid_shape(width, height)
        label, kind = self.reference.get(key, (None, None))
        for form, reader in (("mask", read_mask_tiff), ("xml", read_asap_xml), ("geojson", read_geojson)):
            file = self.files.get((key, form))
            if file is not None:
                mask = reader(file, shape)
                return Truth(name, label or ("tumour" if mask.any() else "normal"), mask, str(file.relative_to(self.path)), kind)
        if label == "normal":
            return Truth(name, label, np.zeros(shape, dtype=bool), "reference.csv", kind)
        if label == "tumour":
            return Truth(name, label, None, "reference.csv", kind)
        return None


__all__ = ["EVALUATION_DOWNSAMPLE", "EVALUATION_LEVEL", "Truth", "TruthFolder", "grid_shape", "read_asap_xml",
           "read_geojson", "read_mask_tiff", "read_reference", "slide_key"]
