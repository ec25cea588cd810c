"""Class activation maps (Grad-CAM and relatives) for PCam patches, overlays, and centre focus.

The maps come from the `grad-cam` package (`pytorch_grad_cam`), used as its README shows: one
``with Method(model=..., target_layers=[...]) as cam:`` per call, so its hooks are removed from the
model as soon as the call returns. The target is always explicit: ``BinaryClassifierOutputTarget(1)``
explains "tumour" (the logit), ``(0)`` explains "normal" (minus the logit). Our models return (B,)
logits, so the package hands each target a 0-d logit, which is what that target expects; its default
(no targets: the argmax of the output) would fail on a 1-D output, and means nothing for one logit.

Centre focus is the share of a map's mass inside the central 32x32 region, where the PCam label is
defined: 1/9 for a uniform map, 1 when everything is in the centre, 0 when nothing is. A map that
is zero everywhere (the method found no evidence for the target) has no focus: NaN.
What it is not: a measure of correctness (a model can look at the centre and be wrong, or be right
for reasons outside it), nor comparable across methods or layers. Every map is min-max scaled to
[0, 1] per patch (`scaled_maps` puts a batch on one scale instead, from each map's raw range), and a coarse layer is upsampled bilinearly to 96x96: a ResNet's last stage is
3x3 at this patch size, each cell covering 32x32 pixels, so its maps cannot localise finer than
that and its centre focus mostly reflects the middle cell. Prefer a layer of 12x12 or more for
spatial questions; `layer_choices` lists each layer's resolution.

A network without padding (`pcamscan`) has layers whose cells do not tile the whole patch: its 17 x 17 `stage3`
covers the central 68 px. Stretching such a map to 96 x 96 would move every cell outwards, by up to 14 px at the
border, so its map is placed where its cells are (`cell_grid`): interpolated between the cells' centres, zero
where no cell of the layer sits.
"""

from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import matplotlib
import numpy as np
import pandas as pd
import torch
from matplotlib.colors import Colormap, to_hex, to_rgb
from PIL import Image
from torch import nn

from .data import (CENTER_SIZE, CENTER_START, PATCH_SIZE, ImageFiles, PatchDataset, detect_format, make_loader,
                   open_dataset, open_split)
from .data.common import IMAGE_EXTENSIONS
from .fileio import atomic_write_with
from .models import EnsembleModel, PCamNet, get_layer, get_spec
from .runs import RunArg
from .scoring_options import EXPLAIN_BATCH_SIZE, ScoringOptions
from .transforms import eval_preset

if TYPE_CHECKING:
    from pytorch_grad_cam.base_cam import BaseCAM

log = logging.getLogger(__name__)

# The method's class in `pytorch_grad_cam`, imported when a map is made (`get_method`): the package pulls in
# scikit-learn's decomposition and OpenCV, about 2 s on a 2-core CPU, which processes that import this module only for
# its names and colours need not pay (the dashboard's server still imports the package at start: streamlit_app.py).
METHODS: dict[str, str] = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",  # ignores the target: the activations' first principal component, sign arbitrary
    "scorecam": "ScoreCAM",  # one forward pass per channel of the layer: slow on large models
}
DEFAULT_METHOD = "gradcam"
METHOD_NOTES = {
    "gradcam": "Grad-CAM: the layer's feature maps weighted by the mean gradient of the score; the usual choice.",
    "gradcam++": "Grad-CAM++: gradients weighted position by position; can show several separate regions.",
    "hirescam": "HiResCAM: feature maps times gradients at each position; faithful to what this layer computes.",
    "xgradcam": "XGrad-CAM: gradients weighted by the feature maps, normalised.",
    "layercam": "LayerCAM: positive gradients at each position; sharper on the finer layers.",
    "eigencam": "EigenCAM: class-agnostic, the main pattern of the layer's activations (their first principal "
                "component, sign arbitrary), not evidence for tumour or normal: the target does not change it.",
    "scorecam": "Score-CAM: scores the patch masked by each feature map; no gradients, one pass per channel: slow.",
}
CLASS_AGNOSTIC = frozenset({"eigencam"})  # methods whose map does not depend on the target
TARGETS = {"tumour": 1, "normal": 0}
# How a batch's maps are brought to [0, 1] for display (`scaled_maps`).
SCALES = {"patch": "per patch", "fixed": "fixed 0..max across patches"}
SCALE_NOTES = {
    "patch": "Each map is scaled to its own strongest point: a patch with almost no evidence (a nearly blank "
             "patch) still shows full red, and red in one patch is not more than red in another. The fixed scale "
             "compares patches.",
    "fixed": "One scale for all the patches shown, from 0 to the strongest point among them: red means the same "
             "amount in every patch, and a patch with little evidence stays blue.",
}
DEFAULT_COLORMAP = "jet"
UNIFORM_FOCUS = (CENTER_SIZE / PATCH_SIZE) ** 2  # 1/9: the centre focus of a map spread evenly
SCORECAM_BATCH = 64  # masked copies ScoreCAM scores per forward pass (the package's default is 16)

# The hooks live on the model for the length of a call; two calls at once on one model (two dashboard
# sessions sharing a cached model) would record each other's activations.
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Explanation:
    """Maps for a batch: ``maps`` (B, 96, 96) float32 in [0, 1], the model's tumour ``probabilities``
    (B,) for the same forward pass, and what produced them."""

    maps: np.ndarray
    probabilities: np.ndarray
    method: str
    layer: str
    target: str
    resolution: int
    # Each map's lowest and highest value before the per-patch scaling (in the layer's own units, after
    # the ReLU the package applies): what `scaled_maps` needs to put several maps on one scale.
    floors: np.ndarray | None = None
    peaks: np.ndarray | None = None

    @property
    def centre_focus(self) -> np.ndarray:
        return centre_focus(self.maps)


def layer_choices(model_name: str) -> dict[str, str]:
    """A registered model's Grad-CAM layers, default first, each with a label such as "stage4: 12x12"."""
    return {path: f"{path}: {size}x{size}" for path, size in get_spec(model_name).target_layers.items()}


def layer_note(model_name: str, layer: str | None = None) -> str:
    """What a map at `layer` of `model_name` can and cannot show, in pixels of the 96x96 patch."""
    layer, size = resolve_layer(model_name, layer)
    cell = PATCH_SIZE // size
    cells = CENTER_SIZE / cell
    text = (f"Each cell of this {size}×{size} map covers {cell}×{cell} pixels: the central 32×32 box is "
            f"{cells:g}×{cells:g} cells of {model_name}'s {layer}.")
    if cell >= CENTER_SIZE:
        # the layers whose cells divide the centre box at least 4 ways across (12x12 or finer maps)
        finer = [f"{path} ({s}×{s})" for path, s in get_spec(model_name).target_layers.items()
                 if CENTER_SIZE / (PATCH_SIZE // s) >= 4]
        return (text + " A cell is as large as the centre box, so the map cannot tell the centre from its "
                "surroundings" + (f"; for where-questions prefer {', '.join(finer)}." if finer else "."))
    if cells < 4:
        return text + " Coarse: it tells the centre from its surroundings, not finer detail."
    return text + " Fine enough to show where inside the centre box the evidence lies."


def map_meaning(method: str, target: str) -> str:
    """What a map of `method` shows: evidence for `target`, or, for a class-agnostic method, the main
    pattern of the layer's activations, whatever the target."""
    get_method(method)
    if method in CLASS_AGNOSTIC:
        return "main activation pattern (class-agnostic, not evidence for a class)"
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")
    return f"evidence for {target}"


def scaled_maps(explanation: Explanation, scale: str = "patch", *, peak: float | None = None) -> np.ndarray:
    """The maps of `explanation` in [0, 1] for display: "patch" as computed (each from its own lowest to
    its own highest point); "fixed" on one scale for the batch, 0 to the highest point of all its maps
    (or `peak`, the highest point of other maps of the same model, layer, method and target to compare
    with, when larger), so that a map with little evidence stays low."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; valid scales: {', '.join(SCALES)}")
    if scale == "patch":
        return explanation.maps
    if explanation.peaks is None or explanation.floors is None:
        raise ValueError("this explanation has no raw map range (peaks); compute it with explain_batch")
    span = (explanation.peaks - explanation.floors).astype(np.float32)[:, None, None]
    raw = explanation.maps * span + explanation.floors.astype(np.float32)[:, None, None]
    top = max(float(explanation.peaks.max(initial=0.0)), float(peak or 0.0))
    if top <= 0:
        return np.zeros_like(explanation.maps)
    return np.clip(raw / top, 0.0, 1.0).astype(np.float32)


def resolve_layer(model_name: str, layer: str | None = None) -> tuple[str, int]:
    """(layer path, feature-map size at 96x96); None means the model's default layer."""
    layers = get_spec(model_name).target_layers
    if layer is None:
        layer = next(iter(layers))
    if layer not in layers:
        valid = ", ".join(layer_choices(model_name).values())
        raise ValueError(f"unknown Grad-CAM layer {layer!r} for model {model_name!r}; valid layers: {valid}")
    return layer, layers[layer]


def get_method(name: str) -> type[BaseCAM]:
    """The `pytorch_grad_cam` class of a method named in `METHODS`."""
    if name not in METHODS:
        raise ValueError(f"unknown CAM method {name!r}; valid methods: {', '.join(METHODS)}")
    import pytorch_grad_cam

    return getattr(pytorch_grad_cam, METHODS[name])


def as_batch(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 patches as a (B, 3, 96, 96) tensor, from (B, 3, 96, 96) or (B, 96, 96, 3), tensor or array;
    a single patch (3-D) becomes a batch of one."""
    x = torch.as_tensor(images)
    given = tuple(x.shape)
    if x.dtype != torch.uint8:
        raise ValueError(f"patches must be uint8 pixels in [0, 255], got dtype {x.dtype}")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim == 4 and x.shape[1:] == (PATCH_SIZE, PATCH_SIZE, 3):
        x = x.permute(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1:] != (3, PATCH_SIZE, PATCH_SIZE):
        raise ValueError(f"patches must have shape (B, 3, 96, 96) or (B, 96, 96, 3), got {given}")
    return x.contiguous()


def cell_grid(model: nn.Module, layer: str) -> tuple[float, float] | None:
    """Where the cells of `layer` of a network without padding (`pcamscan`) sit on the patch: (the centre of cell 0 in
    pixels, the cells' pitch: `PCamNet.stage_grid`); None where the layer's cells tile the patch (the package's resize
    places them right)."""
    if not (type(model) is PCamNet and model.padding == 0 and layer.startswith("stage")):
        return None
    _, centre, pitch = model.stage_grid(PATCH_SIZE)[int(layer.removeprefix("stage")) - 1]
    return centre, pitch


def place_cells(raw: np.ndarray, grid: tuple[float, float]) -> np.ndarray:
    """Maps (B, k, k) of a layer's cells as (B, 96, 96) pixels (`cell_grid`): bilinear between the cells' centres, the
    edge cells' values to their outer edges, zero beyond."""
    from scipy.ndimage import map_coordinates

    centre, pitch = grid
    k = raw.shape[-1]
    at = (np.arange(PATCH_SIZE) - centre) / pitch  # each pixel's position in cells
    inside = (at >= -0.5) & (at <= k - 0.5)
    rows, cols = np.meshgrid(np.clip(at, 0, k - 1), np.clip(at, 0, k - 1), indexing="ij")
    out = np.zeros((len(raw), PATCH_SIZE, PATCH_SIZE), dtype=np.float32)
    for b, cam in enumerate(raw):
        out[b] = map_coordinates(np.asarray(cam, dtype=np.float64), [rows, cols], order=1) * np.outer(inside, inside)
    return out


def explain_batch(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    *,
    model_name: str,
    method: str = DEFAULT_METHOD,
    layer: str | None = None,
    target: str = "tumour",
) -> Explanation:
    """Class activation maps of `images` for `target` ("tumour" or "normal") at `layer` of `model`
    (a registered `model_name`, in eval mode), with its tumour probabilities.

    The model's parameter gradients are cleared afterwards and no hook stays on it. ScoreCAM runs
    one patch at a time: it holds a masked copy of the patch per channel of the layer. On an ensemble
    (`models.EnsembleModel`) the maps are the mean of its members' maps, and the probabilities the ensemble's."""
    if isinstance(model, EnsembleModel):
        return _ensemble_explanation(model, images, model_name=model_name, method=method, layer=layer, target=target)
    cam_class = get_method(method)
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    layer, size = resolve_layer(model_name, layer)
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")
    device = next(model.parameters()).device
    x = eval_preset().to(device)(as_batch(images).to(device))
    chunks = list(x.split(1)) if method == "scorecam" else [x]
    maps, logits, ranges = [], [], []
    with _LOCK, torch.enable_grad():
        try:
            with cam_class(model=model, target_layers=[get_layer(model, layer)]) as cam:
                cam.batch_size = SCORECAM_BATCH
                cam_image = cam.get_cam_image

                grid = cell_grid(model, layer)

                def recorded(*args: Any, **kwargs: Any) -> np.ndarray:
                    # the raw map before the package scales each to [0, 1]: its range, for `scaled_maps`
                    raw = cam_image(*args, **kwargs)
                    flat = np.maximum(raw, 0).reshape(len(raw), -1)
                    ranges.append((flat.min(axis=1), flat.max(axis=1)))
                    return raw if grid is None else place_cells(raw, grid)  # 96 x 96: the package's resize keeps it

                cam.get_cam_image = recorded
                for chunk in chunks:
                    # One target per patch; each is applied to that patch's 0-d logit.
                    targets = [BinaryClassifierOutputTarget(TARGETS[target])] * len(chunk)
                    maps.append(cam(input_tensor=chunk, targets=targets))
                    logits.append(cam.outputs.detach().float().cpu())
                    cam.outputs = None  # drop the autograd graph the package retains
        finally:
            model.zero_grad(set_to_none=True)
    if len(maps) != len(chunks):  # the package's __exit__ swallows IndexError; do not return half a batch
        raise RuntimeError(f"{method} failed on layer {layer!r} of {model_name!r} (see the message printed above)")
    out = np.concatenate(maps).astype(np.float32, copy=False)
    probs = torch.sigmoid(torch.cat(logits)).double().numpy()
    floors = np.concatenate([lo for lo, _ in ranges]).astype(np.float64)
    peaks = np.concatenate([hi for _, hi in ranges]).astype(np.float64)
    return Explanation(np.clip(out, 0.0, 1.0), probs, method, layer, target, size, floors, peaks)


def _ensemble_explanation(model: EnsembleModel, images: torch.Tensor | np.ndarray, **how: Any) -> Explanation:
    """Each member's maps (each scaled to [0, 1] per patch), averaged: where the members agree stays bright."""
    parts = [explain_batch(member, images, **how) for member in model.members]
    device = next(model.parameters()).device
    with torch.no_grad():
        probs = torch.sigmoid(model(eval_preset().to(device)(as_batch(images).to(device))).float()).double().cpu().numpy()
    first = parts[0]
    mean = lambda arrays: np.mean(np.stack(arrays), axis=0)  # noqa: E731
    return Explanation(mean([p.maps for p in parts]).astype(np.float32), probs, first.method, first.layer, first.target,
                       first.resolution, mean([p.floors for p in parts]), mean([p.peaks for p in parts]))


def centre_focus(maps: np.ndarray) -> np.ndarray | float:
    """Share of each map's mass inside the central 32x32 region (see the module docstring):
    a float for one (96, 96) map, an array for (B, 96, 96); NaN for an all-zero map."""
    m = np.asarray(maps, dtype=np.float64)
    if m.shape[-2:] != (PATCH_SIZE, PATCH_SIZE) or m.ndim not in (2, 3):
        raise ValueError(f"maps must have shape (96, 96) or (B, 96, 96), got {m.shape}")
    if m.size and m.min() < 0:
        raise ValueError(f"maps must be non-negative, found a minimum of {m.min():.3g}")
    centre = slice(CENTER_START, CENTER_START + CENTER_SIZE)
    total = m.sum(axis=(-2, -1))
    inside = m[..., centre, centre].sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, inside / total, np.nan)
    return float(share) if m.ndim == 2 else share


def rank_by_focus(focus: np.ndarray) -> np.ndarray:
    """Positions of `focus` values (one per patch) from the lowest centre focus to the highest, maps
    without focus (NaN) last: the first are the patches whose evidence lies most outside the centre,
    where the label is not defined."""
    return np.argsort(np.asarray(focus, dtype=np.float64), kind="stable")


def colormap(name: str = DEFAULT_COLORMAP) -> Colormap:
    try:
        return matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(f"unknown colormap {name!r}; use a matplotlib colormap name such as jet, turbo, viridis or inferno") from None


def _rgb255(colour: str | Sequence[float]) -> np.ndarray:
    try:
        return np.round(np.array(to_rgb(colour)) * 255).astype(np.uint8)
    except ValueError:
        raise ValueError(f"not a colour: {colour!r}; use a name ('white'), a hex code ('#00ff00') or RGB floats in [0, 1]") from None


def _hwc(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(..., 96, 96, 3) uint8 array from a patch or batch in either channel order."""
    x = as_batch(images).cpu().permute(0, 2, 3, 1).numpy()
    return x[0] if images.ndim == 3 else x


def overlay(
    images: torch.Tensor | np.ndarray,
    maps: np.ndarray,
    *,
    opacity: float = 0.5,
    cmap: str = DEFAULT_COLORMAP,
    box_colour: str | Sequence[float] | None = "white",
    box_width: int = 1,
    scale: int = 1,
) -> np.ndarray:
    """Heat map over the patch: ``(1 - opacity) * patch + opacity * cmap(map)``, enlarged `scale`
    times (nearest neighbour), with the central 32x32 region outlined on its border pixels.

    One patch (96, 96[, 3]) and map (96, 96) give (96s, 96s, 3); a batch gives (B, 96s, 96s, 3); uint8 RGB.
    `box_colour` None draws no box."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    if scale < 1 or box_width < 1:
        raise ValueError(f"scale and box_width must be at least 1, got scale={scale}, box_width={box_width}")
    patch = _hwc(images)
    m = np.asarray(maps, dtype=np.float32)
    if m.shape != patch.shape[:-1]:
        raise ValueError(f"maps of shape {m.shape} do not match patches of shape {patch.shape}")
    heat = colormap(cmap)(np.clip(m, 0.0, 1.0))[..., :3] * 255.0
    out = np.round((1.0 - opacity) * patch + opacity * heat).astype(np.uint8)
    if scale > 1:
        out = out.repeat(scale, axis=-3).repeat(scale, axis=-2)
    if box_colour is not None:
        rgb = _rgb255(box_colour)
        lo, hi, w = CENTER_START * scale, (CENTER_START + CENTER_SIZE) * scale, box_width
        out[..., lo:lo + w, lo:hi, :] = rgb
        out[..., hi - w:hi, lo:hi, :] = rgb
        out[..., lo:hi, lo:lo + w, :] = rgb
        out[..., lo:hi, hi - w:hi, :] = rgb
    return out


def colour_bar(cmap: str = DEFAULT_COLORMAP, *, width: int = 256, height: int = 12) -> np.ndarray:
    """A horizontal colour scale, map value 0 on the left to 1 on the right, as (height, width, 3) uint8."""
    if width < 2 or height < 1:
        raise ValueError(f"a colour bar needs width >= 2 and height >= 1, got {width}x{height}")
    row = colormap(cmap)(np.linspace(0.0, 1.0, width))[:, :3]
    return np.round(np.broadcast_to(row, (height, width, 3)) * 255).astype(np.uint8)


def colour_stops(cmap: str = DEFAULT_COLORMAP, n: int = 11) -> list[tuple[float, str]]:
    """(map value, "#rrggbb") at `n` evenly spaced values, enough for a UI to draw the scale (a CSS gradient)."""
    if n < 2:
        raise ValueError(f"need at least 2 colour stops, got {n}")
    values = np.linspace(0.0, 1.0, n)
    return [(float(v), to_hex(c)) for v, c in zip(values, colormap(cmap)(values))]


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG encoding of an (H, W, 3) uint8 RGB image."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got shape {rgb.shape} and dtype {rgb.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def open_patches(path: str | Path, split: str | None = None, *, valid_frac: float = 0.1, seed: int = 0) -> PatchDataset:
    """The patches to explain: one image file, a folder of images, a Kaggle folder (test split unless
    `split` says otherwise), an HDF5 folder (test split by default) or one HDF5 split file. Grayscale,
    RGBA and 16-bit image files are converted to 8-bit RGB, as `pcam predict` and the Predict page do.
    A split is resolved as `pcam evaluate` resolves it (`open_split`): "valid" of a Kaggle folder is
    the seeded validation split that `valid_frac` and `seed` (the run's) make of its train folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path} does not exist (give an image file, a folder of images, "
                                "a Kaggle folder or PCam HDF5 data)")
    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageFiles([path], convert=True)
    has_splits = detect_format(path) in ("h5", "kaggle") and not path.is_file()
    if split is None and not has_splits:
        return open_dataset(path, convert=True)
    return open_split(path, split or "test", valid_frac=valid_frac, seed=seed)


def write_explanations(
    run: RunArg,
    input_path: str | Path,
    out: str | Path,
    options: ScoringOptions = ScoringOptions(batch_size=EXPLAIN_BATCH_SIZE),
    *,
    split: str | None = None,
    method: str = DEFAULT_METHOD,
    layer: str | None = None,
    target: str = "tumour",
    opacity: float = 0.5,
    cmap: str = DEFAULT_COLORMAP,
    scale: int = 1,
    limit: int | None = None,
    on_start: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Explain the run's calls on the patches of `input_path` (`open_patches`; `split` of a data folder):
    one overlay PNG per patch (``<id>.png``) and ``explanations.csv`` (id, probability, centre_focus,
    method, layer, target) in the folder `out`. `options`: the checkpoint, device, batch size and workers
    (TTA and the threshold play no part in a map). Every file is written atomically, the CSV last, once
    every patch succeeded. Returns a summary: rows, csv path, method, layer and its resolution, target, model."""
    from .loading import load_run_model

    loaded = load_run_model(run, checkpoint=options.checkpoint, device=options.device)
    model, model_name = loaded.model, loaded.model_name
    dataset = open_patches(input_path, split, valid_frac=loaded.config.data.valid_frac, seed=loaded.config.data.split_seed)
    layer, size = resolve_layer(model_name, layer)
    get_method(method)
    if target not in TARGETS:  # checked before any file is written
        raise ValueError(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    if limit is not None and limit < len(dataset):
        dataset = dataset.subset(np.arange(limit))
    if on_start:
        on_start(len(dataset))
    out = Path(out)
    rows: list[dict[str, Any]] = []
    used: set[str] = set()
    for batch in make_loader(dataset, options.batch_size, shuffle=False, num_workers=options.workers, ids=True):
        result = explain_batch(model, batch["image"], model_name=model_name, method=method, layer=layer, target=target)
        pictures = overlay(batch["image"], result.maps, opacity=opacity, cmap=cmap, scale=scale)
        for pid, index, picture, prob, focus in zip(batch["id"], batch["index"].tolist(), pictures, result.probabilities, result.centre_focus):
            name = pid if pid not in used else f"{pid}-{index}"  # the same pixels twice give the same id
            used.add(name)
            data = png_bytes(picture)
            atomic_write_with(out / f"{name}.png", lambda handle, data=data: handle.write(data))
            rows.append({"id": name, "probability": round(float(prob), 6), "centre_focus": round(float(focus), 6),
                         "method": method, "layer": layer, "target": target})
        if progress:
            progress(len(batch["id"]))
    frame = pd.DataFrame(rows, columns=["id", "probability", "centre_focus", "method", "layer", "target"])
    csv = out / "explanations.csv"
    atomic_write_with(csv, lambda handle: handle.write(frame.to_csv(index=False).encode()))
    log.info("wrote %d explanations (%s, %s, target %s) to %s", len(rows), method, layer, target, out)
    return {"out": str(out), "csv": str(csv), "rows": len(rows), "method": method, "layer": layer,
            "resolution": f"{size}x{size}", "target": target, "model": model_name}
