"""Prediction and evaluation with a trained run: Kaggle submissions, metrics files, shards.

A submission is Kaggle's format: header ``id,label``, one row per image, ``label`` the probability of
tumour tissue in the central 32x32 region. Files are written only when everything succeeded, atomically.

Test-time augmentation (the mean probability over the 8 symmetries of the square) is part of the
recipe and on by default (`scoring_options.DEFAULT_TTA`): on held-out real patches it adds about
0.01 ROC-AUC for 8 forward passes per patch; ``ScoringOptions(tta=False)`` (``--no-tta``) for one pass.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .data.base import PatchDataset
from .data.common import DataError, id_clashes, patch_id
from .data.kaggle import ImageFiles
from .data.loader import dataset_for_split, detect_format, make_loader, open_dataset
from .decision import DEFAULT_THRESHOLD, REFER, calls as decision_calls, check_threshold
from .devices import resolve_device  # noqa: F401 - pages/train.py imports it from here
from .loading import load_run_model
from .scope import ScopeModel
from .sharding import shard_indices
from .fileio import atomic_write_json, atomic_write_with, output_file
from .inference import Predictions, predict_loader, predict_pixels, predict_pixels_in_scope
from .metrics import THRESHOLD_METHODS, binary_metrics, choose_threshold, pr_points, reliability_points, roc_points
from .calibration import Calibration, calibration_report, run_triage, validation_predictions
from .config import ExperimentConfig
from .scoring_options import ScoringOptions
from .stats import metric_intervals, small_sample_warning
from .triage import DEFAULT_FPR, TriageThresholds, triage_calls
from .runs import predictions_beside
from .uploads import read_uploads

log = logging.getLogger(__name__)


@dataclass
class PredictionResult:
    predictions: Predictions
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id or path, reason)
    converted: dict[str, str] = field(default_factory=dict)  # id -> how the image was made 8-bit RGB (grayscale, ...)


def predict_dataset(
    model: nn.Module,
    dataset: PatchDataset,
    *,
    device: torch.device | str = "cpu",
    tta: bool = False,
    batch_size: int = 256,
    num_workers: int = -1,
    skip_bad: bool = False,
    progress: Callable[[int], None] | None = None,
    scope: ScopeModel | None = None,
) -> PredictionResult:
    """Probabilities for every readable patch of `dataset`.

    Datasets opened with `skip_bad=True` report unreadable images per item instead of raising inside a
    loader worker; here, without `skip_bad`, the first one raises a `DataError` naming the file (in this
    process, so the message stays clean), and with it they are listed in `skipped`. With `scope` (the run's
    guard), every patch's out-of-scope distance too (`Predictions.ood_score`)."""
    device = torch.device(device)
    loader = make_loader(dataset, batch_size, shuffle=False, num_workers=num_workers, ids=True)
    skipped: list[tuple[str, str]] = []
    converted: dict[str, str] = {}

    def good_batches():
        for batch in loader:
            errors = batch.get("error") or [None] * len(batch["id"])
            converted.update((pid, note) for pid, note, error in zip(batch["id"], batch.get("note") or [], errors)
                             if note and not error)
            bad = [i for i, e in enumerate(errors) if e]
            if bad and not skip_bad:
                raise DataError(errors[bad[0]] + (f" (and {len(bad) - 1} more bad file(s) in this batch)" if len(bad) > 1 else ""))
            if bad:
                skipped.extend((batch["id"][i], errors[i]) for i in bad)
                keep = [i for i, e in enumerate(errors) if not e]
                if not keep:
                    continue
                keep_t = torch.tensor(keep)
                batch = {
                    "image": batch["image"][keep_t], "label": batch["label"][keep_t], "index": batch["index"][keep_t],
                    "id": [batch["id"][i] for i in keep],
                }
            yield batch

    preds = predict_loader(model, good_batches(), device, tta=tta, progress=progress, scope=scope)
    return PredictionResult(preds, skipped, converted)


def submission_csv(ids: list[str], probs: np.ndarray) -> bytes:
    """A Kaggle submission as bytes: header ``id,label``, label the tumour probability (6 decimals)."""
    frame = pd.DataFrame({"id": ids, "label": np.round(np.asarray(probs, dtype=np.float64), 6)})
    return frame.to_csv(index=False).encode()


def write_submission(path: str | Path, ids: list[str], probs: np.ndarray) -> None:
    data = submission_csv(ids, probs)
    atomic_write_with(path, lambda h: h.write(data))


def patch_results(ids: Sequence[str], probs: np.ndarray, uncertainty: np.ndarray | None, *, threshold: float = DEFAULT_THRESHOLD,
                  triage: TriageThresholds | None = None, calibration: Calibration | None = None,
                  ood_score: np.ndarray | None = None, scope: ScopeModel | None = None) -> pd.DataFrame:
    """One row per patch: id, probability, probability_calibrated (with a fitted temperature), uncertainty
    (the standard deviation of the 8 TTA views' probabilities; empty without TTA), with the run's guard
    `ood_score` and `in_scope` (`pcam_core.scope`), and the call: with `triage`, "normal", "refer" or
    "tumour" (`triage.triage_calls`, with the two thresholds in the file beside it), else "tumour" or
    "normal" at `threshold`; a patch out of scope is "refer" whatever its probability. The calls use the
    raw probability (a temperature keeps the order of patches, so the triage's calls are the same on
    calibrated ones)."""
    probs = np.asarray(probs, dtype=np.float64)
    frame = pd.DataFrame({"id": list(ids), "probability": probs})
    if calibration is not None:
        frame["probability_calibrated"] = calibration.apply(probs)
    frame["uncertainty"] = np.nan if uncertainty is None else np.asarray(uncertainty, dtype=np.float64)
    if triage is not None:
        frame["call"] = triage_calls(probs, triage)
        frame["target_sensitivity"] = triage.target_sensitivity
        frame["normal_below"] = triage.normal_below
        frame["tumour_above"] = triage.tumour_above
    else:
        frame["call"] = decision_calls(probs, threshold)
        frame["threshold"] = float(threshold)
    if scope is not None and ood_score is not None:
        inside = scope.in_scope(ood_score)
        frame["ood_score"] = np.asarray(ood_score, dtype=np.float64)
        frame["in_scope"] = inside
        frame["call"] = np.where(inside, frame["call"], REFER)
    return frame


def predict_submission(
    run_dir: str | Path,
    input_path: str | Path,
    out: str | Path,
    options: ScoringOptions = ScoringOptions(),
    *,
    split: str | None = None,
    skip_bad: bool = False,
    shard: tuple[int, int] | None = None,
    results: str | Path | None = None,
    triage: float | None = None,
    triage_fpr: float = DEFAULT_FPR,
    calibrated: bool = False,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Predict every image of `input_path` (a folder of images, a Kaggle folder's test split, or an
    HDF5 split) and write a Kaggle submission CSV to `out`.

    `input_path`: a folder of images, one image file, a Kaggle folder's test split, or an HDF5 split.
    Grayscale, RGBA and 16-bit images are converted to 8-bit RGB as the Predict page and the API convert
    them (`data.common.decode_image`); the summary's `converted` says which and how (and the results
    file's `notes` column). Without `skip_bad` the first unreadable image stops the run before anything is
    written. With it, bad images are left out of the CSV and listed in the returned summary (and in
    `<out>.skipped.csv`).

    `options`: checkpoint, device, TTA, batch size, workers, and the threshold of the results file's calls
    (None: the run's own). `results`: also write a results CSV (`patch_results`: probability, calibrated
    probability when the run has a temperature, TTA uncertainty, call, notes). `triage` (a target
    sensitivity such as 0.98): the calls are the split-conformal triage's (normal / refer / tumour,
    `triage_fpr` the false-positive rate allowed), fitted on the run's validation predictions.
    `calibrated`: the submission's label is the calibrated probability (the run needs a fitted
    temperature, `pcam calibrate`).
    """
    if triage is not None and results is None:
        raise ValueError("--triage writes its calls into the results file: give --results too")
    out = output_file(out, "--out", "submission.csv")
    results = output_file(results, "--results", "results.csv") if results is not None else None
    input_path = existing_input(input_path)
    # triage and temperature of the scoring mode applied (fitted on TTA predictions where the run has them)
    thresholds = run_triage(run_dir, triage, triage_fpr, tta=options.tta) if triage is not None else None  # fails before any scoring
    loaded = load_run_model(run_dir, checkpoint=options.checkpoint, device=options.device)
    model, config, info, calibration = loaded.model, loaded.config, loaded.info, loaded.calibration_for(tta=options.tta)
    if calibrated and calibration is None:
        raise FileNotFoundError(f"run {run_dir} has no fitted temperature; fit one with `pcam calibrate --run {run_dir}`")
    fmt = detect_format(input_path)
    default_split = "test" if fmt in ("h5", "kaggle") and not input_path.is_file() else None
    dataset = open_dataset(input_path, split or default_split, convert=True, skip_bad=True)  # errors come back per item
    # two files of one id (a.tif and a.jpg) would be two rows of one id in the submission, which Kaggle refuses
    clashes = id_clashes(dataset.paths) if isinstance(dataset, ImageFiles) else {}
    if clashes and not skip_bad:
        first = dataset.paths[min(clashes)].name
        raise DataError(f"{len(clashes)} file(s) share their id with another: {first}: {clashes[min(clashes)]}. Rename "
                        "or remove them, or give --skip-bad to score the first file of each id and list the others")
    kept = np.array([i for i in range(len(dataset)) if i not in clashes], dtype=np.int64)
    indices = kept[shard_indices(len(kept), shard)]
    subset = dataset.subset(indices) if shard or clashes else dataset
    if on_start:
        on_start(len(subset))
    try:
        result = predict_dataset(model, subset, device=loaded.device, tta=options.tta, batch_size=options.batch_size,
                                 num_workers=options.workers, skip_bad=skip_bad, progress=progress,
                                 scope=loaded.scope if results is not None else None)
    except DataError as err:  # the first bad file stopped it: say how to go on
        if skip_bad:
            raise
        raise DataError(f"{err}; nothing was written (--skip-bad scores the rest and lists every bad file)") from err
    preds, repeats = result.predictions.one_per_id()
    result.skipped.extend((result.predictions.ids[i], SAME_ID_WRITTEN_ONCE) for i in repeats)
    if shard is None or shard[0] == 0:  # left out of every shard, listed by the first
        result.skipped.extend((dataset.paths[i].name, reason) for i, reason in clashes.items())
    if not len(preds):
        reasons = "; ".join(reason for _, reason in result.skipped[:3])
        raise DataError(f"none of the {len(subset)} image(s) could be read, so nothing was written ({reasons})")
    out = Path(out)
    write_submission(out, preds.ids, calibration.apply(preds.probs) if calibrated else preds.probs)
    threshold = options.threshold_or(loaded.threshold)
    summary_extra: dict[str, Any] = {"calibrated": calibrated, "temperature": calibration.temperature if calibration else None,
                                     "bias": calibration.bias if calibration else None,
                                     "calibration": calibration.describe if calibration else None,
                                     "calibration_warning": calibration.warning if calibration else None, "threshold": threshold}
    if results is not None:
        frame = patch_results(preds.ids, preds.probs, preds.uncertainty, threshold=threshold,
                              triage=thresholds, calibration=calibration, ood_score=preds.ood_score, scope=loaded.scope)
        frame["notes"] = [result.converted.get(pid, "") for pid in preds.ids]
        atomic_write_with(results, lambda h: h.write(frame.to_csv(index=False).encode()))
        summary_extra["results"] = str(results)
        if "in_scope" in frame:
            summary_extra["out_of_scope"] = int((~frame["in_scope"]).sum())
        summary_extra["scope_checked"] = loaded.scope is not None
        if thresholds is not None:
            calls = frame["call"].value_counts()
            summary_extra["triage"] = {**thresholds.to_dict(), "guarantee": thresholds.guarantee(),
                                       "referral_rate": float(calls.get("refer", 0) / len(frame)),
                                       "calls": {c: int(calls.get(c, 0)) for c in ("normal", "refer", "tumour")}}
    skipped_path = None
    if result.skipped:
        skipped_path = out.with_name(out.name + ".skipped.csv")
        frame = pd.DataFrame(result.skipped, columns=["id", "reason"])
        atomic_write_with(skipped_path, lambda h: h.write(frame.to_csv(index=False).encode()))
    return {
        "out": str(out), "rows": len(preds), "skipped": result.skipped, "skipped_file": str(skipped_path) if skipped_path else None,
        "converted": sorted(result.converted.items()),
        "model": config.model.name, "checkpoint_epoch": info.get("epoch"), "tta": options.tta, "dataset": dataset.describe(),
        "shard": f"{shard[0]}/{shard[1]}" if shard else None, "synthetic_model": bool(info.get("synthetic_data")),
        **summary_extra,
    }


SAME_ID_WRITTEN_ONCE = ("the same id as an earlier patch (in PCam HDF5 data, the same pixels): scored, its row written once, "
                        "as a submission has one row per id")


def existing_input(path: str | Path) -> Path:
    """`path` as a Path, or a FileNotFoundError saying it does not exist (an input is read, never created)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path} does not exist (give a folder of images, an image file, "
                                "a Kaggle folder or PCam HDF5 data)")
    return path


MERGE_SAME_ID_TOLERANCE = 1e-4  # probabilities of one id in two shards: the same, to the rounding of other batches


def merge_submissions(parts: list[str | Path], out: str | Path) -> int:
    """Concatenate shard CSVs into one submission, one row per id (an id in two shards, with one probability, is
    written once); refuses an id with two probabilities, and malformed files."""
    frames, seen = [], {}
    for part in parts:
        part = Path(part)
        if not part.exists():
            raise FileNotFoundError(f"shard file not found: {part}")
        content = part.read_bytes()  # read once: compared by its digest, parsed from memory
        digest = hashlib.sha256(content).hexdigest()
        if digest in seen:  # its ids would pass as patches of one id in two shards, and a shard would be missing
            raise DataError(f"{part} is the same shard as {seen[digest]} (given twice?); give each shard's file once")
        seen[digest] = part
        frame = pd.read_csv(io.BytesIO(content), dtype={"id": str})
        if list(frame.columns) != ["id", "label"]:
            raise DataError(f"{part}: expected the header id,label; found {','.join(map(str, frame.columns))}")
        frames.append(frame)
    merged = pd.concat(frames, ignore_index=True)
    dup = merged["id"].duplicated(keep=False)
    if dup.any():
        # one id in two shards: identical patches (an HDF5 id is a hash of the pixels) get one probability, to float
        # rounding, and one row; two probabilities of one id mean the shards scored different data
        spread = merged[dup].groupby("id")["label"].agg(lambda p: p.max() - p.min())
        if (spread > MERGE_SAME_ID_TOLERANCE).any():
            raise DataError(f"{int((spread > MERGE_SAME_ID_TOLERANCE).sum())} id(s) have different probabilities in different "
                            f"shards (e.g. {spread.idxmax()}); were the shards scored on different data or models?")
        merged = merged.drop_duplicates("id")
    atomic_write_with(out, lambda h: h.write(merged.to_csv(index=False).encode()))
    return len(merged)


def evaluate_run(
    run_dir: str | Path,
    data: str | Path,
    split: str,
    out: str | Path,
    options: ScoringOptions = ScoringOptions(),
    *,
    threshold_method: str = "fixed",
    target: float | None = None,
    on_start: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Score a run on a labelled split: writes `out` (metrics JSON with curves, 95% intervals of the headline
    metrics (`stats.metric_intervals`), and the calibration before and after the run's temperature when it has
    one) and, beside it, `<stem>_predictions.csv` (id,label,probability,index, and uncertainty with TTA).

    The threshold: `threshold_method` "fixed" is `options.threshold`, or the run's own threshold when that is
    None (as every other face calls); "youden" and "sensitivity" (with `target`, the sensitivity to reach)
    choose it on the run's validation predictions, never on the data being scored. Under `stats.SMALL_SAMPLE`
    patches the report's `warnings` say that its intervals are wide.
    """
    if threshold_method not in THRESHOLD_METHODS:
        raise ValueError(f"unknown threshold method {threshold_method!r}; valid: {', '.join(THRESHOLD_METHODS)}")
    if threshold_method == "sensitivity" and target is None:
        raise ValueError("threshold method 'sensitivity' needs its target sensitivity (e.g. 0.95)")
    if threshold_method != "sensitivity" and target is not None:
        raise ValueError(f"a target ({target}) is only used by the threshold method 'sensitivity', not {threshold_method!r}")
    if threshold_method != "fixed" and options.threshold is not None:
        raise ValueError(f"a fixed threshold ({options.threshold}) and the threshold method {threshold_method!r} exclude each other")
    out = output_file(out, "--out", "metrics.json")
    loaded = load_run_model(run_dir, checkpoint=options.checkpoint, device=options.device)
    model, config, info, calibration = loaded.model, loaded.config, loaded.info, loaded.calibration_for(tta=options.tta)
    if loaded.is_ensemble and config.data.folds and split in ("valid", "val"):
        raise ValueError(f"{run_dir} is an ensemble of cross-validation folds: its members trained on every patch of the "
                         "cross-validated data, so it has no validation split; its out-of-fold figures are in cv.json "
                         "(`pcam train --folds`), or evaluate it on a split none of them trained on (test)")
    dataset = dataset_for_split(data, split, config)
    if not dataset.has_labels:
        raise DataError(f"{dataset.describe()} has no labels; use `pcam predict` for unlabelled data")
    threshold_used = options.threshold_or(loaded.threshold)
    if threshold_method != "fixed":
        valid = validation_predictions(run_dir, tta=options.tta)  # the bundled model's: its held-out patches
        threshold_used = choose_threshold(valid["label"].to_numpy(), valid["probability"].to_numpy(), threshold_method,
                                          value=DEFAULT_THRESHOLD if target is None else check_threshold(target, "target sensitivity"))
    if on_start:
        on_start(len(dataset))
    result = predict_dataset(model, dataset, device=loaded.device, tta=options.tta, batch_size=options.batch_size,
                             num_workers=options.workers, progress=progress)
    preds = result.predictions
    metrics = binary_metrics(preds.labels, preds.probs, threshold_used)
    report = {
        "run": str(Path(run_dir)), "data": str(data), "split": split, "dataset": dataset.describe(), "tta": options.tta,
        "checkpoint": options.checkpoint, "checkpoint_epoch": info.get("epoch"), "model": config.model.name,
        "threshold_method": threshold_method, "threshold_target": target,
        "synthetic_data": bool(getattr(dataset, "synthetic", False)),
        "metrics": metrics,
        "intervals": metric_intervals(preds.labels, preds.probs, threshold_used),
        "interval_level": 0.95,
        "warnings": [w for w in (small_sample_warning(len(preds.labels)), calibration.warning if calibration else None,
                                 trained_on_warning(run_dir, config, loaded.is_ensemble, data, split, preds.ids)) if w],
        # ECE and Brier before and after the run's temperature, with both reliability diagrams (None: no temperature)
        "calibration": calibration_report(preds.labels, preds.probs, calibration) if calibration else None,
        "curves": {
            "roc": roc_points(preds.labels, preds.probs) if metrics["roc_auc"] is not None else None,
            "pr": pr_points(preds.labels, preds.probs) if metrics["pr_auc"] is not None else None,
            "reliability": reliability_points(preds.labels, preds.probs),
        },
    }
    out = Path(out)
    predictions_path = predictions_beside(out)
    frame = preds.to_frame()
    atomic_write_with(predictions_path, lambda h: h.write(frame.to_csv(index=False).encode()))
    report["predictions_file"] = str(predictions_path)
    atomic_write_json(out, report)
    return report


def trained_on_warning(run_dir: str | Path, config: ExperimentConfig, ensemble: bool, data: str | Path, split: str,
                       ids: Sequence[str]) -> str | None:
    """A warning when the patches scored include those the model trained on (QA: `pcam evaluate --split train` said
    nothing, with ROC-AUC 0.756 against 0.633 held out), or None. An ensemble of cross-validation folds (the bundled
    model among them) trained on every patch of its out-of-fold pool, each by all members but one: matched by id. A
    single run trained on the `train` split of its own data, all but its validation patches: matched by the folder."""
    if ensemble and config.data.folds:
        try:
            pool = set(validation_predictions(run_dir)["id"].astype(str))
        except FileNotFoundError:
            return None
        seen = sum(pid in pool for pid in ids)
        return (f"{seen:,} of the {len(ids):,} patches scored were training patches of {config.data.folds - 1} of the "
                f"ensemble's {config.data.folds} members (its cross-validation pool): these figures flatter it; its "
                "out-of-fold figures (cv.json, the model card) are the honest ones") if seen else None
    if split == "train" and config.data.path and Path(config.data.path).resolve() == Path(data).resolve():
        return (f"the train split of {data} holds the patches this run trained on (all but its validation split): "
                "these figures flatter it; judge it on its validation split or on data it never saw")
    return None


@dataclass(frozen=True)
class ScoredPatch:
    """One accepted uploaded file: its pixels as the model saw them, the tumour probability and, with TTA,
    its uncertainty (the standard deviation of the 8 views' probabilities; NaN with one pass)."""

    name: str
    id: str  # the file name without its extension, as Kaggle names patches
    pixel_id: str  # SHA-1 of the pixels; equal to `id` for an unaltered Kaggle patch
    pixels: np.ndarray  # (96, 96, 3) uint8
    probability: float
    notes: tuple[str, ...] = ()
    uncertainty: float = float("nan")
    ood_score: float = float("nan")  # the run's out-of-scope guard's distance (NaN: no guard)
    in_scope: bool | None = None  # None: the run has no guard


@dataclass
class UploadResult:
    scored: list[ScoredPatch] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (file name, why)
    scope: ScopeModel | None = None  # the guard the patches were checked with

    def _frame(self, threshold: float, triage: TriageThresholds | None, calibration: Calibration | None) -> pd.DataFrame:
        frame = patch_results([p.id for p in self.scored], np.array([p.probability for p in self.scored], dtype=np.float64),
                              np.array([p.uncertainty for p in self.scored], dtype=np.float64), threshold=threshold,
                              triage=triage, calibration=calibration, scope=self.scope,
                              ood_score=np.array([p.ood_score for p in self.scored], dtype=np.float64))
        frame.insert(0, "file", [p.name for p in self.scored])
        frame["notes"] = ["; ".join(p.notes) for p in self.scored]
        return frame

    def table(self, threshold: float, *, triage: TriageThresholds | None = None,
              calibration: Calibration | None = None) -> pd.DataFrame:
        """One row per scored file: file, id, probability (and probability_calibrated with a temperature),
        uncertainty, the call (at `threshold`, or the `triage`'s), conversion notes (`patch_results`)."""
        frame = self._frame(threshold, triage, calibration)
        return frame.drop(columns=[c for c in PROVENANCE if c in frame.columns])

    def submission(self) -> bytes:
        """Kaggle's submission format for the scored files (id,label with label the probability)."""
        return submission_csv([p.id for p in self.scored], np.array([p.probability for p in self.scored]))


# the columns of `patch_results` that say how the calls were made (the same for every row)
PROVENANCE = ("threshold", "target_sensitivity", "normal_below", "tumour_above")
# a results file without a temperature or a triage; `probability_calibrated` follows `probability` when the run
# has a temperature, and a triage's target and two thresholds replace `threshold`
REFUSED = "refused"  # the call of a file in the results that could not be scored (its reason in `notes`)
RESULTS_COLUMNS = ["file", "id", "probability", "uncertainty", "call", "threshold", "model", "run", "notes"]
SCOPE_COLUMNS = ["ood_score", "in_scope"]  # after the call, when the run has an out-of-scope guard


def results_table(result: UploadResult, threshold: float, *, model: str, run: str, triage: TriageThresholds | None = None,
                  calibration: Calibration | None = None) -> pd.DataFrame:
    """The results file of a batch of uploads: each scored file with its tumour probability, the call (at
    `threshold`, or the triage's) and what produced them (the threshold or the triage's two, the model, the
    run), so that the file read on its own says how every call was made. Each refused file follows as a
    row with the call "refused" and the reason in `notes` (no id, probability or threshold: it was not scored)."""
    table = result._frame(threshold, triage, calibration)
    if result.refused:
        refused = pd.DataFrame({"file": [name for name, _ in result.refused], "id": "", "call": REFUSED,
                                "notes": [reason for _, reason in result.refused]})
        table = pd.concat([table, refused], ignore_index=True) if len(table) else refused.reindex(columns=table.columns)
    table["model"], table["run"] = model, run
    return table[[c for c in table.columns if c != "notes"] + ["notes"]]


def score_uploads(model: nn.Module, files: Sequence[tuple[str, bytes]], *, tta: bool = False, batch_size: int = 64,
                  scope: ScopeModel | None = None) -> UploadResult:
    """Decode (`uploads.read_uploads`) and score `(file name, bytes)` pairs with `model` (in eval mode;
    it is not modified), with `scope` (the run's guard) checking each patch in the same forward pass. Files that
    cannot be used are listed in `refused` with the reason."""
    accepted, refused = read_uploads(files)
    result = UploadResult(refused=refused, scope=scope)
    if not accepted:
        return result
    pixels = np.stack([patch.pixels for patch in accepted])
    if scope is not None:
        probs, spread, distances = predict_pixels_in_scope(model, pixels, scope, tta=tta, batch_size=batch_size)
    else:
        probs, spread = predict_pixels(model, pixels, tta=tta, batch_size=batch_size, spread=True)
        distances = np.full(len(pixels), np.nan)
    inside = scope.in_scope(distances) if scope is not None else [None] * len(pixels)
    result.scored = [ScoredPatch(patch.name, patch.id, patch_id(patch.pixels), patch.pixels, float(p), patch.notes, float(u),
                                 float(d), None if i is None else bool(i))
                     for patch, p, u, d, i in zip(accepted, probs, spread, distances, inside)]
    return result
