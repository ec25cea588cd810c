"""Exporting a run's model to TorchScript or ONNX, with its normalisation inside (`pcam export`, docs/export.md).

The exported model takes float32 RGB in [0, 1], shape ``(N, 3, 96, 96)`` with any N, and returns the
tumour probability ``(N,)``: what `Predictor.predict` computes, without pcam_core. Every export is
reloaded at once through the runtime that will run it (`torch.jit.load`, `onnxruntime`) and compared
with the PyTorch model on check patches, at batch sizes 1, 7 and larger; the largest absolute difference
of the probabilities goes into the report, written beside the file as ``<file>.json``.

A TorchScript export also writes a folder for WSInfer (and QuPath's WSInfer extension) beside it,
``<stem>-wsinfer/`` with ``torchscript_model.pt`` and ``config.json``. WSInfer and the extension apply
a softmax to whatever the model returns (one row per patch, one column per class), so that variant
returns the two logits ``[0, z]`` (z the tumour logit): their softmax is ``[1 - p, p]`` with
``p = sigmoid(z)``, the same tumour probability. Returning probabilities there would have them
squashed by a second softmax.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from .loading import load_run_model
from .data.common import PATCH_SHAPE
from .fileio import atomic_write_json, atomic_write_with, output_file
from .inference import predict_batch
from .transforms import eval_preset

log = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx")
CLASS_NAMES = ("normal", "tumour")  # the WSInfer variant's outputs, in this order
SPACING_UM_PX = 0.972  # PCam's patches: 96 px at 10x (level 2 of Camelyon16's 0.243 um/px scans)
PATCH_SIZE = PATCH_SHAPE[0]
WSINFER_MODEL_FILE = "torchscript_model.pt"  # the names WSInfer and its QuPath extension look for
WSINFER_CONFIG_FILE = "config.json"
PARITY_TOLERANCE = 1e-4  # largest acceptable |exported - PyTorch| of a probability
CHECK_BATCHES = (1, 7, 64)  # the batch sizes of the parity check: 1, 7, then 64 at a time
INPUT_NAME, OUTPUT_NAME = "image", "probability"


class ProbabilityModel(nn.Module):
    """float32 RGB in [0, 1] ``(N, 3, 96, 96)`` -> tumour probability ``(N,)``: the run's normalisation,
    the network, a sigmoid."""

    def __init__(self, model: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("scale", scale.reshape(1, -1, 1, 1).clone())
        self.register_buffer("shift", shift.reshape(1, -1, 1, 1).clone())

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.scale + self.shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit(x))


class WSInferModel(ProbabilityModel):
    """The same input, returning the class logits ``(N, 2)`` = ``[0, z]`` (normal, tumour) for consumers
    that apply a softmax themselves (WSInfer, QuPath's WSInfer extension)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.logit(x)
        return torch.stack([torch.zeros_like(z), z], dim=1)


def normalisation_affine(module: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per channel such that ``module(x) == x * scale + shift`` for float x in [0, 1]:
    read off the run's eval normalisation (`transforms.eval_preset`) by probing it, and checked to be
    such a map, so that whatever it does is what the exported model does."""
    module = eval_preset() if module is None else module
    with torch.no_grad():
        shift = module(torch.zeros(1, 3, 1, 1)).reshape(3)
        scale = module(torch.ones(1, 3, 1, 1)).reshape(3) - shift
        probe = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        expected = probe * scale.view(1, 3, 1, 1) + shift.view(1, 3, 1, 1)
        if not torch.allclose(module(probe), expected, atol=1e-6):
            raise ValueError("the eval normalisation (transforms.eval_preset) is not a per-channel affine map; "
                             "export cannot fold it into the model")
    return scale, shift


def export_paths(out: str | Path, fmt: str) -> dict[str, Path]:
    """Where an export to `out` writes: the model, the report (``<file>.json``), and for TorchScript the
    WSInfer folder (``<stem>-wsinfer/``) with its model and config."""
    out = Path(out)
    paths = {"model": out, "report": out.with_name(out.name + ".json")}
    if fmt == "torchscript":
        folder = out.with_name(f"{out.stem}-wsinfer")
        paths.update(wsinfer=folder, wsinfer_model=folder / WSINFER_MODEL_FILE, wsinfer_config=folder / WSINFER_CONFIG_FILE)
    return paths


def wsinfer_config(architecture: str) -> dict[str, Any]:
    """WSInfer's model config (spec 1.0 of wsinfer-zoo's model-config schema) for the WSInfer variant.

    The normalisation is inside the model, so the transform list only turns the patch into a float
    tensor in [0, 1] (``ToTensor``), after a ``Resize`` to 96 px that changes nothing on a patch read
    at the right size and fixes one read a pixel off (the extension rounds the region size)."""
    return {
        "spec_version": "1.0",
        "architecture": architecture,
        "num_classes": len(CLASS_NAMES),
        "class_names": list(CLASS_NAMES),
        "patch_size_pixels": PATCH_SIZE,
        "spacing_um_px": SPACING_UM_PX,
        "transform": [{"name": "Resize", "arguments": {"size": PATCH_SIZE}}, {"name": "ToTensor"}],
    }


def check_patches(n: int = sum(CHECK_BATCHES), seed: int = 0) -> np.ndarray:
    """Check patches when none are given: `n` uint8 RGB patches of seeded random pixels (every value
    of the input range is used; a parity check needs no tissue, only inputs)."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, *PATCH_SHAPE), dtype=np.uint8)


def export_run(
    run: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike,
    *,
    which: str = "best",
    check: np.ndarray | None = None,
    check_source: str | None = None,
) -> dict[str, Any]:
    """Export the model of `run` (its `which` checkpoint: "best" falls back to the last) to `out` as
    `fmt` ("torchscript" or "onnx"), check it against PyTorch on `check` (uint8 RGB patches
    ``(N, 96, 96, 3)``; `check_patches()` when None) and write the report beside it. Returns the report.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    out = output_file(out, "--out", "model.onnx" if fmt == "onnx" else "model.pt")
    pixels = check_patches() if check is None else _checked_pixels(check)
    source = check_source or ("random pixels" if check is None else "given patches")
    loaded = load_run_model(run, checkpoint=which, device="cpu")  # the one loader of a run's model
    model, config, info, ckpt = loaded.model, loaded.config, loaded.info, loaded.checkpoint
    scale, shift = normalisation_affine()
    wrapped = ProbabilityModel(model, scale, shift).eval()
    paths = export_paths(out, fmt)
    reference = _reference_probabilities(model, pixels)
    inputs = _as_input(pixels)

    if fmt == "torchscript":
        _save_torchscript(wrapped, paths["model"])
        exported = _torchscript_runner(paths["model"])
    else:
        _save_onnx(wrapped, paths["model"])
        exported = _onnx_runner(paths["model"])
    parity = _parity(exported, inputs, reference)
    report: dict[str, Any] = {
        "format": fmt,
        "file": str(paths["model"]),
        "run": str(run),
        "checkpoint": str(ckpt),
        "epoch": info.get("epoch"),
        "model": config.model.name,
        "ensemble": {"members": info["members"], "combine": info["combine"]} if loaded.is_ensemble else None,
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": ["N", 3, PATCH_SIZE, PATCH_SIZE],
                  "range": [0.0, 1.0], "channels": "RGB"},
        "output": {"name": OUTPUT_NAME, "shape": ["N"], "meaning": "tumour probability (sigmoid of the logit)"},
        "normalisation": {"inside_model": True, "scale": scale.tolist(), "shift": shift.tolist(),
                          "mean": (-shift / scale).tolist(), "std": (1.0 / scale).tolist()},
        "parity": {**parity, "source": source, "runtime": _runtime_name(fmt),
                   "reference": "pcam_core PyTorch model with eval_preset normalisation, float32, CPU"},
        "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    if fmt == "torchscript":
        two_class = WSInferModel(model, scale, shift).eval()
        _save_torchscript(two_class, paths["wsinfer_model"])
        logits = _torchscript_runner(paths["wsinfer_model"])
        wsinfer_parity = _parity(lambda x: torch.softmax(torch.from_numpy(logits(x)), dim=1)[:, 1].numpy(), inputs, reference)
        config_json = wsinfer_config(config.model.name)
        atomic_write_json(paths["wsinfer_config"], config_json)
        report["wsinfer"] = {"folder": str(paths["wsinfer"]), "model": str(paths["wsinfer_model"]),
                             "config": str(paths["wsinfer_config"]),
                             "output": "class logits (N, 2) [0, z]; softmax gives [p_normal, p_tumour]",
                             "parity": {**wsinfer_parity, "compared": "softmax(output)[:, 1] vs PyTorch probability"}}
    atomic_write_json(paths["report"], report)
    worst = max(parity["max_abs_diff"], report.get("wsinfer", {}).get("parity", {}).get("max_abs_diff", 0.0))
    if worst > PARITY_TOLERANCE:
        raise RuntimeError(f"exported model {out} differs from PyTorch by {worst:.2e} (tolerance {PARITY_TOLERANCE:.0e}); "
                           f"see {paths['report']}")
    log.info("exported %s to %s: max |diff| %.2e on %d patches", run, out, parity["max_abs_diff"], parity["n"])
    return report


def _checked_pixels(check: np.ndarray) -> np.ndarray:
    check = np.asarray(check)
    if check.dtype != np.uint8 or check.ndim != 4 or check.shape[1:] != PATCH_SHAPE or not len(check):
        raise ValueError(f"check patches must be uint8 RGB of shape (N, 96, 96, 3) with N >= 1, "
                         f"got {check.dtype} {check.shape}")
    return np.ascontiguousarray(check)


def _as_input(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (N, 96, 96, 3) -> the exported model's input: float32 (N, 3, 96, 96) in [0, 1]."""
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255.0).contiguous()


def _reference_probabilities(model: nn.Module, pixels: np.ndarray) -> np.ndarray:
    """What pcam_core itself predicts for the patches (`Predictor.predict` without TTA)."""
    normalize = eval_preset()
    batch = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    return predict_batch(model, batch, tta=False, normalize=normalize).double().numpy()


def _batches(n: int) -> Iterator[slice]:
    """1, 7, then 64 at a time: the check runs every dynamic batch size the task names."""
    start, sizes = 0, list(CHECK_BATCHES)
    while start < n:
        size = sizes.pop(0) if len(sizes) > 1 else sizes[0]
        yield slice(start, min(start + size, n))
        start += size


def _parity(run_exported, inputs: torch.Tensor, reference: np.ndarray) -> dict[str, Any]:
    got = np.empty(len(inputs), dtype=np.float64)
    sizes = []
    for part in _batches(len(inputs)):
        out = np.asarray(run_exported(inputs[part]), dtype=np.float64)
        if out.shape != (part.stop - part.start,):
            raise RuntimeError(f"exported model returned shape {out.shape} for a batch of {part.stop - part.start}")
        got[part] = out
        sizes.append(part.stop - part.start)
    diff = np.abs(got - reference)
    return {"n": int(len(inputs)), "batch_sizes": sorted(set(sizes)), "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()), "tolerance": PARITY_TOLERANCE}


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    # torch >= 2.9 marks torch.jit as deprecated; TorchScript is still what WSInfer and QuPath load.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning)
        yield


def _save_torchscript(module: nn.Module, path: Path) -> None:
    example = torch.zeros(2, 3, PATCH_SIZE, PATCH_SIZE)
    with _quiet_jit(), torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(path, lambda handle: handle.write(data))


def _torchscript_runner(path: Path):
    with _quiet_jit():
        loaded = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return loaded(x).numpy()

    return run


def _require_onnx() -> None:
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(f"--format onnx needs {', '.join(missing)}: pip install {' '.join(missing)} "
                                  f"(pinned in requirements.txt)")


def _save_onnx(module: nn.Module, path: Path) -> None:
    from torch.export import Dim

    _require_onnx()

    example = torch.zeros(2, 3, PATCH_SIZE, PATCH_SIZE)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
        program = torch.onnx.export(module, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes={"x": {0: Dim("batch", min=1)}}, verbose=False)
    data = program.model_proto.SerializeToString()
    atomic_write_with(path, lambda handle: handle.write(data))


def _onnx_runner(path: Path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]

    return run


def _runtime_name(fmt: str) -> str:
    if fmt == "onnx":
        import onnxruntime as ort

        return f"onnxruntime {ort.__version__} (CPUExecutionProvider)"
    return f"torch.jit.load (torch {torch.__version__})"


__all__ = ["CLASS_NAMES", "FORMATS", "PARITY_TOLERANCE", "SPACING_UM_PX", "ProbabilityModel", "WSInferModel",
           "check_patches", "export_paths", "export_run", "normalisation_affine", "wsinfer_config"]
