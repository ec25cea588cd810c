"""Drawing class activation maps (`pcam_core.explain`) in the dashboard: explanations cached per
checkpoint, patches and settings; overlays beside their patches; the colour scale; and the words a
reader needs for centre focus. Used by the Explain, Predict and Runs pages."""

from __future__ import annotations

import hashlib

import numpy as np
import streamlit as st

from pcam_core.explain import (
    CLASS_AGNOSTIC,
    DEFAULT_COLORMAP,
    DEFAULT_METHOD,
    SCALE_NOTES,
    UNIFORM_FOCUS,
    Explanation,
    colour_stops,
    explain_batch,
    overlay,
)
from pcam_core.loading import RunModel, load_run_model
from pcam_core.runs import RunDir
from pcam_core.workspace.gallery import outline_centre

from . import caches, shell

CENTRE_FOCUS_NOTE = (
    "**Centre focus** is the share of the heat map that falls inside the central 32×32 box, the region the "
    f"label describes: about {UNIFORM_FOCUS:.2f} when the map is spread evenly over the patch, 1 when all of it "
    "lies in the box. A low value means the evidence for this call lies in the surrounding tissue, which the "
    "label does not describe: look there. It does **not** say whether the call is right (a model can look at "
    "the centre and be wrong), and it cannot be compared between methods or layers."
)
MAP_NOTE = SCALE_NOTES["patch"]


@st.cache_resource(max_entries=4, show_spinner="Loading the model...")
def _explainer(run: str, checkpoint: str, mtime: float) -> RunModel:
    # A copy of its own: while a map is computed, hooks sit on the model, and another session's
    # prediction through a shared model would pass through them.
    return load_run_model(run, device="cpu")


@st.cache_data(max_entries=256, show_spinner="Computing heat maps...")
def _explain(run: str, checkpoint: str, mtime: float, digest: str, method: str, layer: str | None, target: str,
             _pixels: np.ndarray) -> Explanation:
    loaded = _explainer(run, checkpoint, mtime)
    return explain_batch(loaded.model, _pixels, model_name=loaded.model_name, method=method, layer=layer, target=target)


def _checkpoint(run: RunDir) -> tuple[str, str, float]:
    """The run as a run argument, its best checkpoint and that file's version (to key the caches on)."""
    try:
        return caches.best_checkpoint(run)
    except (OSError, ValueError) as err:
        shell.fail(f"Cannot read the checkpoint of run {run.run_id}: {err}")


def model_name(run: RunDir) -> str:
    """The registered model name of the run's best checkpoint."""
    try:
        return _explainer(*_checkpoint(run)).model_name
    except (OSError, ValueError, RuntimeError) as err:
        shell.fail(f"Cannot load the model of run {run.run_id}: {err}")


def explain(run: RunDir, pixels: np.ndarray, *, method: str = DEFAULT_METHOD, layer: str | None = None,
            target: str = "tumour") -> Explanation:
    """Maps of `pixels` ((B, 96, 96, 3) uint8) with the run's best model, computed once per checkpoint,
    patches and settings."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    digest = hashlib.sha1(pixels.tobytes()).hexdigest()
    try:
        return _explain(*_checkpoint(run), digest, method, layer, target, pixels)
    except (OSError, ValueError, RuntimeError) as err:
        shell.fail(f"Cannot compute heat maps with run {run.run_id}: {err}")


def side_by_side(pixels: np.ndarray, explanation: Explanation, *, opacity: float = 0.5, scale: int = 2,
                 gap: int = 4) -> np.ndarray:
    """Each patch (centre outlined in green) beside its overlay (centre outlined in white), as
    (B, 96s, 2 * 96s + gap, 3) uint8 images on a white background."""
    plain = outline_centre(pixels, scale=scale, width=scale)
    heat = overlay(pixels, explanation.maps, opacity=opacity, scale=scale, box_width=scale)
    spacer = np.full((*plain.shape[:-2], gap, 3), 255, dtype=np.uint8)
    return np.concatenate([plain, spacer, heat], axis=-2)


def focus_text(value: float) -> str:
    return "none (empty map)" if value != value else f"{value:.2f}"


def colour_legend(target: str, cmap: str = DEFAULT_COLORMAP, *, width: int | str = "stretch", method: str = DEFAULT_METHOD,
                  note: str = MAP_NOTE) -> None:
    """The colour scale of the overlays, from no evidence to the strongest evidence for `target` (for a
    class-agnostic method, the strongest activation), and `note`, how the maps were scaled."""
    high = "strongest activation (no class)" if method in CLASS_AGNOSTIC else f"strongest evidence for {target}"
    stops = ", ".join(f"{colour} {100 * value:.0f}%" for value, colour in colour_stops(cmap))
    st.html(
        f'<div style="font-size:0.85rem">'
        f'<div style="height:14px;border-radius:3px;background:linear-gradient(to right, {stops})"></div>'
        f'<div style="display:flex;justify-content:space-between;margin-top:2px">'
        f"<span>0: {'none' if method in CLASS_AGNOSTIC else 'no evidence'}</span><span>0.5</span><span>1: {high}</span></div></div>",
        width=width,
    )
    st.caption(note)
