"""pcam_core.inference and the Python face `pcam_core.load_predictor`: scoring images from Python."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import pcam_core
from pcam_core.cli import main
from pcam_core.data import PCamH5
from pcam_core.inference import predict_batch
from pcam_core.loading import load_run_model

DOCS = Path(__file__).resolve().parents[1] / "docs" / "python.md"


@pytest.fixture(scope="module")
def test_pixels(demo_root) -> np.ndarray:
    """The first 24 patches of the demo test split, (24, 96, 96, 3) uint8."""
    return PCamH5(demo_root, "test").read_pixels(np.arange(24))


@pytest.fixture(scope="module")
def predictor(trained_run):
    return pcam_core.load_predictor(trained_run, device="cpu")


@pytest.mark.slow  # a Python process of its own
def test_importing_pcam_core_stays_cheap():
    code = "import sys, pcam_core; print('torch' in sys.modules, 'pcam_core.api' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
    assert callable(pcam_core.load_predictor) and pcam_core.Predictor.__name__ == "Predictor"
    with pytest.raises(AttributeError, match="no_such_name"):
        pcam_core.no_such_name


@pytest.mark.slow  # a process of its own that imports torch
def test_a_process_that_only_scores_imports_no_fitting_code():
    """`pcam predict`, a slide analysis and the server load a model with its calibration and guard and score: the code
    that fits them (scikit-learn's covariance, scipy's optimisers) and the intervals' statistics are imported when a
    fit or a figure needs them, not by every scoring process (1.1 s of its start here)."""
    code = ("import sys, pcam_core.predict, pcam_core.slides.analysis, pcam_core.serve.app; "
            "print(sorted(m for m in ('sklearn', 'scipy.optimize', 'scipy.stats') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_predictor_carries_the_run(predictor, trained_run):
    loaded = load_run_model(trained_run, device="cpu")
    config, info = loaded.config, loaded.info
    assert predictor.model_name == config.model.name == "pcamnet"
    assert predictor.threshold == 0.5 and predictor.epoch == info["epoch"]
    assert predictor.checkpoint.name == "best.pt" and predictor.device == torch.device("cpu")


@pytest.mark.parametrize("tta", [False, pytest.param(True, marks=pytest.mark.slow)])  # 8 views: a few seconds
def test_probabilities_equal_predict_batch(predictor, trained_run, test_pixels, tta):
    model = load_run_model(trained_run, device="cpu").model
    expected = predict_batch(model, torch.from_numpy(test_pixels).permute(0, 3, 1, 2), tta=tta).double().numpy()
    got = predictor.predict(test_pixels, tta=tta, batch_size=10)
    assert got.dtype == np.float64 and got.shape == (24,)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # not the 0.0 a raw call of the model on unnormalised pixels gives
    assert got.std() > 0 and ((got > 0) & (got < 1)).all()


@pytest.mark.slow
def test_probabilities_equal_pcam_evaluate(predictor, trained_run, demo_root, tmp_path):
    out = tmp_path / "m.json"
    assert main(["evaluate", "--run", str(trained_run), "--data", str(demo_root), "--split", "test", "--out", str(out),
                 "--device", "cpu", "--workers", "0"]) == 0
    frame = pd.read_csv(tmp_path / "m_predictions.csv").sort_values("index")
    pixels = PCamH5(demo_root, "test").read_pixels(frame["index"].to_numpy())
    np.testing.assert_allclose(predictor.predict(pixels, tta=True), frame["probability"].to_numpy(), rtol=0, atol=1e-6)


def test_arrays_pil_images_and_paths_agree(predictor, test_pixels, tmp_path):
    pixels = test_pixels[:6]
    paths = []
    for i, patch in enumerate(pixels):
        paths.append(tmp_path / f"p{i}.png")
        Image.fromarray(patch).save(paths[-1])
    from_array = predictor.predict(pixels)
    assert np.array_equal(predictor.predict(list(pixels)), from_array)
    assert np.array_equal(predictor.predict([Image.open(p) for p in paths]), from_array)
    assert np.array_equal(predictor.predict(paths), from_array)
    assert np.array_equal(predictor.predict([str(p) for p in paths]), from_array)
    mixed = [pixels[0], Image.open(paths[1]), str(paths[2]), paths[3], paths[4].read_bytes(), pixels[5]]
    assert np.array_equal(predictor.predict(mixed), from_array)
    # one patch is a batch of one: the same up to float rounding in a batch of another size
    single = predictor.predict(pixels[2])
    assert single.shape == (1,) and single[0] == pytest.approx(from_array[2], abs=1e-6)
    assert predictor.predict(paths[2]) == predictor.predict(Image.open(paths[2])) == single


def test_other_modes_are_converted_as_everywhere_else(predictor, test_pixels, tmp_path):
    rgba = np.dstack([test_pixels[0], np.full((96, 96), 255, np.uint8)])
    gray = test_pixels[1].mean(axis=2).astype(np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    got = predictor.predict([rgba, Image.fromarray(rgba, "RGBA"), tmp_path / "gray.png", gray])
    assert got[0] == got[1] and got[2] == got[3]
    expected = predictor.predict(np.stack([test_pixels[0], test_pixels[0], *[np.repeat(gray[..., None], 3, axis=2)] * 2]))
    assert np.array_equal(got, expected)  # opaque alpha: the same pixels; gray: three equal channels


@pytest.mark.parametrize(
    "images,message",
    [
        (np.zeros((2, 64, 64, 3), np.uint8), r"images\[0\]: image is 64x64 pixels; a PCam patch is 96x96"),
        (np.zeros((64, 96, 3), np.uint8), r"images\[0\]: image is 96x64 pixels; a PCam patch is 96x96"),
        (np.zeros((2, 3, 96, 96), np.uint8), r"images\[0\]: an array of shape \(3, 96, 96\) is not an image"),
        (np.zeros((2, 96, 96, 3), np.float32), r"images: pixels must be uint8"),
        ([np.zeros((96, 96, 3), np.uint8), Image.new("RGB", (100, 96))], r"images\[1\]: image is 100x96 pixels"),
        ([], r"images: nothing to score"),
    ],
)
def test_a_bad_shape_or_type_is_refused_by_name(predictor, images, message):
    with pytest.raises(ValueError, match=message):
        predictor.predict(images)


def test_bad_files_and_arguments_are_named(predictor, tmp_path):
    Image.new("RGB", (128, 128)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'big.png'}: image is 128x128 pixels")):
        predictor.predict([tmp_path / "big.png"])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        predictor.predict(tmp_path / "missing.png")
    with pytest.raises(TypeError, match=r"images\[0\]: cannot score a dict"):
        predictor.predict([{}])
    with pytest.raises(ValueError, match="batch_size"):
        predictor.predict(np.zeros((1, 96, 96, 3), np.uint8), batch_size=0)


def test_load_predictor_names_what_is_wrong(tmp_path, trained_run):
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        pcam_core.load_predictor(tmp_path / "nope")
    with pytest.raises(ValueError, match="checkpoint must be 'best' or 'last'"):
        pcam_core.load_predictor(trained_run, checkpoint="newest")
    with pytest.raises(ValueError, match="unknown device"):
        pcam_core.load_predictor(trained_run, device="tpu")


def test_the_documented_example_runs(trained_run, test_pixels, tmp_path, capsys):
    """The ```python block of docs/python.md, run as written but on this run and these images."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert len(blocks) == 1, "docs/python.md should hold one runnable ```python block"
    paths = []
    for i, patch in enumerate(test_pixels[:3]):
        paths.append(str(tmp_path / f"patch{i}.tif"))
        Image.fromarray(patch).save(paths[-1])
    code, n_run = re.subn(r"^RUN = .*$", f"RUN = {str(trained_run)!r}", blocks[0], flags=re.M)
    code, n_images = re.subn(r"^IMAGES = .*$", f"IMAGES = {paths!r}", code, flags=re.M)
    assert n_run == n_images == 1, "the example sets RUN = ... and IMAGES = ... on lines of their own"
    namespace: dict = {}
    exec(compile(code, str(DOCS), "exec"), namespace)
    printed = capsys.readouterr().out
    assert all(Path(p).name in printed for p in paths)
    probs = namespace["probs"]
    expected = pcam_core.load_predictor(trained_run, device="cpu").predict(test_pixels[:3])
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)


def test_the_readme_example_runs(trained_run, real_kaggle, tmp_path, monkeypatch):
    """The README's ```python block, run as written in a folder holding patch1.tif and patch2.tif (two real
    patches), with its run folder pointed at a trained run."""
    readme = DOCS.parents[1] / "README.md"
    [block] = [b for b in re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.S) if "load_predictor" in b]
    code, n = re.subn(r'load_predictor\("workspace/runs/my-run"\)', f"load_predictor({str(trained_run)!r})", block)
    assert n == 1, "the README's example loads a run folder named workspace/runs/my-run"
    sources = sorted((real_kaggle / "train").glob("*.tif"))[:2]
    for name, source in zip(("patch1.tif", "patch2.tif"), sources):
        (tmp_path / name).write_bytes(source.read_bytes())
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(readme), "exec"), namespace)
    expected = pcam_core.load_predictor("bundled", device="cpu").predict(sources, tta=True)
    np.testing.assert_allclose(namespace["probabilities"], expected, rtol=0, atol=1e-6)
