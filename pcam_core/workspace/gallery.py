"""Browsing patches: which ones to show, drawn how, and what a split looks like in numbers.

Everything here works from label arrays, metadata and bounded samples, so a 262,144-patch split costs
no more than a small one: a page of the dashboard reads only the pixels it shows.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from ..data.common import CENTER_SIZE, CENTER_START
from ..decision import check_threshold, is_tumour

if TYPE_CHECKING:
    from ..data import PatchDataset

LABEL_NAMES = {1: "tumour", 0: "normal", -1: "unlabelled"}
CHANNELS = ("red", "green", "blue")
BOX_COLOUR = (0, 200, 83)  # a green that stands out on pink and purple H&E


def slide_ids(dataset: PatchDataset) -> np.ndarray | None:
    """The slide (`wsi`) of every patch, when the split has metadata that names it; else None."""
    meta = getattr(dataset, "metadata", None)  # PCamH5 with its `..._meta.csv`
    if meta is None or "wsi" not in meta.columns:
        return None
    return meta["wsi"].astype(str).to_numpy()


def select_indices(labels: np.ndarray, *, label: int | None = None, slides: np.ndarray | None = None,
                   slide: str | None = None) -> np.ndarray:
    """Indices of the patches with `label` (None: any) on `slide` (None: any), in dataset order."""
    keep = np.ones(len(labels), dtype=bool)
    if label is not None:
        if label not in LABEL_NAMES:
            raise ValueError(f"label must be one of {sorted(LABEL_NAMES)} or None, not {label!r}")
        keep &= np.asarray(labels) == label
    if slide is not None:
        if slides is None:
            raise ValueError("this split has no slide metadata to filter on")
        keep &= np.asarray(slides) == slide
    return np.flatnonzero(keep)


def page_count(n_items: int, per_page: int) -> int:
    """Pages needed for `n_items` (at least 1, so an empty selection still has a page to show)."""
    if per_page < 1:
        raise ValueError(f"per_page must be at least 1, not {per_page}")
    return max(1, math.ceil(n_items / per_page))


def page_items(indices: np.ndarray, page: int, per_page: int) -> np.ndarray:
    """The `page`-th (1-based) block of `indices`; a page past the end gives the last one."""
    page = min(max(1, page), page_count(len(indices), per_page))
    return np.asarray(indices)[(page - 1) * per_page : page * per_page]


def outline_centre(images: np.ndarray, *, scale: int = 1, colour: Sequence[int] = BOX_COLOUR, width: int = 1) -> np.ndarray:
    """Patches ``(96, 96, 3)`` or ``(B, 96, 96, 3)`` uint8, enlarged `scale` times (nearest neighbour),
    with the central 32x32 label region outlined (`width` pixels of the enlarged image, drawn inside
    the region). `width=0` draws no outline. Returns a new array."""
    images = np.asarray(images, dtype=np.uint8)
    if images.shape[-3:-1] != (96, 96) or images.shape[-1] != 3:
        raise ValueError(f"expected patches of shape (..., 96, 96, 3), got {images.shape}")
    if scale < 1 or width < 0:
        raise ValueError(f"scale must be >= 1 and width >= 0, got scale={scale}, width={width}")
    out = images.repeat(scale, axis=-3).repeat(scale, axis=-2) if scale > 1 else images.copy()
    if width:
        lo, hi = CENTER_START * scale, (CENTER_START + CENTER_SIZE) * scale
        ring = np.zeros(out.shape[-3:-1], dtype=bool)
        ring[lo:hi, lo:hi] = True
        ring[lo + width : hi - width, lo + width : hi - width] = False
        out[..., ring, :] = np.asarray(colour, dtype=np.uint8)
    return out


def class_balance(labels: np.ndarray) -> dict[str, int]:
    """Patches by label, from the label array alone (no image is read)."""
    labels = np.asarray(labels)
    counts = {"patches": int(labels.size)}
    counts.update({name: int((labels == value).sum()) for value, name in LABEL_NAMES.items()})
    return counts


def sample_by_class(labels: np.ndarray, per_class: int, *, seed: int = 0) -> dict[int, np.ndarray]:
    """Up to `per_class` random indices of each label present, sorted (sorted reads are fastest)."""
    rng = np.random.default_rng(seed)
    out: dict[int, np.ndarray] = {}
    for value in sorted(set(np.unique(labels).tolist())):
        members = np.flatnonzero(labels == value)
        take = min(per_class, members.size)
        out[int(value)] = np.sort(rng.choice(members, size=take, replace=False))
    return out


def _level_percentiles(counts: np.ndarray, qs: Sequence[float]) -> list[float]:
    """Percentiles of integer levels given their counts (`counts[v]`: pixels of value v), equal to
    `np.percentile` on the values themselves (linear interpolation between neighbouring order statistics)."""
    cumulative = np.cumsum(counts)
    out = []
    for q in qs:
        position = (cumulative[-1] - 1) * q / 100
        low, high = np.searchsorted(cumulative, [np.floor(position), np.ceil(position)], side="right")
        out.append(float(low + (high - low) * (position - np.floor(position))))
    return out


def colour_statistics(dataset: PatchDataset, *, per_class: int = 256, seed: int = 0, bins: int = 32) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-class colour of a split, measured on a random sample of at most `per_class` patches per label.

    Returns (summary, histograms): summary has one row per class and channel with the mean, standard
    deviation and 5th/50th/95th percentiles of the pixel values (0-255) and the patches sampled;
    histograms has the share of pixels per intensity bin, per class and channel. Pixels are 8-bit, so
    every figure comes exactly from the count of each of the 256 levels (a pass over the pixels, where
    sorting 2.4 million values per channel for the percentiles and histogram took half a second)."""
    if 256 % bins:
        raise ValueError(f"bins must divide the 256 pixel levels, got {bins}")
    summary_rows, hist_rows = [], []
    levels = np.arange(256, dtype=np.float64)
    for value, indices in sample_by_class(dataset.labels, per_class, seed=seed).items():
        pixels = dataset.read_pixels(indices).reshape(-1, 3)
        name = LABEL_NAMES[value]
        for c, channel in enumerate(CHANNELS):
            counts = np.bincount(pixels[:, c], minlength=256)
            n = max(1, int(counts.sum()))
            mean = float(counts @ levels / n)
            std = float(np.sqrt(counts @ (levels - mean) ** 2 / n))
            p5, p50, p95 = _level_percentiles(counts, (5, 50, 95)) if counts.any() else (np.nan,) * 3
            summary_rows.append({"class": name, "channel": channel, "mean": mean, "std": std,
                                 "p5": p5, "median": p50, "p95": p95, "patches": int(indices.size)})
            share = counts.reshape(bins, -1).sum(axis=1) / n
            hist_rows += [{"class": name, "channel": channel, "intensity": float(b * 256 // bins), "share": float(share[b])}
                          for b in range(bins)]
    return pd.DataFrame(summary_rows), pd.DataFrame(hist_rows)


OUTCOMES = {
    "false_positive": "false positives (normal patches called tumour)",
    "false_negative": "false negatives (tumour patches called normal)",
    "true_positive": "true positives (tumour patches called tumour)",
    "true_negative": "true negatives (normal patches called normal)",
}


def _check_predictions(predictions: pd.DataFrame, threshold: float) -> None:
    check_threshold(threshold)
    missing = {"label", "probability"} - set(predictions.columns)
    if missing:
        raise ValueError(f"predictions lack column(s) {', '.join(sorted(missing))}")


ORDERS = {
    "confidence": "most confident first",
    "uncertainty": "most uncertain first (spread of the 8 TTA views)",
}


def outcome_examples(predictions: pd.DataFrame, threshold: float, outcome: str, k: int | None = None, *,
                     order: str = "confidence") -> pd.DataFrame:
    """The rows of a predictions frame (`label`, `probability`, and anything else such as `index` and
    `id`) with one `outcome` of `OUTCOMES` at `threshold` (called tumour when probability >= threshold),
    in `order` (`ORDERS`): "confidence", the most confident first (highest probability for a tumour call,
    lowest for a normal call), or "uncertainty", the largest TTA uncertainty first (the frame needs an
    `uncertainty` column). At most `k` rows (None: all)."""
    _check_predictions(predictions, threshold)
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; valid outcomes: {', '.join(OUTCOMES)}")
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; valid orders: {', '.join(ORDERS)}")
    if order == "uncertainty" and "uncertainty" not in predictions.columns:
        raise ValueError("these predictions carry no uncertainty (scored with one pass); score the split with TTA")
    called_tumour = outcome in ("false_positive", "true_positive")
    truly_tumour = outcome in ("false_negative", "true_positive")
    called = is_tumour(predictions["probability"].to_numpy(), threshold)
    rows = predictions[(predictions["label"] == int(truly_tumour)) & (called if called_tumour else ~called)]
    if order == "uncertainty":
        rows = rows.sort_values("uncertainty", ascending=False, kind="stable", na_position="last")
    else:
        rows = rows.sort_values("probability", ascending=not called_tumour, kind="stable")
    return rows if k is None else rows.head(k)


def outcome_of(label: int, probability: float, threshold: float) -> str | None:
    """The `OUTCOMES` key of one patch at `threshold`; None for an unlabelled patch."""
    if label not in (0, 1):
        return None
    called_tumour = bool(is_tumour(probability, threshold))
    return ("true_" if called_tumour == bool(label) else "false_") + ("positive" if called_tumour else "negative")


def outcome_counts(predictions: pd.DataFrame, threshold: float) -> dict[str, int]:
    """How many patches of a predictions frame have each outcome of `OUTCOMES` at `threshold`."""
    return {outcome: len(outcome_examples(predictions, threshold, outcome)) for outcome in OUTCOMES}


def confident_errors(predictions: pd.DataFrame, threshold: float, k: int = 8, *,
                     order: str = "confidence") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The `k` most confident mistakes at `threshold` in a predictions frame (`label`, `probability`,
    and anything else such as `index` and `id`): false positives (normal patches called tumour) with the
    highest probabilities first, false negatives (tumour patches called normal) with the lowest first.
    With `order="uncertainty"`, the mistakes with the largest TTA uncertainty first instead."""
    return (outcome_examples(predictions, threshold, "false_positive", k, order=order),
            outcome_examples(predictions, threshold, "false_negative", k, order=order))


def random_examples(predictions: pd.DataFrame, k: int, *, seed: int = 0) -> pd.DataFrame:
    """`k` rows of a predictions frame drawn at random without replacement (all of them when fewer)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return predictions.sample(n=min(k, len(predictions)), random_state=seed)


MIN_ID_PREFIX = 6
ID_LENGTH = 40  # a SHA-1 in hex


def find_patch(predictions: pd.DataFrame, query: str) -> pd.Series:
    """The row of a predictions frame (`id`, `index`) a user asked for: a patch number (`index`, as
    the dashboard shows it, "123" or "#123"), a patch id (the SHA-1 of its pixels, as Kaggle names
    files), or the first characters of an id (at least `MIN_ID_PREFIX`, matching one patch only; a
    prefix of digits only reads as a number)."""
    text = str(query).strip().lower().removeprefix("#")
    if not text:
        raise ValueError("give a patch number (such as 123) or a patch id")
    if text.isdigit() and len(text) != ID_LENGTH:  # digits only: a number (an id prefix needs a letter)
        rows = predictions[predictions["index"] == int(text)]
        if rows.empty:
            raise ValueError(f"no patch number {text} here; numbers run from {int(predictions['index'].min())} "
                             f"to {int(predictions['index'].max())}")
        return rows.iloc[0]
    ids = predictions["id"].astype(str).str.lower()
    if len(text) < MIN_ID_PREFIX:
        raise ValueError(f"{query!r} is too short for a patch id; give at least {MIN_ID_PREFIX} of its characters, "
                         "or a patch number")
    rows = predictions[ids == text] if len(text) == ID_LENGTH else predictions[ids.str.startswith(text)]
    if rows.empty:
        raise ValueError(f"no patch has an id starting with {text!r}")
    if len(rows) > 1 and rows["id"].nunique() > 1:
        raise ValueError(f"{len(rows)} patches have ids starting with {text!r}; give more characters")
    return rows.iloc[0]
