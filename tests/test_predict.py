"""pcam_core.predict: submissions, evaluation reports, shards, bad images."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from helpers import REPO, make_bad_images, tif_bytes
from pcam_core.data import DataError, PCamH5, patch_id
from pcam_core.predict import SAME_ID_WRITTEN_ONCE, evaluate_run, merge_submissions, predict_submission
from pcam_core.scoring_options import ScoringOptions
from pcam_core.sharding import parse_shard, shard_indices


@pytest.fixture(scope="module")
def tif_folder(demo_root, tmp_path_factory):
    """The demo test split written out as Kaggle-style tifs named by their SHA-1 ids."""
    folder = tmp_path_factory.mktemp("tifs")
    ds = PCamH5(demo_root, "test")
    for pixels in ds.read_pixels(np.arange(40)):
        (folder / f"{patch_id(pixels)}.tif").write_bytes(tif_bytes(pixels))
    return folder


@pytest.mark.slow
def test_submission_from_an_h5_split(trained_run, demo_root, tmp_path):
    out = tmp_path / "sub.csv"
    result = predict_submission(trained_run, demo_root, out, split="test", options=ScoringOptions(device="cpu", workers=0))
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["id", "label"] and len(frame) == 256 == result["rows"]
    assert frame["label"].between(0, 1).all() and frame["id"].is_unique
    ds = PCamH5(demo_root, "test")
    assert frame["id"][0] == ds[0]["id"]  # ids are the pixel SHA-1s, comparable with Kaggle ids
    assert result["synthetic_model"] is True


@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_submission_from_tifs_matches_h5_and_tta_differs(trained_run, demo_root, tif_folder, tmp_path):
    h5 = pd.read_csv(predict_submission(trained_run, demo_root, tmp_path / "h5.csv", ScoringOptions(tta=False, workers=0), split="test")["out"])
    tif = pd.read_csv(predict_submission(trained_run, tif_folder, tmp_path / "tif.csv", ScoringOptions(tta=False, workers=0))["out"])
    merged = tif.merge(h5, on="id", suffixes=("_tif", "_h5"))
    assert len(merged) == 40 and np.allclose(merged["label_tif"], merged["label_h5"], atol=1e-6)
    tta = pd.read_csv(predict_submission(trained_run, tif_folder, tmp_path / "tta.csv", ScoringOptions(workers=0))["out"])  # the default
    assert not np.allclose(tta["label"], tif["label"])
    assert np.corrcoef(tta["label"], tif["label"])[0, 1] > 0.9


@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_shards_cover_everything_once_and_merge(trained_run, tif_folder, tmp_path):
    parts = []
    for i in range(3):
        out = tmp_path / f"part{i}.csv"
        predict_submission(trained_run, tif_folder, out, ScoringOptions(workers=0), shard=(i, 3))
        parts.append(out)
    full = tmp_path / "full.csv"
    predict_submission(trained_run, tif_folder, full, ScoringOptions(workers=0))
    assert merge_submissions(parts, tmp_path / "merged.csv") == 40
    a = pd.read_csv(tmp_path / "merged.csv").sort_values("id").reset_index(drop=True)
    b = pd.read_csv(full).sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    with pytest.raises(DataError, match="is the same shard as .*given twice"):
        merge_submissions([parts[0], tmp_path / "merged.csv", parts[0]], tmp_path / "dup.csv")


def test_identical_patches_of_an_hdf5_split_are_one_row_of_the_submission(trained_run, real_h5, tmp_path):
    """An HDF5 patch's id is a hash of its pixels: two identical patches were two rows of one id in the submission
    (Kaggle refuses it; a join picks one). The row is written once, the repeat listed; shards that each hold one of them
    merge into one row, and one id with two probabilities in two shards is refused."""
    from pcam_core.data.h5 import PCamH5, write_split

    source = PCamH5(real_h5, "test")
    pixels = source.read_pixels(np.arange(len(source)))
    write_split(tmp_path / "dup", "test", np.concatenate([pixels, pixels[:2]]), np.concatenate([source.labels, source.labels[:2]]))
    done = predict_submission(trained_run, tmp_path / "dup", tmp_path / "s.csv", ScoringOptions(workers=0, tta=False))
    written = pd.read_csv(tmp_path / "s.csv", dtype={"id": str})
    assert len(written) == done["rows"] == 32 and written["id"].is_unique
    assert [reason for _, reason in done["skipped"]] == [SAME_ID_WRITTEN_ONCE] * 2
    parts = [tmp_path / "a.csv", tmp_path / "b.csv"]
    written.iloc[:20].to_csv(parts[0], index=False)
    written.iloc[[0, *range(20, 32)]].to_csv(parts[1], index=False)  # the first id in both shards
    assert merge_submissions(parts, tmp_path / "merged.csv") == 32
    written.iloc[[0]].assign(label=0.5).to_csv(parts[1], index=False)
    with pytest.raises(DataError, match=r"1 id\(s\) have different probabilities in different shards"):
        merge_submissions(parts, tmp_path / "conflict.csv")


def test_shard_arithmetic():
    assert [len(shard_indices(10, (i, 3))) for i in range(3)] == [3, 4, 3]
    assert np.array_equal(np.concatenate([shard_indices(10, (i, 3)) for i in range(3)]), np.arange(10))
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "x", "1-4", "0/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)


@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_bad_image_stops_before_writing_or_is_skipped_and_listed(trained_run, tif_folder, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(tif_folder, folder)
    cases = make_bad_images(folder)
    out = tmp_path / "sub.csv"
    with pytest.raises(DataError):
        predict_submission(trained_run, folder, out, ScoringOptions(workers=0))
    assert not out.exists()  # nothing half-written
    result = predict_submission(trained_run, folder, out, ScoringOptions(workers=0), skip_bad=True, results=tmp_path / "r.csv")
    skipped = dict(result["skipped"])
    # grayscale, RGBA and 16-bit patches are converted, as the Predict page and the API convert them, with a note
    converted = dict(result["converted"])
    assert set(converted) == {"gray", "rgba", "sixteen"} and "grayscale" in converted["gray"] and "alpha" in converted["rgba"]
    assert set(skipped) == {name.rsplit(".", 1)[0] for name in cases} - set(converted)
    assert len(pd.read_csv(out)) == 40 + 3
    listed = pd.read_csv(result["skipped_file"])
    assert set(listed["id"]) == set(skipped)
    notes = pd.read_csv(tmp_path / "r.csv", keep_default_na=False).set_index("id")["notes"]
    assert notes["gray"] == converted["gray"] and (notes.drop(list(converted)) == "").all()


@pytest.mark.slow  # the 5-member ensemble on 160 patches: 3-4 s
def test_evaluate_warns_when_it_scores_patches_the_model_trained_on(tmp_path):
    """The bundled ensemble trained on every patch of its cross-validation pool (each by 4 of its 5 members), the
    fixture's 160 among them: `pcam evaluate` on them says so, in its report (QA: it said nothing)."""
    report = evaluate_run("bundled", REPO / "tests" / "data" / "pcam-real-kaggle", "train", tmp_path / "m.json",
                          ScoringOptions(workers=0, tta=False, device="cpu"))
    assert report["warnings"] == ["160 of the 160 patches scored were training patches of 4 of the ensemble's 5 members "
                                  "(its cross-validation pool): these figures flatter it; its out-of-fold figures (cv.json, "
                                  "the model card) are the honest ones"]
    assert json.loads((tmp_path / "m.json").read_text())["warnings"] == report["warnings"]


@pytest.mark.slow
def test_a_run_scored_on_its_own_training_split_is_warned_about(trained_run, demo_root, tmp_path):
    options = ScoringOptions(workers=0, tta=False, device="cpu")
    own = evaluate_run(trained_run, demo_root, "train", tmp_path / "train.json", options)
    assert any("holds the patches this run trained on" in w for w in own["warnings"])
    held_out = evaluate_run(trained_run, demo_root, "test", tmp_path / "test.json", options)
    assert not any("trained on" in w for w in held_out["warnings"])


@pytest.mark.slow
def test_predict_says_when_no_patch_was_checked_for_scope(trained_run, tif_folder, tmp_path, capsys):
    """A run without an out-of-scope guard (too few validation patches to fit one) calls every patch, noise and glass
    included: `pcam predict --results` says that nothing was checked (QA: it said nothing); with the guard, it counts."""
    from pcam_core.cli import main
    from pcam_core.runs import RunDir

    unguarded = tmp_path / "run"
    shutil.copytree(trained_run, unguarded)
    RunDir(unguarded).scope_path.unlink()
    for run, guarded in ((trained_run, True), (unguarded, False)):
        assert main(["predict", "--run", str(run), "--input", str(tif_folder), "--out", str(tmp_path / "s.csv"), "--results",
                     str(tmp_path / "r.csv"), "--workers", "0", "--no-tta", "--device", "cpu"]) == 0
        printed = capsys.readouterr()
        assert ("out of the model's scope:" in printed.out) == guarded
        assert (f"run {run} has no out-of-scope guard, so no patch was checked" in printed.err) != guarded


@pytest.mark.slow
def test_evaluate_writes_metrics_and_predictions(trained_run, demo_root, tmp_path):
    out = tmp_path / "metrics.json"
    report = evaluate_run(trained_run, demo_root, "test", out, ScoringOptions(workers=0))
    saved = json.loads(out.read_text())
    m = saved["metrics"]
    assert m["n"] == 256 and m["roc_auc"] > 0.8 and saved["synthetic_data"] is True
    assert set(m["confusion"]) == {"tn", "fp", "fn", "tp"} and sum(m["confusion"].values()) == 256
    assert saved["curves"]["roc"]["fpr"][0] == 0 and saved["curves"]["pr"] and saved["curves"]["reliability"]
    preds = pd.read_csv(tmp_path / "metrics_predictions.csv")
    # TTA is on by default: the spread of the 8 views is each patch's uncertainty
    assert list(preds.columns) == ["id", "label", "probability", "index", "uncertainty"] and len(preds) == 256
    assert (preds["uncertainty"] >= 0).all() and preds["uncertainty"].max() > 0
    assert report["predictions_file"].endswith("metrics_predictions.csv")


@pytest.mark.slow
def test_threshold_chosen_on_validation(trained_run, demo_root, tmp_path):
    youden = evaluate_run(trained_run, demo_root, "test", tmp_path / "y.json", ScoringOptions(workers=0),
                          threshold_method="youden")
    sens = evaluate_run(trained_run, demo_root, "test", tmp_path / "s.json", ScoringOptions(workers=0),
                        threshold_method="sensitivity", target=0.99)
    valid = pd.read_csv(trained_run / "valid_predictions.csv")
    caught = (valid.loc[valid["label"] == 1, "probability"] >= sens["metrics"]["threshold"]).mean()
    assert caught >= 0.99  # the target sensitivity holds on the validation data it was chosen on
    assert youden["metrics"]["threshold"] != 0.5


def test_evaluate_refuses_unlabelled_data(trained_run, tif_folder, tmp_path):
    with pytest.raises(DataError, match="has no labels"):
        evaluate_run(trained_run, tif_folder, "test", tmp_path / "m.json", ScoringOptions(workers=0))


def test_missing_run_or_checkpoint(tmp_path, tif_folder):
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        predict_submission(tmp_path / "nope", tif_folder, tmp_path / "s.csv")
    (tmp_path / "empty-run").mkdir()  # any folder (QA: --run /tmp asked whether it had finished an epoch)
    with pytest.raises(FileNotFoundError, match="empty-run is not a run folder \\(it has no config.json\\)"):
        predict_submission(tmp_path / "empty-run", tif_folder, tmp_path / "s.csv")
    from pcam_core.config import ExperimentConfig
    from pcam_core.runs import create_run

    fresh = create_run(tmp_path, ExperimentConfig(), run_id="fresh")  # a run before its first epoch
    with pytest.raises(FileNotFoundError, match="no checkpoint yet"):
        predict_submission(fresh.path, tif_folder, tmp_path / "s.csv")
