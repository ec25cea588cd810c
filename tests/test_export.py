"""`pcam export`: the exported TorchScript and ONNX models against the PyTorch model on real patches, at batch
sizes 1 and 7, WSInfer's folder and config, and the errors a user can cause."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pcam_core.api import load_predictor
from pcam_core.cli import main
from helpers import REPO
from pcam_core.config import ExperimentConfig
from pcam_core.data.loader import open_dataset
from pcam_core.export import PARITY_TOLERANCE, export_run
from pcam_core.runs import create_run

# TorchScript is deprecated in torch >= 2.9 but is what WSInfer and QuPath load.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")

# The constraints of WSInfer's model config (wsinfer-zoo, schemas/model-config.schema.json, spec 1.0), written
# out here: the config it loads is refused unless it passes them.
WSINFER_SCHEMA = {
    "type": "object",
    "required": ["spec_version", "architecture", "num_classes", "patch_size_pixels", "spacing_um_px", "class_names", "transform"],
    "properties": {
        "spec_version": {"type": "string", "enum": ["1.0"]},
        "architecture": {"type": "string"},
        "num_classes": {"type": "integer", "minimum": 1},
        "patch_size_pixels": {"type": "integer", "minimum": 1},
        "spacing_um_px": {"type": "number", "minimum": 0},
        "class_names": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "transform": {"type": "array", "items": {
            "type": "object", "required": ["name"], "additionalProperties": False,
            "properties": {"name": {"type": "string", "enum": ["Resize", "ToTensor", "Normalize"]}, "arguments": {"type": "object"}}}},
    },
}


@pytest.fixture(scope="module")
def real_pixels(real_kaggle) -> np.ndarray:
    """The 160 real patches, uint8 (N, 96, 96, 3)."""
    dataset = open_dataset(real_kaggle)
    return dataset.read_pixels(range(len(dataset)))


@pytest.fixture(scope="module")
def expected(trained_run, real_pixels) -> np.ndarray:
    """What pcam_core predicts for them from Python (no TTA): the reference every export must match."""
    return load_predictor(trained_run, device="cpu").predict(real_pixels, tta=False)


@pytest.fixture(scope="module")
def torchscript_export(trained_run, real_kaggle, tmp_path_factory) -> tuple[Path, str]:
    """A TorchScript export made by the CLI, checked on the real patches; (model file, CLI output)."""
    out = tmp_path_factory.mktemp("export") / "pcam.pt"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["export", "--run", str(trained_run), "--format", "torchscript", "--out", str(out),
                     "--check-data", str(real_kaggle)])
    assert code == 0, buffer.getvalue()
    return out, buffer.getvalue()


@pytest.fixture(scope="module")
def onnx_export(trained_run, real_pixels, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("export") / "pcam.onnx"
    report = export_run(trained_run, "onnx", out, check=real_pixels, check_source="real patches")
    return out, report


def _inputs(pixels: np.ndarray) -> torch.Tensor:
    """What the exported model takes: float32 RGB in [0, 1], (N, 3, 96, 96)."""
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255.0).contiguous()


def _in_batches(run, pixels: np.ndarray, sizes=(1, 7)) -> tuple[np.ndarray, np.ndarray]:
    """The exported model's outputs on the first patch alone, the next 7 together, and the rest at once,
    with the indices they cover."""
    parts, start = [], 0
    for size in [*sizes, len(pixels)]:
        stop = min(start + size, len(pixels))
        if stop > start:
            out = np.asarray(run(_inputs(pixels[start:stop])))
            assert out.shape[0] == stop - start
            parts.append(out)
        start = stop
    return np.concatenate(parts), np.arange(start)


@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_torchscript_matches_pytorch_on_real_patches_at_batch_sizes_1_and_7(torchscript_export, real_pixels, expected) -> None:
    path, printed = torchscript_export
    loaded = torch.jit.load(str(path), map_location="cpu").eval()
    with torch.no_grad():
        got, covered = _in_batches(lambda x: loaded(x).numpy(), real_pixels)
    assert got.shape == (len(real_pixels),) and len(covered) == len(real_pixels)
    diff = np.abs(got - expected).max()
    assert diff < PARITY_TOLERANCE, f"TorchScript differs from PyTorch by {diff:.2e}"
    assert ((got >= 0) & (got <= 1)).all()
    # the figure is reported, by the CLI and in the sidecar, for the same patches
    report = json.loads(path.with_name(path.name + ".json").read_text())
    assert report["format"] == "torchscript" and report["parity"]["n"] == len(real_pixels)
    assert report["parity"]["max_abs_diff"] < PARITY_TOLERANCE and {1, 7} <= set(report["parity"]["batch_sizes"])
    assert f"max |diff| {report['parity']['max_abs_diff']:.2e}" in printed
    assert report["input"]["shape"] == ["N", 3, 96, 96] and report["normalisation"]["inside_model"] is True


@pytest.mark.slow  # the ONNX export takes ~15 s
def test_onnx_matches_pytorch_on_real_patches_at_batch_sizes_1_and_7(onnx_export, real_pixels, expected) -> None:
    import onnxruntime as ort

    path, report = onnx_export
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 96, 96], inp.shape  # a dynamic batch axis
    assert inp.type == "tensor(float)" and len(outp.shape) == 1
    got, _ = _in_batches(lambda x: session.run(None, {inp.name: x.numpy()})[0], real_pixels)
    diff = np.abs(got - expected).max()
    assert diff < PARITY_TOLERANCE, f"ONNX differs from PyTorch by {diff:.2e}"
    assert report["parity"]["max_abs_diff"] < PARITY_TOLERANCE and report["parity"]["runtime"].startswith("onnxruntime")
    assert json.loads(path.with_name(path.name + ".json").read_text())["parity"] == report["parity"]


@pytest.mark.slow  # the ONNX export takes ~15 s
def test_the_exported_model_normalises_by_itself(onnx_export, trained_run, real_pixels) -> None:
    """Fed raw [0, 1] pixels it agrees with the network fed normalised ones, and not with the network fed raw ones."""
    import onnxruntime as ort

    from pcam_core.checkpoint import model_from_checkpoint
    from pcam_core.runs import checkpoint_path

    path, _ = onnx_export
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _inputs(real_pixels[:16])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    model, _, _ = model_from_checkpoint(checkpoint_path(trained_run))
    with torch.no_grad():
        unnormalised = torch.sigmoid(model(x)).numpy()
    assert np.abs(got - unnormalised).max() > 10 * PARITY_TOLERANCE


@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_wsinfer_folder_holds_a_valid_config_and_a_two_class_model(torchscript_export, real_pixels, expected) -> None:
    path, printed = torchscript_export
    folder = path.with_name(f"{path.stem}-wsinfer")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "torchscript_model.pt"]  # one .pt: QuPath takes it
    config = json.loads((folder / "config.json").read_text())
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(config, WSINFER_SCHEMA)
    assert config["num_classes"] == len(config["class_names"]) == 2 and config["class_names"][1] == "tumour"
    assert config["patch_size_pixels"] == 96 and config["spacing_um_px"] == pytest.approx(0.972)
    # the normalisation is inside the model: WSInfer must not apply one again
    assert "Normalize" not in [t["name"] for t in config["transform"]] and config["transform"][-1]["name"] == "ToTensor"
    # WSInfer and QuPath apply a softmax over the classes: its tumour column is our probability
    loaded = torch.jit.load(str(folder / "torchscript_model.pt"), map_location="cpu").eval()
    with torch.no_grad():
        logits = loaded(_inputs(real_pixels[:7]))
    assert logits.shape == (7, 2)
    probs = torch.softmax(logits, dim=1).numpy()
    assert np.abs(probs[:, 1] - expected[:7]).max() < PARITY_TOLERANCE
    assert np.allclose(probs.sum(1), 1.0)
    assert str(folder) in printed


def test_unknown_format_is_refused(trained_run, tmp_path, capsys) -> None:
    with pytest.raises(ValueError, match="unknown export format 'tflite'; valid formats: torchscript, onnx"):
        export_run(trained_run, "tflite", tmp_path / "m.tflite")
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses it before any work, with its usage line
        main(["export", "--run", str(trained_run), "--format", "tflite", "--out", str(tmp_path / "m")])
    assert exit_info.value.code == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_run_without_a_checkpoint_is_refused(tmp_path, capsys) -> None:
    run = create_run(tmp_path / "runs", ExperimentConfig(), run_id="fresh")
    code = main(["export", "--run", str(run.path), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "has no checkpoint yet" in err and str(run.path) in err
    assert not (tmp_path / "m.onnx").exists()


def test_out_in_a_missing_folder_is_made_and_a_folder_as_out_is_refused(trained_run, tmp_path, capsys) -> None:
    """As `pcam predict` and `evaluate` write (QA: export refused a missing folder where predict made it)."""
    out = tmp_path / "missing" / "m.pt"
    assert main(["export", "--run", str(trained_run), "--format", "torchscript", "--out", str(out)]) == 0
    assert out.is_file() and out.with_name("m.pt.json").is_file()
    capsys.readouterr()
    code = main(["export", "--run", str(trained_run), "--format", "torchscript", "--out", str(tmp_path)])
    assert code == 2 and f"--out {tmp_path} is a folder; give a file name (e.g. {tmp_path / 'model.pt'})" in capsys.readouterr().err
    code = main(["predict", "--run", "bundled", "--input", str(REPO / "tests" / "data" / "pcam-real-kaggle"), "--split", "train",
                 "--out", str(tmp_path)])  # refused before anything is scored
    assert code == 2 and f"--out {tmp_path} is a folder; give a file name (e.g. {tmp_path / 'submission.csv'})" in capsys.readouterr().err


@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_the_bundled_model_exports_to_torchscript(tmp_path, real_pixels) -> None:
    """`--run bundled` names the model that ships in the package, for export as for every other command."""
    from pcam_core.export import export_run

    out = tmp_path / "bundled.pt"
    report = export_run("bundled", "torchscript", out, check=real_pixels)
    assert report["parity"]["max_abs_diff"] < 1e-4 and out.exists()
    scripted = torch.jit.load(str(out))
    with torch.no_grad():
        exported = scripted(torch.from_numpy(real_pixels[:5]).permute(0, 3, 1, 2).float() / 255).numpy()
    np.testing.assert_allclose(exported, load_predictor("bundled", device="cpu").predict(real_pixels[:5]), atol=1e-5)
