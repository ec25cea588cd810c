"""pcam_core.uploads and predict.score_uploads: scoring uploaded files one by one, refusing or converting visibly."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import make_bad_images, tif_bytes
from pcam_core.data import PCamH5, patch_id
from pcam_core.loading import load_run_model
from pcam_core.predict import RESULTS_COLUMNS, ScoredPatch, UploadResult, predict_dataset, results_table, score_uploads


@pytest.fixture(scope="module")
def model(trained_run):
    return load_run_model(trained_run, device="cpu").model


def test_scores_match_the_batch_predictor(model, demo_root):
    ds = PCamH5(demo_root, "test")
    pixels = ds.read_pixels(np.arange(6))
    files = [(f"{patch_id(p)}.tif", tif_bytes(p)) for p in pixels]
    result = score_uploads(model, files, batch_size=4)
    assert not result.refused and len(result.scored) == 6
    expected = predict_dataset(model, ds.subset(np.arange(6)), num_workers=0).predictions.probs
    assert np.allclose([p.probability for p in result.scored], expected, atol=1e-5)
    assert all(p.id == p.pixel_id for p in result.scored)  # Kaggle ids are the pixels' SHA-1
    table = result.table(0.5)
    assert list(table.columns) == ["file", "id", "probability", "uncertainty", "call", "notes"]
    assert table["uncertainty"].isna().all()  # one pass: no spread to measure
    assert (table["call"] == np.where(table["probability"] >= 0.5, "tumour", "normal")).all()
    sub = pd.read_csv(io.BytesIO(result.submission()))
    assert list(sub.columns) == ["id", "label"] and sub["id"].tolist() == table["id"].tolist()
    tta = score_uploads(model, files[:2], tta=True)
    assert all(0 <= p.probability <= 1 and 0 <= p.uncertainty <= 0.5 for p in tta.scored)


def test_bad_files_are_refused_or_converted_with_a_reason(model, tmp_path):
    expected = make_bad_images(tmp_path)
    files = [(name, (tmp_path / name).read_bytes()) for name in sorted(expected)]
    result = score_uploads(model, files)
    refused = dict(result.refused)
    scored = {p.name: p for p in result.scored}
    assert set(refused) | set(scored) == set(expected)
    for name in ("truncated.tif", "corrupt.tif", "text.tif", "empty.tif", "small64.tif", "big512.tif", "bomb.png"):
        assert expected[name] in refused[name], (name, refused[name])
    for name in ("gray.tif", "rgba.png", "sixteen.png"):  # converted, and each says how
        assert scored[name].notes and 0 <= scored[name].probability <= 1
    assert "64x64" in refused["small64.tif"] and "PCam patch is 96x96" in refused["small64.tif"]


def test_duplicate_ids_are_refused(model):
    pixels = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    result = score_uploads(model, [("a.tif", tif_bytes(pixels)), ("a.png", png.getvalue())])
    assert [p.name for p in result.scored] == ["a.tif"]
    assert result.refused[0][0] == "a.png" and "same id 'a'" in result.refused[0][1]
    assert score_uploads(model, []).scored == []
    with pytest.raises(ValueError, match="threshold"):
        result.table(2.0)


def test_results_table_says_how_each_call_was_made():
    pixels = np.zeros((96, 96, 3), dtype=np.uint8)
    result = UploadResult(scored=[ScoredPatch("a.tif", "a", patch_id(pixels), pixels, 0.8),
                                  ScoredPatch("b.png", "b", patch_id(pixels), pixels, 0.3, ("converted from grayscale",))],
                          refused=[("c.tif", "not 96x96")])
    table = results_table(result, 0.3, model="pcamnet", run="demo-run")
    assert list(table.columns) == RESULTS_COLUMNS == ["file", "id", "probability", "uncertainty", "call", "threshold", "model", "run",
                                                 "notes"]
    # at or above the threshold; the refused file listed last with its reason, unscored
    assert table["file"].tolist() == ["a.tif", "b.png", "c.tif"] and table["call"].tolist() == ["tumour", "tumour", "refused"]
    assert table["threshold"].tolist()[:2] == [0.3, 0.3] and pd.isna(table["threshold"].iloc[2])
    assert set(table["model"]) == {"pcamnet"} and set(table["run"]) == {"demo-run"}
    assert table["notes"].tolist() == ["", "converted from grayscale", "not 96x96"]
    back = pd.read_csv(io.StringIO(table.to_csv(index=False)), keep_default_na=False)
    assert back["probability"].tolist() == ["0.8", "0.3", ""] and back["call"].tolist() == ["tumour", "tumour", "refused"]
    assert results_table(result, 0.9, model="pcamnet", run="demo-run")["call"].tolist() == ["normal", "normal", "refused"]
    only_refused = results_table(UploadResult(refused=[("c.tif", "not 96x96")]), 0.5, model="m", run="r")
    assert list(only_refused.columns) == RESULTS_COLUMNS and only_refused["call"].tolist() == ["refused"]
    assert results_table(UploadResult(), 0.5, model="m", run="r").empty
    with pytest.raises(ValueError, match="threshold"):
        results_table(result, -0.1, model="pcamnet", run="demo-run")
