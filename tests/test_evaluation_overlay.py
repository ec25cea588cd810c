"""The truth overlay (pcam_core.evaluation.overlay): lesions and regions matched by the FROC's rule (a region on a
lesion's evaluation mask is a true positive; a lesion no region falls in is a miss; ITC count neither way), and one
slide's truth read from a file or an upload in each form."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pcam_core.evaluation.overlay import read_truth_file, read_truth_upload, truth_overlay
from pcam_core.evaluation.truth import EVALUATION_DOWNSAMPLE, grid_shape

WIDTH, HEIGHT, MPP = 6400, 4800, 0.243  # a 200 x 150 evaluation grid


def _square(x: float, y: float, side: float) -> list[list[list[float]]]:
    return [[[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]]


def _truth() -> np.ndarray:
    """A macro lesion (1.5 mm across at 0.243 µm/px), a second lesion far from it, and an ITC (32 µm)."""
    mask = np.zeros(grid_shape(WIDTH, HEIGHT), dtype=bool)
    mask[20:60, 20:60] = True  # 40 px x 32 x 0.243 = 0.31 mm: a micrometastasis
    mask[100:130, 150:180] = True
    mask[10, 180] = True  # one grid pixel: ITC
    return mask


def test_regions_and_lesions_are_matched_by_the_froc_rule():
    regions = [
        {"id": 1, "rings": _square(30 * 32, 30 * 32, 320)},  # inside the first lesion
        {"id": 2, "rings": _square(63 * 32, 40 * 32, 64)},  # just outside the annotation, within its 37.5 µm growth
        {"id": 3, "rings": _square(100 * 32, 10 * 32, 256)},  # far from every lesion
        {"id": 4, "rings": _square(180 * 32, 10 * 32, 32)},  # on the ITC only
    ]
    overlay = truth_overlay(_truth(), regions, mpp=MPP, width=WIDTH, height=HEIGHT)
    by = {(f["properties"]["kind"], f["properties"].get("region", f["properties"].get("lesion"))): f["properties"]
          for f in overlay["features"]}
    assert [by[("region", n)]["match"] for n in (1, 2, 3, 4)] == ["true_positive", "true_positive", "false_alarm", "itc"]
    lesions = sorted((p for (kind, _), p in by.items() if kind == "lesion"), key=lambda p: p["diameter_mm"])
    assert [p["match"] for p in lesions] == ["itc", "miss", "found"]
    assert overlay["counts"] == {"found": 1, "miss": 1, "true_positive": 2, "false_alarm": 1, "itc": 2}
    # the outline of the found lesion goes round its annotated tumour, in level-0 pixels
    found = next(f for f in overlay["features"] if f["properties"].get("match") == "found")
    ring = np.asarray(found["geometry"]["coordinates"][0])
    assert ring[:, 0].min() == pytest.approx(20 * 32, abs=32) and ring[:, 0].max() == pytest.approx(60 * 32, abs=32)
    json.dumps(overlay)  # plain JSON for the viewer


def test_every_region_of_a_normal_slide_is_a_false_alarm():
    overlay = truth_overlay(None, [{"id": 1, "rings": _square(100, 100, 64)}], mpp=MPP, width=WIDTH, height=HEIGHT)
    assert [f["properties"]["match"] for f in overlay["features"]] == ["false_alarm"]


def test_one_slides_truth_reads_alike_from_geojson_xml_and_mask_tiff_files_and_uploads(tmp_path):
    import tifffile

    ring = [[640, 640], [1920, 640], [1920, 1920], [640, 1920], [640, 640]]
    geojson = tmp_path / "s.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {
        "type": "Polygon", "coordinates": [ring]}, "properties": {"classification": {"name": "Tumor"}}}]}))
    xml = tmp_path / "s.xml"
    coords = "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>' for i, (x, y) in enumerate(ring[:-1]))
    xml.write_text(f'<ASAP_Annotations><Annotations><Annotation PartOfGroup="Tumor"><Coordinates>{coords}'
                   '</Coordinates></Annotation></Annotations></ASAP_Annotations>')
    from_geojson = read_truth_file(geojson, WIDTH, HEIGHT)
    pixels = np.repeat(np.repeat(from_geojson.astype(np.uint8) * 255, EVALUATION_DOWNSAMPLE, 0), EVALUATION_DOWNSAMPLE, 1)
    tiff = tmp_path / "s_mask.tif"
    tifffile.imwrite(tiff, pixels[:HEIGHT, :WIDTH])
    assert from_geojson.sum() == 40 * 40
    for path in (xml, tiff):
        assert np.array_equal(read_truth_file(path, WIDTH, HEIGHT), from_geojson), path
        assert np.array_equal(read_truth_upload(path.name, path.read_bytes(), WIDTH, HEIGHT), from_geojson), path
    with pytest.raises(ValueError, match="not a truth file"):
        read_truth_upload("notes.txt", b"tumour", WIDTH, HEIGHT)
    with pytest.raises(FileNotFoundError, match="truth file not found"):
        read_truth_file(tmp_path / "none.xml", WIDTH, HEIGHT)
