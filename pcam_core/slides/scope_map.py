"""A slide's scope: which of its scored cells lie within what the model knows, and whether the slide as a
whole can be assessed (`pcam_core.scope` computes each window's distance; this module turns the map of
distances into the slide's answer). No model code.

A slide is out of scope when most of its scored tissue is (`MAX_OUT_OF_SCOPE`), or when it was scanned
coarser than the model's resolution so that its windows had to be enlarged (`MAX_UPSAMPLING`): then it gets
no size class ("not assessed") and every face says that the model was not made for this tissue. Cells out of
scope never count as tumour: they are left out of the regions and drawn grey on the map.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .reader import PCAM_MPP

OUT_OF_SCOPE = -2.0  # a map cell the guard flagged, in the maps that are drawn (`assessed_map`); -1 is unreadable
MAX_OUT_OF_SCOPE = 0.5  # a slide with more of its scored tissue out of scope than this is not assessed
MAX_UPSAMPLING = 1.25  # a slide coarser than PCam scale by more than this factor is not assessed
NOT_ASSESSED = "not assessed"
NOT_ASSESSED_CLASS = "Not assessed (out of scope)"  # QuPath's class of a region of a slide not assessed
SCOPE_LINE = "Trained on lymph-node H&E at 0.972 µm/px (PatchCamelyon) only."
SYNTHETIC_MODEL_LINE = "Trained on SYNTHETIC demo patches only: its calls say nothing about real tissue."


def out_of_scope_cells(distances: np.ndarray | None, threshold: float | None, scored: np.ndarray) -> np.ndarray:
    """Boolean map: scored cells whose distance is above the guard's threshold (none without a guard)."""
    if distances is None or threshold is None:
        return np.zeros(scored.shape, dtype=bool)
    d = np.asarray(distances, dtype=np.float64)
    return scored & (np.nan_to_num(d, nan=np.inf) > threshold)


def assessed_map(heat: np.ndarray, distances: np.ndarray | None, guard: dict[str, Any] | None) -> np.ndarray:
    """A copy of the probability map in which out-of-scope cells hold `OUT_OF_SCOPE`: what the viewer, the map
    picture and the regions see. Scored cells are those >= 0 in the result."""
    marked = np.array(heat, dtype=np.float32)
    scored = np.isfinite(marked) & (marked >= 0)
    marked[out_of_scope_cells(distances, guard["threshold"] if guard else None, scored)] = OUT_OF_SCOPE
    return marked


def slide_scope(scored: np.ndarray, outside: np.ndarray, *, mpp: float, mpp_source: str,
                guard: dict[str, Any] | None, synthetic_model: bool = False) -> dict[str, Any]:
    """The `scope` object of a slide's summary: in_scope, out_of_scope_fraction, the reasons in words, the guard
    that decided it (None: the model has no guard, so nothing was checked but the scale), and the line saying what
    the model was trained on (`synthetic_model`: a run of the SYNTHETIC demo data, not PCam)."""
    n = int(scored.sum())
    fraction = float(outside.sum() / n) if n else 0.0
    reasons = []
    if guard is not None and fraction > MAX_OUT_OF_SCOPE:
        reasons.append(f"{fraction:.1%} of the scored tissue is unlike the tissue the model was trained on (the guard "
                       f"flags about {guard['rate']:.0%} of the held-out patches of the model's own training data)")
    upsampling = mpp / PCAM_MPP
    if upsampling > MAX_UPSAMPLING:
        reasons.append(f"the slide was scanned at {mpp:.3g} µm/px, coarser than the model's {PCAM_MPP} µm/px: its windows "
                       f"were enlarged {upsampling:.2g}x")
    if mpp_source not in ("metadata", "given"):
        reasons.append(f"the slide's resolution ({mpp:.3g} µm/px) was guessed ({mpp_source}), not read or given")
    in_scope = not reasons
    if in_scope:
        words = (f"In scope: {fraction:.1%} of the scored tissue was flagged out of scope and left out of the regions."
                 if guard is not None else "No out-of-scope guard for this model: the tissue was not checked.")
    else:
        words = "Not assessed: the model was not made for this slide: " + "; ".join(reasons) + "."
    return {"in_scope": in_scope, "out_of_scope_fraction": fraction, "cells_out_of_scope": int(outside.sum()),
            "reason": words, "checked": guard is not None, "guard": guard, "mpp": mpp, "mpp_source": mpp_source,
            "line": SYNTHETIC_MODEL_LINE if synthetic_model else SCOPE_LINE}


__all__ = ["MAX_OUT_OF_SCOPE", "MAX_UPSAMPLING", "NOT_ASSESSED", "OUT_OF_SCOPE", "SCOPE_LINE", "SYNTHETIC_MODEL_LINE", "assessed_map", "out_of_scope_cells",
           "slide_scope"]
