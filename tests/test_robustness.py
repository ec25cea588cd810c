"""The robustness report: graded shifts of real patches (`pcam_core.shifts`), the bundled model scored under
them (`pcam_core.robustness`), `pcam robustness`, and the Runs page's section drawn from what it wrote.

The run used here is a real run folder whose best checkpoint is the bundled model's file (trained on real
tissue), so every figure comes from the real engine on the real fixture patches."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest

from helpers import bundled_single_state
from pcam_core.cli import main
from pcam_core.config import ExperimentConfig
from pcam_core.data import open_dataset
from pcam_core.metrics import binary_metrics
from pcam_core.predict import evaluate_run
from pcam_core.robustness import AUC_DROP, COLUMNS, ECE_LIMIT, report_card, run_robustness, sample_indices
from pcam_core.runs import RunDir, create_run
from pcam_core.scoring_options import ScoringOptions
from pcam_core.shifts import SHIFTS, apply_shift, resolve_shifts
from pcam_core.workspace import robustness as service


@pytest.fixture(scope="module")
def patches(real_kaggle) -> np.ndarray:
    dataset = open_dataset(real_kaggle, "train")
    return dataset.read_pixels(np.arange(0, len(dataset), 12))  # 14 real patches of both classes


@pytest.fixture(scope="module")
def bundled_run(real_h5, tmp_path_factory) -> RunDir:
    """A run folder on the real HDF5 fixture whose best checkpoint is the bundled model."""
    state = bundled_single_state()
    config = ExperimentConfig.from_dict(state["config"]).replace(data={"path": str(real_h5), "format": "h5"})
    run = create_run(tmp_path_factory.mktemp("runs"), config, run_id="bundled-copy")
    run.checkpoints.mkdir()
    torch.save({**state, "config": config.to_dict()}, run.best_checkpoint)
    return run


@pytest.fixture(scope="module")
def cli_report(bundled_run, real_h5) -> tuple[dict, str]:
    """`pcam robustness` on the 32 real patches of the test split, blur only (6 conditions): its report and output."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["robustness", "--run", str(bundled_run.path), "--data", str(real_h5), "--split", "test",
                     "--shifts", "blur", "--device", "cpu", "--no-tta"])
    assert code == 0, out.getvalue()
    _, json_path = bundled_run.robustness_files("test")
    return json.loads(json_path.read_text()), out.getvalue()


# -- the shifts ----------------------------------------------------------------------------------------

def test_each_shift_is_the_identity_at_0_and_moves_the_pixels_more_with_each_grade(patches):
    for name, shift in SHIFTS.items():
        assert apply_shift(patches, name, 0) is patches
        for sign in (-1, 1):
            strengths = sorted((s for s in shift.grades if s * sign > 0), key=abs)
            changes = [np.abs(apply_shift(patches, name, s).astype(int) - patches).mean() for s in strengths]
            if strengths:
                assert changes[0] > 0.5, (name, sign, changes)
                assert all(b > a for a, b in zip(changes, changes[1:])), (name, sign, changes)


def test_a_stain_shift_changes_that_stain_and_not_the_other(patches):
    from skimage.color import rgb2hed

    def stains(pixels):
        hed = rgb2hed(pixels)
        return hed[..., 0].mean(), hed[..., 1].mean()

    h0, e0 = stains(patches)
    h, e = stains(apply_shift(patches, "haematoxylin", -2))  # 30% less haematoxylin
    assert h / h0 == pytest.approx(0.7, abs=0.03) and e / e0 == pytest.approx(1.0, abs=0.03)
    h, e = stains(apply_shift(patches, "eosin", 2))  # 30% more eosin
    assert e / e0 == pytest.approx(1.3, abs=0.05) and h / h0 == pytest.approx(1.0, abs=0.03)


def test_normalising_moves_the_colours_towards_the_other_labs_stains(patches):
    normalised = apply_shift(patches, "normalise", 3)
    assert normalised.shape == patches.shape and normalised.dtype == np.uint8
    halfway = apply_shift(patches, "normalise", 2)
    # in optical density, two thirds of the way lies between the original and the fully normalised patch
    od = [np.log1p(p.astype(float)).mean(axis=(0, 1, 2)) for p in (patches, halfway, normalised)]
    assert np.allclose(od[1], od[0] + 2 / 3 * (od[2] - od[0]), atol=0.01)


def test_unknown_shifts_and_strengths_are_refused_by_name(patches):
    with pytest.raises(ValueError, match="unknown shift 'fog'.*stain, normalise, blur"):
        resolve_shifts("blur,fog")
    with pytest.raises(ValueError, match="no strength 9; valid: 0, 1, 2"):
        apply_shift(patches, "blur", 9)
    assert [s.name for s in resolve_shifts("stain,blur,eosin")] == ["haematoxylin", "eosin", "blur"]


def test_the_sample_is_seeded_and_keeps_the_share_of_each_class():
    labels = np.array([0] * 60 + [1] * 40)
    first = sample_indices(labels, 20, seed=3)
    assert np.array_equal(first, sample_indices(labels, 20, seed=3)) and len(first) == 20
    assert labels[first].sum() == 8 and not np.array_equal(first, sample_indices(labels, 20, seed=4))
    assert np.array_equal(sample_indices(labels, None, 0), np.arange(100))


# -- the report card -----------------------------------------------------------------------------------

def _table(shift: str, figures: dict[int, tuple[float, float]]) -> pd.DataFrame:
    """A table as `score_shifts` makes it, of generated (ROC-AUC, ECE) per strength."""
    base = figures[0][0]
    rows = [{"shift": shift, "title": SHIFTS[shift].title, "strength": s, "level": SHIFTS[shift].grades.get(s, 1.0),
             "unit": SHIFTS[shift].unit, "n": 100, "roc_auc": auc, "auc_drop": base - auc, "ece": ece, "brier": 0.1,
             "accuracy": 0.9, "mean_probability": 0.4, "threshold": 0.5} for s, (auc, ece) in figures.items()]
    return pd.DataFrame(rows, columns=COLUMNS)


def test_the_card_names_the_first_strength_past_either_limit_in_each_direction():
    table = _table("haematoxylin", {-3: (0.80, 0.05), -2: (0.87, 0.05), -1: (0.94, 0.04), 0: (0.95, 0.03),
                                    1: (0.94, 0.05), 2: (0.93, ECE_LIMIT + 0.02), 3: (0.90, 0.2)})
    card = report_card(table, resolve_shifts("haematoxylin"))
    weaker, stronger = card["entries"]
    assert (weaker["direction"], weaker["fails_at"], weaker["trustworthy_up_to"]) == (-1, -2, -1)
    assert "when the haematoxylin (the nuclear stain) is 30% weaker than in these patches" in weaker["sentence"]
    assert "ROC-AUC 0.870, 0.080 below the unshifted 0.950" in weaker["sentence"] and "15% weaker" in weaker["sentence"]
    assert (stronger["fails_at"], stronger["trustworthy_up_to"]) == (2, 1) and "calibration error 0.120" in stronger["sentence"]
    steady = report_card(_table("blur", {0: (0.95, 0.03), **{s: (0.95 - AUC_DROP / 2, 0.05) for s in range(1, 6)}}),
                         resolve_shifts("blur"))
    assert steady["entries"][0]["fails_at"] is None and steady["entries"][0]["sentence"].startswith("Stays trustworthy")


def test_a_drop_within_its_own_error_is_not_a_failure_and_the_card_says_so():
    table = _table("blur", {0: (0.95, 0.03), 1: (0.94, 0.03), 2: (0.88, 0.04), 3: (0.80, 0.05), 4: (0.75, 0.05), 5: (0.7, 0.05)})
    # the drop at 2 (0.07) is past the limit but its interval includes no drop; from 3 on it is clear
    intervals = {0: (0.0, 0.0), 1: (-0.02, 0.04), 2: (-0.01, 0.15), 3: (0.05, 0.25), 4: (0.1, 0.3), 5: (0.15, 0.35)}
    table["auc_drop_low"] = table["strength"].map(lambda s: intervals[s][0])
    table["auc_drop_high"] = table["strength"].map(lambda s: intervals[s][1])
    entry = report_card(table, resolve_shifts("blur"))["entries"][0]
    assert (entry["fails_at"], entry["trustworthy_up_to"]) == (3, 2), entry
    assert "95% interval of the drop 0.050 to 0.250" in entry["sentence"]
    assert entry["within_error"] and "within its own error" in entry["sentence"] and "0.070" in entry["sentence"]
    # without intervals (a class with fewer than 2 patches) the drop alone is judged, as before
    bare = report_card(_table("blur", {0: (0.95, 0.03), 1: (0.94, 0.03), 2: (0.88, 0.04), 3: (0.8, 0.05), 4: (0.75, 0.05),
                                       5: (0.7, 0.05)}), resolve_shifts("blur"))
    assert bare["entries"][0]["fails_at"] == 2


def test_a_badly_calibrated_baseline_is_said_and_only_the_auc_judged():
    card = report_card(_table("blur", {0: (0.95, 0.15), **{s: (0.94, 0.3) for s in range(1, 6)}}), resolve_shifts("blur"))
    assert not card["judges_ece"] and "not calibrated on these patches" in card["notes"][0]
    assert card["entries"][0]["fails_at"] is None


# -- the bundled model on real patches -----------------------------------------------------------------

def test_strength_0_scores_the_split_as_pcam_evaluate_does(cli_report, bundled_run, real_h5, tmp_path):
    report, _ = cli_report
    evaluated = evaluate_run(bundled_run.path, real_h5, "test", tmp_path / "test.json",
                             ScoringOptions(tta=False, device="cpu", workers=0))
    predictions = pd.read_csv(evaluated["predictions_file"])
    expected = binary_metrics(predictions["label"].to_numpy(), predictions["probability"].to_numpy(), report["threshold"])
    base = [row for row in report["table"] if row["strength"] == 0]
    assert len(base) == 1 and base[0]["n"] == expected["n"] == 32
    for key in ("roc_auc", "ece", "brier", "accuracy"):
        assert base[0][key] == pytest.approx(expected[key], abs=1e-6), key  # float32 convolutions, batched alike
    assert base[0]["mean_probability"] == pytest.approx(predictions["probability"].mean(), abs=1e-6)


def test_the_cli_writes_the_table_and_the_json_and_prints_the_card(cli_report, bundled_run):
    report, printed = cli_report
    csv_path, json_path = bundled_run.robustness_files("test")
    assert csv_path.parent == bundled_run.path / "robustness" and json_path.exists()
    table = pd.read_csv(csv_path)
    assert list(table.columns) == COLUMNS and list(table["strength"]) == [0, 1, 2, 3, 4, 5]
    # each drop has its paired interval around it (0 at strength 0: the same scores)
    assert (table["auc_drop_low"] <= table["auc_drop"] + 1e-12).all() and (table["auc_drop"] <= table["auc_drop_high"] + 1e-12).all()
    assert table.loc[0, "auc_drop_low"] == table.loc[0, "auc_drop_high"] == 0
    assert list(table["level"]) == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0] and (table["n"] == 32).all()
    assert report["threshold"] == pytest.approx(0.5) and report["model"] == "pcamnet" and not report["synthetic_data"]
    entry = report["card"]["entries"][0]
    assert entry["shift"] == "blur" and entry["sentence"] in printed
    assert "Report card" in printed and f"wrote {csv_path}" in printed


def test_the_bundled_model_needs_an_out_folder(real_h5):
    with pytest.raises(ValueError, match="bundled model has no run folder.*--out"):
        run_robustness("bundled", real_h5, "test", shifts="blur")


# -- the Runs page section -----------------------------------------------------------------------------

def _section(run_path: str, split: str) -> None:
    from pcam_app.robustness import section
    from pcam_core.runs import RunDir

    section(RunDir(run_path), split)


def test_the_runs_section_draws_the_card_and_charts_from_the_written_report(cli_report, bundled_run):
    report, _ = cli_report
    at = AppTest.from_function(_section, args=(str(bundled_run.path), "test"), default_timeout=60).run()
    assert not at.exception, at.exception
    shown = "\n".join(str(e.value) for kind in ("markdown", "caption") for e in getattr(at, kind))
    assert report["card"]["entries"][0]["sentence"] in shown and "32 patches of the test split" in shown
    figures = [json.loads(json.loads(e.proto.json)["figure"]) for e in at.get("bidi_component")
               if e.proto.component_name == "pcam_chart"]
    assert [f["layout"]["title"]["text"].split(" against")[0] for f in figures] == ["ROC-AUC", "calibration error (ECE)"]
    strengths = figures[0]["data"][0]["x"]  # numpy's bytes in base64, as plotly writes arrays
    strengths = np.frombuffer(base64.b64decode(strengths["bdata"]), strengths["dtype"]) if isinstance(strengths, dict) else strengths
    assert figures[0]["data"][0]["name"] == "Blur" and list(strengths) == [0, 1, 2, 3, 4, 5]

    other = AppTest.from_function(_section, args=(str(bundled_run.path), "valid"), default_timeout=60).run()
    assert not other.exception and "No robustness report of the valid split" in other.info[0].value
    assert other.button(key="robustness_start").label.startswith("Write the robustness report")
    assert service.robustness_report(bundled_run, "valid") is None


@pytest.mark.slow
def test_heavy_blur_and_jpeg_lower_the_bundled_models_roc_auc(real_kaggle, tmp_path):
    report = run_robustness("bundled", real_kaggle, "train", ScoringOptions(tta=False, device="cpu"), out_dir=tmp_path,
                            shifts="blur,jpeg", limit=96)
    table = pd.DataFrame(report["table"])
    base = table.loc[table["strength"] == 0, "roc_auc"].iloc[0]
    for shift in ("blur", "jpeg"):
        rows = table[table["shift"] == shift].sort_values("strength")
        assert rows["roc_auc"].iloc[-1] < base - AUC_DROP, (shift, rows["roc_auc"].tolist())
        assert rows["roc_auc"].iloc[-1] < rows["roc_auc"].iloc[1] and rows["ece"].iloc[-1] > rows["ece"].iloc[0]
    assert {e["shift"]: e["fails_at"] is not None for e in report["card"]["entries"]} == {"blur": True, "jpeg": True}


@pytest.mark.slow
def test_the_background_job_writes_the_report_the_page_reads(bundled_run):
    from helpers import wait_for

    status = service.start_robustness(bundled_run, "valid", limit=16)
    assert status.active and "--limit" in status.command
    assert wait_for(lambda: not service.robustness_status(bundled_run, "valid").active, timeout=300)
    final = service.robustness_status(bundled_run, "valid")
    assert final.state == "finished", final.log_tail
    report = service.robustness_report(bundled_run, "valid")
    assert report["n"] == 16 and len(report["frame"]) == 45 and len(report["card"]["entries"]) == 11
    assert "Blur: Stops being trustworthy" in final.log_tail or "Blur: Stays trustworthy" in final.log_tail  # the card, printed
