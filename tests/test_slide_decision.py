"""The slide decision (pcam_core/slides/decision.py): which regions are reported, the slide score and call, on
small synthetic maps (fast); the bundled model's fitted decision; and real mosaics analysed with the bundled
model (slow): a normal slide comes out normal, a tumour slide keeps its lesion."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pcam_core.bundled import BUNDLED_DIR
from pcam_core.runs.folder import RunDir
from pcam_core.slides.analysis import Lattice
from pcam_core.slides.decision import (BELOW, DEFAULT_RULE, FEATURES, REPORTED, RegionRule, SlideClassifier, SlideDecision,
                                       load_slide_decision, region_agreement, slide_decision)
from pcam_core.slides.outputs import tumour_regions, valid_cells
from pcam_core.slides.reader import PCAM_MPP

LATTICE = Lattice(width=40 * 32, height=30 * 32, mpp=PCAM_MPP, stride=32)  # one level-0 pixel per PCam pixel


def _map() -> np.ndarray:
    """A 30 x 40 map of low probabilities with: a 6 x 6 lesion at 0.97, a 3 x 3 block at 0.95, a lone hot cell
    (0.99), a 2 x 2 block at 0.6, and a row of 5 cells at 0.7 (too faint)."""
    rng = np.random.default_rng(0)
    heat = rng.uniform(0.0, 0.3, (30, 40)).astype(np.float32)
    heat[2:8, 2:8] = 0.97
    heat[15:18, 20:23] = 0.95
    heat[25, 35] = 0.99
    heat[10:12, 30:32] = 0.6
    heat[27, 2:7] = 0.7
    heat[0, 39] = np.nan  # not scored
    return heat


def _decide(heat: np.ndarray, decision: SlideDecision) -> tuple[list[dict], dict]:
    regions = tumour_regions(heat, LATTICE, 0.5)
    return regions, slide_decision(heat[valid_cells(heat)], regions, 0.5, LATTICE.cell_mm ** 2, decision)


def test_agreement_of_neighbours():
    block = np.zeros((7, 7), bool)
    block[2:5, 2:5] = True
    lone = np.zeros((3, 3), bool)
    lone[1, 1] = True
    assert region_agreement(lone) == 0.0
    assert region_agreement(block) == pytest.approx((8 + 4 * 5 + 4 * 3) / 9 / 8)  # centre, edges, corners


def test_small_faint_and_lone_regions_are_listed_below_the_threshold_without_a_size_class():
    rule = RegionRule(min_area_mm2=9 * LATTICE.cell_mm ** 2 * 0.999, min_max_probability=0.9, min_agreement=0.3)
    regions, slide = _decide(_map(), SlideDecision(rule))
    props = {p["cells"]: p for p in (f["properties"] for f in regions)}
    assert sorted(props) == [1, 4, 5, 9, 36]  # every region is listed, largest first
    assert [f["properties"]["cells"] for f in regions] == [36, 9, 5, 4, 1]
    assert props[36]["reported"] and props[36]["reporting"] == REPORTED and props[36]["size_class"] == "micro"  # 0.26 mm across
    assert props[9]["reported"] and props[9]["size_class"] == "itc"
    for cells in (1, 4, 5):
        assert not props[cells]["reported"] and props[cells]["reporting"] == BELOW and props[cells]["size_class"] is None
    assert any("area" in why for why in props[1]["below"]) and any("highest probability" in why for why in props[5]["below"])
    assert slide["regions_reported"] == 2 and slide["regions_below_threshold"] == 3
    assert slide["largest_diameter_mm"] == pytest.approx(props[36]["longest_diameter_mm"])
    assert slide["tumour_area_mm2"] == pytest.approx(props[36]["area_mm2"] + props[9]["area_mm2"])
    # without a classifier: the score is the highest reported region's probability, the call tumour
    assert slide["slide_score"] == pytest.approx(0.97) and slide["call"] == "tumour"


def test_a_map_with_only_small_hot_spots_is_normal_with_no_size_class():
    heat = _map()
    heat[2:8, 2:8] = heat[15:18, 20:23] = 0.1  # the two blocks gone: a lone cell and faint bits are left
    regions, slide = _decide(heat, SlideDecision())
    assert len(regions) == 3 and slide["regions_reported"] == 0
    assert slide["size_class"] == "none" and slide["call"] == "normal" and slide["slide_score"] == 0.0
    assert slide["slide_features"]["max_cell"] == pytest.approx(0.99)  # the hottest cell alone no longer decides


def test_the_slide_classifier_scores_features_and_calls_at_its_threshold():
    names = ("largest_region_mm2", "max_cell")
    classifier = SlideClassifier(names, (1.0, 0.5), (1.0, 0.5), (3.0, 0.0), -1.0, threshold=0.6)
    regions, slide = _decide(_map(), SlideDecision(DEFAULT_RULE, classifier))
    z = 3.0 * (slide["slide_features"]["largest_region_mm2"] - 1.0) - 1.0
    assert slide["slide_score"] == pytest.approx(1 / (1 + np.exp(-z))) and slide["slide_threshold"] == 0.6
    assert slide["call"] == ("tumour" if slide["slide_score"] >= 0.6 else "normal")
    assert set(slide["slide_features"]) == set(FEATURES)
    with pytest.raises(ValueError, match="unknown"):
        SlideClassifier(("no such feature",), (0.0,), (1.0,), (1.0,), 0.0)


def test_a_tumour_score_with_no_region_to_show_is_referred_not_called_tumour():
    heat = _map()
    heat[2:8, 2:8] = heat[15:18, 20:23] = 0.1  # nothing left that the rule reports
    sure = SlideClassifier(("max_cell",), (0.0,), (1.0,), (50.0,), 0.0)  # scores this map near 1
    regions, slide = _decide(heat, SlideDecision(DEFAULT_RULE, sure))
    assert slide["slide_score"] > 0.99 and slide["regions_reported"] == 0
    assert slide["call"] == "refer" and "cannot point at" in slide["call_reason"] and slide["size_class"] == "none"
    _, shown = _decide(_map(), SlideDecision(DEFAULT_RULE, sure))  # the same score with a region reported: tumour
    assert shown["call"] == "tumour" and shown["call_reason"] is None


def test_a_decision_round_trips_and_a_run_without_one_gets_the_default(tmp_path):
    decision = SlideDecision(RegionRule(min_area_mm2=0.01, min_agreement=0.4),
                             SlideClassifier(("max_cell",), (0.5,), (0.2,), (1.5,), 0.1), "test", {"n": 3})
    path = RunDir(tmp_path).slide_decision_path
    assert load_slide_decision(path) == SlideDecision()  # none fitted: the stated default
    path.write_text(json.dumps(decision.record()))
    loaded = load_slide_decision(path)
    assert loaded.rule == decision.rule and loaded.classifier == decision.classifier and loaded.source.startswith("fitted")
    path.write_text(json.dumps({"rule": {"min_area": 1}}))
    with pytest.raises(ValueError, match="slide_decision.json"):
        load_slide_decision(path)
    with pytest.raises(ValueError, match="min_max_probability"):
        RegionRule(min_max_probability=1.5)


def test_the_bundled_model_ships_a_fitted_decision():
    decision = load_slide_decision(RunDir(BUNDLED_DIR).slide_decision_path)
    assert decision.classifier is not None and decision.source.startswith("fitted")
    assert decision.fitted["target_false_regions_per_normal_slide"] > 0 and "figures" in decision.fitted


def _analyse_mosaic(tmp_path, name: str, **mosaic) -> tuple[dict, dict, list[dict]]:
    from helpers import real_mosaic_slide

    from pcam_core.bundled import BUNDLED
    from pcam_core.scoring_options import ScoringOptions
    from pcam_core.slides.batch import analyse

    slide, truth = real_mosaic_slide(tmp_path / name, **mosaic)
    out = tmp_path / f"{name}-analysis"
    [record] = analyse(BUNDLED, slide, out, ScoringOptions(device="cpu", workers=0, tta=False), stride=32)
    return record["summary"], truth, json.loads((out / "tumour_regions.geojson").read_text())["features"]


@pytest.mark.slow
def test_a_normal_real_slide_comes_out_normal_and_a_tumour_slide_keeps_its_lesion(tmp_path):
    """Real lymph-node patches (the CC0 fixture) analysed with the bundled model and its shipped decision: a slide
    of normal patches only has hot cells (regions below the reporting threshold) but no reported region, no size
    class and a normal call; a slide with a 5 x 6-patch lesion (0.72 mm across) reports it, micro, called tumour.
    12 x 10 patches a slide: every one of the fixture's 96 normal patches is drawn at least once on average."""
    normal, _, regions = _analyse_mosaic(tmp_path, "normal", cols=12, rows=10, tumour=None)
    assert normal["scope"]["in_scope"] and normal["decision"]["source"].startswith("fitted")
    assert normal["regions_reported"] == 0 and normal["size_class"] == "none" and normal["call"] == "normal"
    assert normal["tumour_area_mm2"] == 0.0 and normal["largest_diameter_mm"] == 0.0
    assert normal["slide_score"] < normal["slide_threshold"]
    assert all(not f["properties"]["reported"] and f["properties"]["size_class"] is None for f in regions)
    assert normal["regions"] == len(regions) == normal["regions_below_threshold"]  # listed, not reported
    print("normal mosaic:", {k: normal[k] for k in ("slide_score", "slide_max_cell", "regions", "regions_reported")})

    tumour, truth, regions = _analyse_mosaic(tmp_path, "tumour", cols=12, rows=10, tumour=(2, 7, 3, 9))
    x, y, w, h = truth["tumour_box"]
    reported = [f["properties"] for f in regions if f["properties"]["reported"]]
    assert tumour["call"] == "tumour" and tumour["slide_score"] >= tumour["slide_threshold"]
    assert tumour["size_class"] == "micro" and tumour["regions_reported"] == len(reported) >= 1
    assert any(x <= p["centroid_x"] <= x + w and y <= p["centroid_y"] <= y + h for p in reported), "the lesion is reported"
    print("tumour mosaic:", {k: tumour[k] for k in ("slide_score", "slide_max_cell", "regions", "regions_reported", "largest_diameter_mm")})


def test_the_operating_point_is_the_middle_of_the_tied_rules_in_every_parameter_at_once():
    """scripts/fit_slide_decision.py picks, of the rules that do equally well, the one nearest their median in every
    parameter. The middle one in the order of the first parameter (how it once picked) can sit at the edge of the others:
    here the sorted middle is (2, 'c', 2), at the top of the second and third axes."""
    import importlib.util

    from helpers import REPO

    spec = importlib.util.spec_from_file_location("fit_slide_decision", REPO / "scripts" / "fit_slide_decision.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    grid = ((1, 2, 3), ("a", "b", "c"), (0, 1, 2))
    tied = sorted([(1, "a", 1), (1, "b", 1), (2, "c", 2), (3, "a", 1), (3, "b", 1)])
    assert tied[len(tied) // 2] == (2, "c", 2)
    assert tied[script.middle_of(tied, grid)] == (1, "b", 1)  # one step from the medians (2, "b", 1); the first of two
    assert script.middle_of([(3, "c", 2)], grid) == 0


@pytest.mark.slow
def test_a_decision_is_fitted_for_a_model_of_a_cross_validated_recipe_on_its_out_of_fold_slide_maps(small_kaggle,
                                                                                                      tmp_path) -> None:
    """`fit_slide_decision.py --run CV --for RUN` (how the fast scanner's decision is fitted): mosaics of each fold's
    held-out patches, each analysed by that fold's member, the decision written to RUN's folder, which then uses it.
    The cross-validation is of `pcamscan`, as the fast scanner's is: its exact dense scan keeps the test short."""
    import importlib.util

    from helpers import CV_ARGS, REPO

    from pcam_core.cli import main
    from pcam_core.runs import RunDir
    from pcam_core.slides.decision import load_slide_decision

    cv_run = tmp_path / "cv"
    assert main(["train", "--data", str(small_kaggle), "--out", str(cv_run), *CV_ARGS, "--model", "pcamscan"]) == 0
    target = RunDir(cv_run).fold(0)
    spec = importlib.util.spec_from_file_location("fit_slide_decision", REPO / "scripts" / "fit_slide_decision.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--data", str(small_kaggle), "--work", str(tmp_path / "work"), "--run", str(cv_run), "--for", str(target.path),
                 "--per-kind", "1", "--false-regions", "100", "--write"])  # in this process: no process boundary under test
    decision = load_slide_decision(target.slide_decision_path)
    assert "held-out patches of the cross-validation cv" in decision.source and str(target.path) in decision.source
    analyses = sorted(p.name for p in (tmp_path / "work" / "analyses").iterdir())
    assert {name.rsplit("-", 1)[1] for name in analyses} == {"fold0", "fold1"}  # each fold's slides, by its member
    assert len(analyses) == 10  # 5 kinds x 2 halves
    assert not RunDir(cv_run).slide_decision_path.exists()  # only --for's folder is written
