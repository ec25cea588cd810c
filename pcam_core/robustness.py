"""Robustness: a run scored on one split under graded shifts (`pcam_core.shifts`), and a report card that
says where the model stops being trustworthy.

The patches are decoded once; each shift at each strength is applied to the uint8 pixels in numpy and
scored in batches (`inference.predict_pixels`, the eval normalisation inside, as for plain scoring), so
strength 0 gives exactly the probabilities `pcam evaluate` gives (same TTA setting). For every shift and
strength: ROC-AUC, ECE, Brier score, accuracy at the run's threshold, mean probability, n, and the drop
of ROC-AUC from strength 0.

Each drop comes with its 95% interval from the paired DeLong test (the shifted and the unshifted scores
are of the same patches, so their AUCs are correlated and the paired interval is much narrower than
two separate ones). A shift stops being trustworthy at the first strength, going away from 0 in each
direction, where the ROC-AUC falls more than `AUC_DROP` below the unshifted one and that drop is larger
than its own error (its interval excludes no drop), or where the calibration error rises above
`ECE_LIMIT`. A drop past `AUC_DROP` whose interval still includes 0 is not judged a failure; the card
says that it is within its error (more patches would tell). The files (`robustness/<split>.csv` and `.json`) are written atomically into the run folder
(`RunDir.robustness_files`). The maths and the grades: docs/robustness.md.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .data.common import DataError
from .fileio import atomic_write_json, atomic_write_with
from .inference import predict_pixels
from .metrics import binary_metrics
from .scoring_options import ScoringOptions
from .stats import paired_auc_test, small_sample_warning
from .data.loader import dataset_for_split
from .loading import load_run_model
from .runs import resolve_run
from .runs import RunDir
from .runs.folder import robustness_files
from .shifts import Shift, resolve_shifts

log = logging.getLogger(__name__)

AUC_DROP = 0.05  # a shift is no longer trusted once the ROC-AUC is this far below the unshifted one...
ECE_LIMIT = 0.1  # ...or once the expected calibration error is above this
COLUMNS = ["shift", "title", "strength", "level", "unit", "n", "roc_auc", "auc_drop", "auc_drop_low", "auc_drop_high", "ece",
           "brier", "accuracy", "mean_probability", "threshold"]


def sample_indices(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """All indices, or a seeded sample of `limit` of them stratified by label (sorted)."""
    n = len(labels)
    if limit is None or limit >= n:
        return np.arange(n)
    if limit < 2:
        raise ValueError(f"--limit {limit}: need at least 2 patches")
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels)
    stratify = labels if (counts[counts > 0] >= 2).all() and np.count_nonzero(counts) > 1 else None
    _, chosen = train_test_split(np.arange(n), test_size=limit, stratify=stratify, random_state=seed)
    return np.sort(chosen)


def _figures(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, Any]:
    m = binary_metrics(labels, probs, threshold)
    return {"n": m["n"], "roc_auc": m["roc_auc"], "ece": m["ece"], "brier": m["brier"], "accuracy": m["accuracy"],
            "mean_probability": float(np.mean(probs)), "threshold": float(threshold)}


def score_shifts(
    model: Any,
    pixels: np.ndarray,
    labels: np.ndarray,
    shifts: list[Shift],
    *,
    threshold: float,
    tta: bool = False,
    batch_size: int = 256,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> pd.DataFrame:
    """One row (`COLUMNS`) per shift and strength, strength 0 (the unshifted patches, scored once) included
    in each shift's rows; `auc_drop_low`/`_high` are the 95% interval of the drop (paired DeLong; None where
    a class has fewer than 2 patches). `progress` gets each row as it is done."""
    from .shifts import apply_shift

    base_probs = predict_pixels(model, pixels, tta=tta, batch_size=batch_size)
    baseline = _figures(labels, base_probs, threshold)
    rows = []
    for shift in shifts:
        for strength in shift.strengths:
            probs = base_probs if strength == 0 else predict_pixels(model, apply_shift(pixels, shift.name, strength),
                                                                    tta=tta, batch_size=batch_size)
            figures = baseline if strength == 0 else _figures(labels, probs, threshold)
            drop = None if None in (figures["roc_auc"], baseline["roc_auc"]) else baseline["roc_auc"] - figures["roc_auc"]
            row = {"shift": shift.name, "title": shift.title, "strength": strength,
                   "level": shift.grades.get(strength, _identity_level(shift)), "unit": shift.unit, **figures,
                   "auc_drop": drop, **_drop_interval(labels, base_probs, probs, drop)}
            rows.append(row)
            if progress:
                progress(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def _drop_interval(labels: np.ndarray, base: np.ndarray, shifted: np.ndarray, drop: float | None) -> dict[str, float | None]:
    """The 95% interval of the ROC-AUC drop (unshifted minus shifted) by the paired DeLong test."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=2)
    if drop is None or counts.min() < 2:
        return {"auc_drop_low": None, "auc_drop_high": None}
    test = paired_auc_test(labels, base, shifted)
    return {"auc_drop_low": test["low"], "auc_drop_high": test["high"]}


def _identity_level(shift: Shift) -> float:
    """The level that leaves patches unchanged: a factor of 1, an offset or share of 0, no blur; JPEG has none."""
    return {"factor": 1.0, "quality": 100.0}.get(shift.unit, 0.0)


def _drop_words(row: pd.Series) -> str:
    low, high = row.get("auc_drop_low"), row.get("auc_drop_high")
    return "" if low is None or pd.isna(low) else f" (95% interval of the drop {low:.3f} to {high:.3f})"


def _auc_past_limit(row: pd.Series, base_auc: float | None) -> bool:
    return base_auc is not None and row["roc_auc"] is not None and not pd.isna(row["roc_auc"]) and row["auc_drop"] > AUC_DROP


def _within_error(row: pd.Series) -> bool:
    """Whether the drop's interval includes no drop at all (an unknown interval: judged on the drop alone)."""
    low = row.get("auc_drop_low")
    return low is not None and not pd.isna(low) and low <= 0


def _failure(row: pd.Series, base_auc: float | None, *, judge_ece: bool) -> str | None:
    """Why a row is not trustworthy, or None."""
    if _auc_past_limit(row, base_auc) and not _within_error(row):
        return f"ROC-AUC {row['roc_auc']:.3f}, {row['auc_drop']:.3f} below the unshifted {base_auc:.3f}{_drop_words(row)}"
    if judge_ece and row["ece"] > ECE_LIMIT:
        return f"calibration error {row['ece']:.3f}, above {ECE_LIMIT}"
    return None


def report_card(table: pd.DataFrame, shifts: list[Shift]) -> dict[str, Any]:
    """Per shift and direction, the strongest strength still trustworthy and the first that is not,
    with a sentence a pathologist reads. See the module docstring for the rule."""
    base = table[table["strength"] == 0].iloc[0]
    base_auc = None if pd.isna(base["roc_auc"]) else float(base["roc_auc"])
    judge_ece = bool(base["ece"] <= ECE_LIMIT)
    notes = []
    if base_auc is None:
        notes.append("The patches hold one class only, so the ROC-AUC is undefined; only calibration is judged.")
    if not judge_ece:
        notes.append(f"Even unshifted, the calibration error is {base['ece']:.3f} (above {ECE_LIMIT}): the probabilities "
                     "are not calibrated on these patches, so the card judges the ROC-AUC only.")
    entries = []
    for shift in shifts:
        rows = table[table["shift"] == shift.name].set_index("strength")
        for sign in (-1, 1):
            strengths = sorted((s for s in shift.grades if s * sign > 0), key=abs)
            if not strengths:
                continue
            last_ok, failed, reason, unsure = 0, None, None, None
            for strength in strengths:
                row = rows.loc[strength]
                reason = _failure(row, base_auc, judge_ece=judge_ece)
                if reason:
                    failed = strength
                    break
                if unsure is None and _auc_past_limit(row, base_auc):
                    unsure = (f"the ROC-AUC drop of {row['auc_drop']:.3f} when {shift.words(shift.grades[strength])} is "
                              f"within its own error{_drop_words(row)}; more patches would tell")
                last_ok = strength
            entries.append(_card_entry(shift, sign, strengths[-1], last_ok, failed, reason, unsure))
    return {"auc_drop": AUC_DROP, "ece_limit": ECE_LIMIT, "judges_ece": judge_ece, "notes": notes, "entries": entries}


def _card_entry(shift: Shift, sign: int, strongest: int, last_ok: int, failed: int | None, reason: str | None,
                unsure: str | None = None) -> dict[str, Any]:
    words = shift.words
    if failed is None:
        sentence = f"Stays trustworthy up to the strongest shift tried: {words(shift.grades[strongest])}."
    else:
        sentence = (f"Stops being trustworthy {'already ' if last_ok == 0 else ''}when {words(shift.grades[failed])} "
                    f"({reason})")
        sentence += f". Still trustworthy when {words(shift.grades[last_ok])}." if last_ok else "."
    if unsure:
        sentence += f" Note: {unsure}."
    return {"shift": shift.name, "title": shift.title, "direction": sign, "trustworthy_up_to": last_ok,
            "trustworthy_level": shift.grades.get(last_ok, _identity_level(shift)), "fails_at": failed,
            "fails_level": shift.grades[failed] if failed is not None else None, "reason": reason, "within_error": unsure,
            "sentence": sentence}


def run_robustness(
    run_dir: str | Path,
    data: str | Path,
    split: str,
    options: ScoringOptions = ScoringOptions(),
    *,
    out_dir: str | Path | None = None,
    shifts: str | list[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    on_start: Callable[[int], None] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Score `split` of `data` with the run's model under every shift of `shifts` (default: all) and write
    the table (CSV) and the report (JSON: the table, the card and what produced them) into the run folder's
    `robustness/` (or into `out_dir`, which the bundled model, having no run folder, needs).

    `options`: checkpoint, device, TTA, batch size, and the threshold of the accuracy (None: the run's own,
    the one its checkpoint records, else 0.5). `limit`: a seeded sample of that many patches, stratified
    by label. `on_start` gets the number of patches scored per condition times the number of conditions."""
    chosen = resolve_shifts(shifts)
    ref = resolve_run(run_dir)
    if out_dir is None and ref.bundled:
        raise ValueError("the bundled model has no run folder to keep its robustness report in; pass --out DIR")
    csv_path, json_path = robustness_files(Path(out_dir) if out_dir is not None else RunDir(run_dir).robustness, split)
    started = time.time()
    loaded = load_run_model(ref, checkpoint=options.checkpoint, device=options.device)
    model, config, info = loaded.model, loaded.config, loaded.info
    dataset = dataset_for_split(data, split, config)
    if not dataset.has_labels:
        raise DataError(f"{dataset.describe()} has no labels; robustness needs a labelled split")
    indices = sample_indices(dataset.labels, limit, seed)
    threshold = options.threshold_or(loaded.threshold)
    if on_start:
        on_start(len(indices) * (1 + sum(len(s.grades) for s in chosen)))
    pixels = dataset.read_pixels(indices)  # decoded once; every shift works on these
    labels = dataset.labels[indices]
    table = score_shifts(model, pixels, labels, chosen, threshold=threshold, tta=options.tta, batch_size=options.batch_size,
                         progress=progress)
    report = {
        "run": str(run_dir), "data": str(data), "split": split, "dataset": dataset.describe(), "n": int(len(indices)),
        "limit": limit, "seed": seed, "tta": options.tta, "threshold": threshold, "checkpoint": options.checkpoint,
        "checkpoint_epoch": info.get("epoch"), "model": config.model.name,
        "synthetic_data": bool(getattr(dataset, "synthetic", False)) or bool(info.get("synthetic_data")),
        "shifts": [{"name": s.name, "title": s.title, "unit": s.unit, "grades": {str(k): v for k, v in s.grades.items()}}
                   for s in chosen],
        "card": report_card(table, chosen),
        "table": table.astype(object).where(table.notna(), None).to_dict(orient="records"),
        "warnings": [w for w in (small_sample_warning(len(indices)),) if w],
        "seconds": round(time.time() - started, 1),
        "csv": str(csv_path),
    }
    frame = table.to_csv(index=False).encode()
    atomic_write_with(csv_path, lambda h: h.write(frame))
    atomic_write_json(json_path, report)
    report["json"] = str(json_path)
    return report


__all__ = ["AUC_DROP", "COLUMNS", "ECE_LIMIT", "report_card", "run_robustness", "sample_indices", "score_shifts"]
