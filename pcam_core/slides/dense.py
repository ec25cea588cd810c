"""Dense scanning and the cascade: scoring many overlapping windows for the price of one pass over the region.

Dense. A network made of convolutions, 2x2 poolings and a global average pool (`pcamnet`, `pcamnet_wide`, `pcamscan`)
can be run once over a whole region whose windows lie at multiples of 32 PCam pixels: its last feature map
(1/16 of the resolution) holds every window's block of features (6 x 6 for `pcamnet`, 2 x 2 for `pcamscan`), an
average pool of that size at stride `stride / 16` gives every window's pooled features, and the linear head its
logit. Each pixel goes through the network once instead of nine times (stride 32).

Exact or not. `pcamscan`'s convolutions are valid ones (no zero padding) and its pooling steps divide 32, so every
window's output in the dense pass is computed from the same pixels by the same operations as when the window is
scored alone: the dense map equals the per-window map to float rounding (`EXACT_TOLERANCE`, tested), and dense is
its default mode (`scans_exactly`). The padded nets' dense map is not bit-identical: a window scored alone sees zero
padding at its borders, the dense pass sees the real neighbouring tissue there. The bundled model's difference is
measured (docs/slides.md, benchmarks/README.md) and tested (tests/test_slide_modes.py) against `DENSE_TOLERANCE`,
and their default is the cascade, which scores window by window every cell the dense pass finds suspect.

The out-of-scope guard's features (each scope layer's per-channel mean and standard deviation over the window) come
from the same pass, as box means of the layer's output and of its square over each window's block. With TTA the
region is scored in its 8 symmetries and each view's window grid turned back before averaging (the symmetries of
the square map the window lattice onto itself).

Ensembles. An `EnsembleModel` whose members can all scan is scanned member by member (each member's own dense
graph, as a single model's) and its per-window logits joined as its forward pass joins them
(`models.combine_logits`), view by view with TTA; the scope features come from its first member's pass over the
untransformed view, the member and view the guard's `FeatureTap` reads in window mode (`models.get_layer`).

Cascade. A coarse pass scores one window in nine (the centre cell of each 3 x 3 block of stride-32 cells,
whose window is exactly the block's stride-96 window); the stride-32 cells of every block whose centre
reaches the `cascade_bar` of the threshold, and of the 8 blocks around it, are then scored one by one;
every other cell takes its block's coarse probability (below the bar, so below the threshold).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
import weakref
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import binary_dilation
from torch import nn

from ..inference import autocast_context
from ..models import EnsembleModel, PCamNet, combine_logits
from ..scoring_options import DEFAULT_SLIDE_MODE, SLIDE_MODES
from ..transforms import dihedral, dihedral_inverse
from .reader import WINDOW

# The stated tolerance of the dense map against the per-window one (bundled model, measured on the demo and
# real-patch slides: docs/slides.md): the largest |difference| of a cell's probability the tests accept.
DENSE_TOLERANCE = 0.10
# ... and of a model that scans exactly (`scans_exactly`): float rounding (ONNX Runtime's and PyTorch's kernels sum in
# other orders), measured below 1e-5
EXACT_TOLERANCE = 1e-4
CASCADE_BAR_SHARE = 0.25  # a cell is looked at closely when its coarse probability reaches a quarter of the threshold
# ... or (dense coarse pass) when its out-of-scope distance lies in this band around the guard's threshold: dense
# distances run about 2 higher than the window's (no zero padding at the window's border; docs/slides.md)
SCOPE_BAND = (0.85, 1.3)
log = logging.getLogger(__name__)
BLOCK = 3  # stride-32 cells per stride-96 block side


def can_scan(model: nn.Module) -> bool:
    """Whether `model` can be run densely (convolutions, 2x2 poolings, a global average pool and a linear head): a
    `PCamNet`, or an ensemble of them."""
    return all(type(member) is PCamNet for member in _members(model)[0])


def scans_exactly(model: nn.Module) -> bool:
    """Whether `model`'s dense map is its per-window map (to `EXACT_TOLERANCE`): a `PCamNet` without padding
    (`pcamscan`), or an ensemble of them."""
    return all(type(member) is PCamNet and member.padding == 0 for member in _members(model)[0])


def _members(model: nn.Module) -> tuple[list[nn.Module], str | None]:
    """(the networks a model scans, how their logits are joined: an ensemble's `combine`, None for one network)."""
    if isinstance(model, EnsembleModel):
        return list(model.members), model.combine
    return [model], None


def effective_mode(model: nn.Module, mode: str | None, *, stride: int = 32, sharded: bool = False) -> str:
    """The mode a model scores a slide in: `mode`; None: the fastest exact one. That is "dense" for a model that scans
    exactly (`scans_exactly`), else the default (`DEFAULT_SLIDE_MODE`) except for a shard of a slide, which the cascade
    cannot score; at stride 96, where windows do not overlap and there is nothing to share, "window". A model that
    cannot scan scores "dense" window by window, and "cascade" at stride 96 too (its coarse pass of one window per
    3 x 3 block would be every window)."""
    if mode is None:
        if stride != 32:
            mode = "window"
        elif scans_exactly(model):
            mode = "dense"
        else:
            mode = "window" if sharded else DEFAULT_SLIDE_MODE
    if mode not in SLIDE_MODES:
        raise ValueError(f"mode must be one of {', '.join(SLIDE_MODES)}, not {mode!r}")
    if not can_scan(model) and (mode == "dense" or (mode == "cascade" and stride != 32)):
        return "window"
    return mode


def window_sizes(model: PCamNet) -> tuple[list[int], int]:
    """The side of one 96-px window's output of each stage of `model` (before its pooling), and of its last pooled
    feature map: ([96, 48, 24, 12], 6) for `pcamnet`, ([92, 42, 17, 4], 2) for `pcamscan` (two 3 x 3 convolutions per
    stage, each trimming 1 - padding pixels on a side: `PCamNet.stage_grid`)."""
    sizes = [side for side, _, _ in model.stage_grid(WINDOW)]
    return sizes, sizes[-1] // 2


def _window_stats(y: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """Per-channel mean and standard deviation of feature map `y` (1, C, h, w) over every window's k x k block, the
    blocks s apart: (1, 2C, rows, cols)."""
    y = y.float()
    mean = F.avg_pool2d(y, k, s)
    var = (F.avg_pool2d(y * y, k, s) - mean * mean).clamp_min(0)
    return torch.cat([mean, var.sqrt()], dim=1)


class _DenseNet(nn.Module):
    """A `PCamNet` as one fully convolutional graph over a normalised region (1, 3, H, W): every window's logit
    (1, 1, rows, cols) and, with `scope_layers`, their per-window statistics (1, D, rows, cols) in `FeatureTap`'s order."""

    def __init__(self, model: PCamNet, stride: int, scope_layers: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.stride, self.scope_layers = model, stride, scope_layers

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        stats = []
        sizes, last = window_sizes(self.model)
        for i in range(1, self.model.n_stages + 1):
            name = f"stage{i}"
            y = getattr(self.model, name)(x)
            if name in self.scope_layers:  # stage i's convolutions run at 1/2^(i-1)
                stats.append(_window_stats(y, sizes[i - 1], self.stride // 2 ** (i - 1)))
            x = self.model.pool(y)
        pooled = F.avg_pool2d(x.float(), last, self.stride // 2 ** self.model.n_stages)
        logits = F.conv2d(pooled, self.model.fc.weight.float()[:, :, None, None], self.model.fc.bias.float())
        return (logits, torch.cat(stats, dim=1)) if stats else (logits,)


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(stride, layers): ONNX Runtime session}


def _onnx_session(model: PCamNet, stride: int, scope_layers: tuple[str, ...], *, arena: bool = True) -> Any:
    """The dense graph of `model` in ONNX Runtime (3-4x faster than PyTorch on this CPU's convolutions, the same
    probabilities to 1e-6: benchmarks/README.md), exported once per model, stride and scope layers; None when
    ONNX Runtime is missing or the export fails (then PyTorch runs it, logged once). `arena`: whether the session
    keeps a memory arena (see below)."""
    cache = _SESSIONS.setdefault(model, {})
    key = (stride, scope_layers, arena)
    if key not in cache:
        cache[key] = None
        try:
            import onnxruntime as ort

            graph = _DenseNet(model, stride, scope_layers).eval()
            buffer = io.BytesIO()
            outputs = ["logits", "stats"][: 2 if scope_layers else 1]
            with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
                torch.onnx.export(graph, (torch.zeros(1, 3, WINDOW, WINDOW),), buffer, dynamo=False, input_names=["x"],
                                  output_names=outputs, dynamic_axes={"x": {2: "h", 3: "w"}}, opset_version=17)
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            # Regions differ in size (the box around a tile's cells), and ONNX Runtime keeps a memory plan per input
            # shape: without the plans a 30,000 x 66,000 slide peaked 240 MB lower (1.20 against 1.44 GB PSS), no slower
            options.enable_mem_pattern = False
            # An arena keeps its largest region's buffers for good. One session's is worth keeping (without it about
            # 100 MB less and 20 % slower: docs/slides.md), but an ensemble has a session per member: the bundled
            # ensemble's dense mode peaked at 2.37 GB PSS with their arenas, 1.35 GB without (cascade 2.72 -> 1.47 GB),
            # at the same speed (benchmarks/README.md, `bench_slide_modes.py --scale 0.05`)
            options.enable_cpu_mem_arena = arena
            cache[key] = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # no runtime, or an exporter that cannot take this graph: PyTorch scores it
            log.warning("dense scanning runs in PyTorch: no ONNX Runtime session (%s: %s)", type(err).__name__, err)
    return cache[key]


def _runner(model: PCamNet, stride: int, scope_layers: tuple[str, ...], device: torch.device, *,
            arena: bool = True) -> Callable[[torch.Tensor], tuple]:
    """A function from a normalised region (1, 3, H, W) to `_DenseNet`'s outputs: ONNX Runtime on the CPU (with a
    memory arena unless `arena` is False: an ensemble's members), else PyTorch."""
    session = _onnx_session(model, stride, scope_layers, arena=arena) if device.type == "cpu" else None
    if session is None:
        return _DenseNet(model, stride, scope_layers)
    return lambda x: tuple(torch.from_numpy(y) for y in session.run(None, {"x": x.float().contiguous().numpy()}))


@torch.no_grad()
def dense_windows(model: nn.Module, region: torch.Tensor, stride: int, *, normalize: nn.Module, tta: bool = False,
                  amp_dtype: torch.dtype | None = None, scope_layers: tuple[str, ...] = ()) -> tuple[np.ndarray, np.ndarray | None]:
    """Tumour probabilities (rows, cols) of every window of a uint8 region (3, H, W) whose windows lie at `stride`
    steps from its top-left corner (H = stride * (rows - 1) + 96), and the scope features (rows, cols, D) of
    `scope_layers` (None when empty; from the untransformed view, as `FeatureTap` takes them). An ensemble: each
    member's pass, their logits joined per window as `EnsembleModel.forward` joins them (features: its first member's)."""
    if not can_scan(model):
        raise ValueError(f"{type(model).__name__} cannot be scanned densely; use mode 'window'")
    h, w = region.shape[-2:]
    if (h - WINDOW) % stride or (w - WINDOW) % stride or h < WINDOW or w < WINDOW:
        raise ValueError(f"a dense region must be 96 + k * {stride} pixels on a side, not {w} x {h}")
    x = normalize(region[None])
    scope_layers = tuple(scope_layers)
    members, combine = _members(model)
    probs, features = [], None
    with autocast_context(x.device, amp_dtype):
        for k in range(8) if tta else range(1):
            view, logits = dihedral(x, k) if k else x, []
            for m, member in enumerate(members):
                layers = scope_layers if k == 0 and m == 0 else ()
                out = _runner(member, stride, layers, x.device, arena=len(members) == 1)(view)
                logits.append(out[0][0, 0].float())
                if layers:
                    features = out[1][0].permute(1, 2, 0)
            z = logits[0] if combine is None else combine_logits(torch.stack(logits), combine)
            probs.append(dihedral_inverse(torch.sigmoid(z), k))
    mean = torch.stack(probs).mean(dim=0)
    return mean.cpu().numpy(), (None if features is None else features.double().cpu().numpy())


def cascade_bar(threshold: float) -> float:
    """The coarse probability from which a block (and the 8 around it) is scored at full resolution."""
    return CASCADE_BAR_SHARE * threshold


def scope_cascade_band(scope_threshold: float) -> tuple[float, float]:
    """The dense out-of-scope distances at which a cell is scored again window by window (the guard's call is close)."""
    return SCOPE_BAND[0] * scope_threshold, SCOPE_BAND[1] * scope_threshold


def block_probes(score: np.ndarray) -> np.ndarray:
    """The coarse pass: per 3 x 3 block of cells holding a cell to score, its centre cell (clipped to the map):
    a boolean map of the cells whose windows are scored first."""
    rows, cols = score.shape
    probes = np.zeros_like(score, dtype=bool)
    for bi, bj in np.argwhere(_blocks(score)):
        probes[min(BLOCK * bi + 1, rows - 1), min(BLOCK * bj + 1, cols - 1)] = True
    return probes


def _blocks(cells: np.ndarray) -> np.ndarray:
    """Per 3 x 3 block of the map: whether any of its cells is set."""
    rows, cols = cells.shape
    padded = np.zeros((-(-rows // BLOCK) * BLOCK, -(-cols // BLOCK) * BLOCK), dtype=bool)
    padded[:rows, :cols] = cells
    return padded.reshape(padded.shape[0] // BLOCK, BLOCK, -1, BLOCK).any(axis=(1, 3))


def _expand(blocks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A per-block array back at cell resolution (cropped to `shape`)."""
    return np.repeat(np.repeat(blocks, BLOCK, axis=0), BLOCK, axis=1)[: shape[0], : shape[1]]


def block_values(values: np.ndarray, probes: np.ndarray) -> np.ndarray:
    """Per block, the value of its probe cell (NaN where a block has none)."""
    out = np.full(_blocks(probes).shape, np.nan, dtype=np.float64)
    for i, j in np.argwhere(probes):
        out[i // BLOCK, j // BLOCK] = values[i, j]
    return out


def refine_cells(coarse: np.ndarray, score: np.ndarray, bar: float) -> np.ndarray:
    """The cells scored at full resolution. `coarse` at cell resolution (a dense pass): the cells to score that reach
    `bar` or touch one that does (8-neighbourhood). `coarse` per 3 x 3 block (probes): the cells to score of every block
    that reaches `bar` and of the 8 blocks around it. An unreadable probe (-1) counts as suspect."""
    suspect = (np.nan_to_num(coarse, nan=0.0) >= bar) | (coarse == -1.0 if coarse.shape != score.shape else False)
    near = binary_dilation(suspect, structure=np.ones((3, 3), dtype=bool))
    return score & (near if near.shape == score.shape else _expand(near, score.shape))


def fill_from_blocks(values: np.ndarray, coarse: np.ndarray, todo: np.ndarray) -> None:
    """Give the cells of `todo` not scored at full resolution (NaN in `values`) their block's coarse value."""
    fill = todo & np.isnan(values)
    values[fill] = _expand(coarse, values.shape)[fill]


def cascade_summary(score: np.ndarray, probes: np.ndarray, refined: np.ndarray, bar: float, *, dense: bool) -> dict[str, Any]:
    """What the cascade did, for summary.json."""
    n = int(score.sum())
    rule = (f"dense coarse map >= {CASCADE_BAR_SHARE} x threshold, and the 8 cells around; out-of-scope distance in "
            f"{SCOPE_BAND[0]}-{SCOPE_BAND[1]} x the guard's threshold; none beyond it" if dense else
            f"coarse probability of a 3 x 3 block >= {CASCADE_BAR_SHARE} x threshold, and the 8 blocks around")
    return {"bar": bar, "bar_rule": rule, "coarse": "dense" if dense else "probes", "probes": int(probes.sum()),
            "cells_refined": int(refined.sum()), "cells": n, "refined_share": float(refined.sum() / n) if n else 0.0}
