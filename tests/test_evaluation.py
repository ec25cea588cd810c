"""pcam_core.evaluation: truth in three forms, CAMELYON16's FROC (checked against a port of the challenge's own
script, tests/camelyon16_official.py), lesion detections from a map, pN stages and kappa, and `pcam
evaluate-slides` end to end on analysed demo slides."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from pcam_core.evaluation.cases import quadratic_kappa, read_cases, read_stages, stage_case
from pcam_core.evaluation.detections import lesion_points, read_detections, write_detections
from pcam_core.evaluation.froc import evaluation_mask, froc_curve, froc_score, itc_labels, slide_hits
from pcam_core.evaluation.truth import EVALUATION_DOWNSAMPLE, TruthFolder, read_mask_tiff
from pcam_core.slides.demo import DemoSlideSpec, Region, truth_mask
from pcam_core.staging import pn_stage

sys.path.insert(0, str(Path(__file__).parent))
import camelyon16_official as official  # noqa: E402

SIZE = (4096, 3072)  # level-0 pixels at 0.243 um/px, CAMELYON16's resolution
SLIDES = {
    "Tumor_001": [Region("micro", 1200, 1400, 220, 150, 20), Region("micro_small", 3100, 2200, 130, 100, 0),
                  Region("itc", 3200, 700, 60, 45, 45)],
    "Tumor_002": [Region("micro", 2000, 1500, 300, 180, 30)],
    "Normal_001": [],
}
FORMS = ("mask", "xml", "geojson")


def ellipse_ring(r: Region, mpp: float = 0.243, n: int = 128) -> np.ndarray:
    """The outline of a demo region, level-0 (x, y), as an annotator would draw it."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    a, b, angle = r.semi_major_um / mpp, r.semi_minor_um / mpp, math.radians(r.angle_deg)
    u, v = a * np.cos(t), b * np.sin(t)
    return np.stack([r.cx + u * math.cos(angle) - v * math.sin(angle), r.cy + u * math.sin(angle) + v * math.cos(angle)], 1)


def write_mask_tiff(path: Path, level5: np.ndarray) -> None:
    """A CAMELYON16-style mask TIFF: tumour 255, tiled levels of downsample 1, 2, ..., 32 (OpenSlide's level 5)."""
    import tifffile

    with tifffile.TiffWriter(path) as tif:
        for index, d in enumerate((1, 2, 4, 8, 16, 32)):
            k = EVALUATION_DOWNSAMPLE // d
            level = np.kron(level5.astype(np.uint8) * 255, np.ones((k, k), dtype=np.uint8))
            tif.write(level, tile=(256, 256), photometric="minisblack", compression="zlib",
                      subfiletype=1 if index else 0, metadata=None)


def write_truth(folder: Path, form: str, slides: dict[str, list[Region]] = SLIDES) -> Path:
    """The slides' truth in one form, and reference.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, regions in slides.items():
        lines.append(f"{name},{'Tumor,Micro' if regions else 'Normal'}")
        if not regions:
            continue
        rings = [ellipse_ring(r) for r in regions]
        if form == "mask":
            write_mask_tiff(folder / f"{name}_Mask.tif", truth_mask(DemoSlideSpec(width=SIZE[0], height=SIZE[1]), regions))
        elif form == "xml":
            annotations = "".join(
                f'<Annotation Name="Annotation {i}" Type="Polygon" PartOfGroup="Tumor" Color="#F4FA58"><Coordinates>'
                + "".join(f'<Coordinate Order="{k}" X="{x:.2f}" Y="{y:.2f}" />' for k, (x, y) in enumerate(ring))
                + "</Coordinates></Annotation>" for i, ring in enumerate(rings))
            (folder / f"{name}.xml").write_text(f'<?xml version="1.0"?><ASAP_Annotations><Annotations>{annotations}</Annotations>'
                                                '<AnnotationGroups><Group Name="Tumor" PartOfGroup="None" Color="#ff0000" />'
                                                '</AnnotationGroups></ASAP_Annotations>')
        else:
            features = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring.tolist() + [ring[0].tolist()]]},
                         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}}
                        for ring in rings]
            (folder / f"{name}.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    (folder / "reference.csv").write_text("\n".join(lines) + "\n")
    return folder


# probability, x, y: hits (two in one lesion), one in the ITC (counts for nothing), false positives
DETECTIONS = {
    "Tumor_001": [(0.95, 1200, 1400), (0.40, 1300, 1450), (0.62, 3100, 2200), (0.90, 3200, 700), (0.70, 300, 300),
                  (0.30, 3900, 2900)],
    "Tumor_002": [(0.55, 2000, 1500), (0.81, 200, 2900), (0.45, 3800, 300)],
    "Normal_001": [(0.85, 1000, 1000), (0.35, 2000, 2000), (0.60, 3000, 1000)],
}


def our_curve(truth: Path, detections: dict[str, list[tuple[float, int, int]]]) -> tuple[np.ndarray, np.ndarray, list]:
    folder = TruthFolder(truth)
    slides = []
    for name, points in detections.items():
        found = folder.truth(name, *SIZE)
        labels = evaluation_mask(found.mask)
        slides.append(slide_hits(points, labels, itc_labels(labels), is_tumour=found.label == "tumour"))
    fps, sens = froc_curve(slides)
    return fps, sens, slides


def test_the_three_forms_of_truth_give_the_same_froc_as_the_official_script(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for name, points in DETECTIONS.items():
        write_detections(results / f"{name}.csv", points)
    curves = {form: our_curve(write_truth(tmp_path / form, form), DETECTIONS) for form in FORMS}
    fps, sens, slides = curves["mask"]
    assert [s.lesions for s in slides] == [2, 1, 0] and [len(s.itc) for s in slides] == [1, 0, 0]
    for form in FORMS[1:]:
        np.testing.assert_array_equal(curves[form][0], fps)
        np.testing.assert_array_equal(curves[form][1], sens)
    official_fps, official_sens = official.evaluate(str(results), str(tmp_path / "mask"))
    np.testing.assert_array_equal(fps, official_fps)
    np.testing.assert_array_equal(sens, official_sens)
    score, at = froc_score(fps, sens)
    assert score == pytest.approx(np.mean(np.interp([0.25, 0.5, 1, 2, 4, 8], official_fps[::-1], official_sens[::-1])))
    # by hand: 3 lesions; FPs 0.85 0.81 0.70 0.60 0.45 0.35 0.30 over 3 slides; hits 0.95 0.62 0.55
    assert at["8"] == pytest.approx(1.0) and at["0.25"] == pytest.approx(1 / 3)


def test_the_mask_tiff_reads_as_openslide_reads_level_5(tmp_path):
    import openslide

    regions = SLIDES["Tumor_001"]
    level5 = truth_mask(DemoSlideSpec(width=SIZE[0], height=SIZE[1]), regions)
    write_mask_tiff(tmp_path / "a_mask.tif", level5)
    with openslide.open_slide(str(tmp_path / "a_mask.tif")) as slide:
        seen = np.asarray(slide.read_region((0, 0), 5, slide.level_dimensions[5]))[..., 0] == 255
    np.testing.assert_array_equal(read_mask_tiff(tmp_path / "a_mask.tif"), seen)
    np.testing.assert_array_equal(seen, level5)


def test_exclusions_cut_tumour_and_a_slide_without_truth_is_none(tmp_path):
    ring = ellipse_ring(Region("a", 2000, 1500, 300, 300, 0))
    square = [[1800, 1300], [2200, 1300], [2200, 1700], [1800, 1700]]
    features = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring.tolist()]},
                 "properties": {"classification": {"name": "Tumour"}}},
                {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]},
                 "properties": {"classification": {"name": "Exclusion"}}}]
    (tmp_path / "s.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    truth = TruthFolder(tmp_path).truth("s", *SIZE)
    assert truth.label == "tumour" and truth.mask.any() and not truth.mask[1500 // 32, 2000 // 32]
    assert TruthFolder(tmp_path).truth("other", *SIZE) is None


def test_itc_rule_and_growth_follow_the_official_definitions():
    mask = np.zeros((200, 200), dtype=bool)
    mask[20:23, 20:23] = True  # about 23 um: ITC
    mask[100:160, 100:105] = True  # about 470 um long: counts
    mask[20:23, 30:33] = True  # 7 pixels (54 um) from the first: grown by 37.5 um each, the two merge
    labels = evaluation_mask(mask)
    assert labels.max() == 2 and itc_labels(labels) == {int(labels[21, 21])}
    assert labels[21, 21] == labels[21, 31]


def test_lesion_points_suppress_neighbours_and_stop_at_the_floor(tmp_path):
    from pcam_core.slides.analysis import Lattice

    lattice = Lattice(4096, 3072, 0.243, 32)  # cells of 128 px, 31 um
    heat = np.full(lattice.shape, np.nan, dtype=np.float32)
    heat[5:20, 5:25] = 0.1
    heat[10, 10], heat[11, 11], heat[15, 20] = 0.9, 0.8, 0.7
    points = lesion_points(heat, lattice, floor=0.5, radius_um=187)
    assert points == [(0.9, 1344, 1344), (0.7, 2624, 1984)]  # (11, 11) lies within 187 um of (10, 10)
    write_detections(tmp_path / "s.csv", points)
    assert read_detections(tmp_path / "s.csv") == points


@pytest.mark.parametrize("classes, stage", [
    ([], "pN0"), (["none"] * 5, "pN0"), (["itc", "none"], "pN0(i+)"), (["itc", "micro", "none"], "pN1mi"),
    (["micro"] * 5, "pN1mi"), (["macro", "itc", "itc", "itc", "itc"], "pN1"), (["macro", "micro", "micro"], "pN1"),
    (["macro", "micro", "micro", "micro"], "pN2"), (["macro"] * 9 + ["micro"], "pN3"),
])
def test_pn_stage_follows_the_camelyon17_rules(classes, stage):
    assert pn_stage(classes) == stage


def test_a_case_is_provisional_while_a_slide_is_not_assessed_and_names_its_deciding_slides():
    case = stage_case("p1", {"n0": "macro", "n1": "micro", "n2": "none", "n3": "not assessed"})
    assert case.stage == "pN1" and case.deciding == ["n0", "n1"] and case.provisional and case.unread == ["n3"]
    assert not stage_case("p2", {"n0": "itc"}).provisional


def test_kappa_is_sklearns_quadratic_kappa_over_the_ordered_stages(tmp_path):
    from sklearn.metrics import cohen_kappa_score

    reference = ["pN0", "pN1", "pN2", "pN1mi", "pN0(i+)"]
    ours = ["pN0", "pN1", "pN1", "pN1mi", "pN0"]
    codes = {s: i for i, s in enumerate(["pN0", "pN0(i+)", "pN1mi", "pN1", "pN2"])}
    expected = cohen_kappa_score([codes[s] for s in reference], [codes[s] for s in ours], weights="quadratic")
    assert quadratic_kappa(reference, ours) == pytest.approx(expected)
    assert quadratic_kappa(reference, reference) == pytest.approx(1.0)
    (tmp_path / "stages.csv").write_text("patient,stage\npatient_000.zip,pN1\npatient_000_node_0.tif,macro\n"
                                         "patient_000_node_1.tif,negative\n")
    assert read_stages(tmp_path / "stages.csv") == ({"patient_000": "pN1"}, {"patient_000_node_0": "macro", "patient_000_node_1": "none"})
    (tmp_path / "cases.csv").write_text("patient,slide\np1,Tumor_001.tif\np1,Normal_001\n")
    assert read_cases(tmp_path / "cases.csv") == {"p1": ["tumor_001", "normal_001"]}


def test_cases_from_a_folder_per_patient(tmp_path):
    for patient, slides in {"p1": ["node_0", "node_1"], "p2": ["node_0.tif"]}.items():
        for slide in slides:
            (tmp_path / patient / slide).mkdir(parents=True)
    assert read_cases(tmp_path) == {"p1": ["node_0", "node_1"], "p2": ["node_0"]}


@pytest.mark.parametrize("args, message", [
    (["--analyses", "/nonexistent/maps"], "analyses folder not found"),
    (["--analyses", "{tmp}"], "no complete analysis under"),
    (["--analyses", "{tmp}", "--stages", "s.csv"], "stages need cases"),
    (["--analyses", "{tmp}", "--floor", "2"], "floor must be a probability"),
])
def test_evaluate_slides_refuses_bad_input_in_one_line(tmp_path, capsys, args, message):
    from pcam_core.cli import main

    assert main(["evaluate-slides", "--out", str(tmp_path / "out"), *[a.format(tmp=tmp_path) for a in args]]) == 2
    assert message in capsys.readouterr().err


def test_a_bad_reference_class_is_named(tmp_path):
    (tmp_path / "reference.csv").write_text("Test_001,Maybe\n")
    with pytest.raises(ValueError, match="unknown class 'Maybe' for Test_001"):
        TruthFolder(tmp_path)


@pytest.mark.slow
def test_evaluate_slides_on_analysed_demo_slides_equals_the_official_script(tmp_path, capsys):
    """Three small demo slides analysed with the bundled model (stride 96), their truth in all three forms: the
    CLI's figures are the same for each and equal the official script's on the detections it wrote."""
    from helpers import cli_here

    from pcam_core.bundled import BUNDLED
    from pcam_core.evaluation import EvaluationOptions, evaluate_slides
    from pcam_core.scoring_options import ScoringOptions
    from pcam_core.slides.batch import analyse
    from pcam_core.slides.demo import make_demo_slide

    for name, regions in SLIDES.items():
        make_demo_slide(tmp_path / "slides" / name, DemoSlideSpec(width=SIZE[0], height=SIZE[1]), regions)
        analyse(BUNDLED, tmp_path / "slides" / name / "slide.tif", tmp_path / "analyses" / name,
                ScoringOptions(device="cpu", workers=0, tta=False), stride=96)
    make_demo_slide(tmp_path / "slides" / "Normal_002", DemoSlideSpec(width=SIZE[0], height=SIZE[1], seed=1), [])
    analyse(BUNDLED, tmp_path / "slides" / "Normal_002" / "slide.tif", tmp_path / "analyses" / "Normal_002",
            ScoringOptions(device="cpu", workers=0, tta=False), stride=96)
    (tmp_path / "cases.csv").write_text("patient,slide\np1,Tumor_001\np1,Normal_001\np2,Tumor_002\n")
    (tmp_path / "stages.csv").write_text("patient,stage\np1.zip,pN1mi\nTumor_001.tif,micro\nNormal_001.tif,negative\n"
                                         "p2.zip,pN1mi\nTumor_002.tif,micro\n")
    truths = {form: write_truth(tmp_path / form, form, {**SLIDES, "Normal_002": []}) for form in FORMS}
    done = cli_here(capsys, "evaluate-slides", "--analyses", str(tmp_path / "analyses"), "--truth", str(truths["mask"]),
                   "--out", str(tmp_path / "eval-mask"), "--cases", str(tmp_path / "cases.csv"), "--stages", str(tmp_path / "stages.csv"),
                   "--floor", "0.05")
    assert done.returncode == 0, done.stderr
    assert "FROC:" in done.stdout and "p1: pN0 (provisional)" in done.stdout
    results = {"mask": json.loads((tmp_path / "eval-mask" / "froc.json").read_text())}
    for form in FORMS[1:]:  # the same from Python
        results[form] = evaluate_slides(tmp_path / "analyses", tmp_path / f"eval-{form}", truth=truths[form],
                                        options=EvaluationOptions(floor=0.05))
        results[form] = json.loads(json.dumps(results[form]))  # as froc.json holds it
    froc = results["mask"]
    for form in FORMS[1:]:
        assert results[form]["froc"] == froc["froc"] and results[form]["curve"] == froc["curve"]
        assert results[form]["lesion_sensitivity"] == froc["lesion_sensitivity"]
    official_fps, official_sens = official.evaluate(str(tmp_path / "eval-mask" / "detections"), str(tmp_path / "mask"))
    np.testing.assert_allclose(froc["curve"]["fp_per_slide"], official_fps)
    np.testing.assert_allclose(froc["curve"]["sensitivity"], official_sens)
    if froc["froc"] is not None:
        assert froc["froc"] == pytest.approx(np.mean(np.interp([0.25, 0.5, 1, 2, 4, 8], official_fps[::-1], official_sens[::-1])))
    assert froc["lesions_counted"] == 3 and {r["size_class"] for r in froc["lesions"]} == {"itc", "micro"}
    assert froc["not_assessed"] == sorted([*SLIDES, "Normal_002"])  # synthetic tissue: out of the bundled model's scope
    assert froc["slide_auc"] is not None and 0 <= froc["slide_auc"]["low"] <= froc["slide_auc"]["high"] <= 1
    cases = json.loads((tmp_path / "eval-mask" / "cases.json").read_text())
    assert all(p["provisional"] for p in cases["patients"]) and cases["agreement"]["patients"] == 2
    assert (tmp_path / "eval-mask" / "camelyon17_submission.csv").read_text().startswith("patient,stage\np1.zip,pN0\n")
    assert "FROC" in (tmp_path / "eval-mask" / "report.html").read_text()
    excluded = evaluate_slides(tmp_path / "analyses", tmp_path / "eval-exclude", truth=truths["mask"],
                               options=EvaluationOptions(not_assessed="exclude"))
    assert excluded["excluded_not_assessed"] == sorted([*SLIDES, "Normal_002"]) and excluded["froc"] is None
    assert excluded["slide_auc"] is None and excluded["slides"] == []
