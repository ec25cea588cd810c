"""The call at a threshold: one rule, one valid range, one default, used by every face.

A patch (or a slide cell) is called tumour when its probability is >= the threshold. The threshold is a
probability in [0, 1]; 0.5 is the default of a run that records no threshold of its own (the bundled
model records the one it was judged at; `pcam_core.loading.load_run_model` carries it). Choose another
threshold on validation predictions with `pcam_core.metrics.choose_threshold`, never on the data being
judged. Imports nothing of ours.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

DEFAULT_THRESHOLD = 0.5
TUMOUR, NORMAL = "tumour", "normal"
REFER = "refer"  # to a pathologist: the triage's doubtful band, and every patch out of the model's scope
CALLS = (NORMAL, TUMOUR)


def check_threshold(value: Any, name: str = "threshold") -> float:
    """`value` as a float threshold, or a ValueError naming it and the valid range [0, 1]."""
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}={value!r} is not a number; give a probability between 0 and 1") from err
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise ValueError(f"{name}={value!r} must be a probability between 0 and 1")
    return number


def is_tumour(probabilities: Any, threshold: float) -> np.ndarray:
    """Boolean array: which probabilities are called tumour at `threshold` (NaN is never tumour)."""
    probs = np.asarray(probabilities, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(probs, nan=-1.0) >= check_threshold(threshold)


def call(probability: float, threshold: float) -> str:
    """"tumour" or "normal" for one probability."""
    return TUMOUR if bool(is_tumour(probability, threshold)) else NORMAL


def calls(probabilities: Any, threshold: float) -> np.ndarray:
    """"tumour"/"normal" for each probability (an array of str)."""
    return np.where(is_tumour(probabilities, threshold), TUMOUR, NORMAL)


__all__ = ["CALLS", "DEFAULT_THRESHOLD", "NORMAL", "REFER", "TUMOUR", "call", "calls", "check_threshold", "is_tumour"]
