"""Train the bundled model (`--run bundled`) on real PCam patches and write it into the package.

    python scripts/train_bundled.py [--data ../shared/data/pcam-real-dev] [--work /tmp/pcam-bundled] [-- TRAIN_ARGS]

What it does, in order (each step is recorded in the model file and in the model card):
1. splits the real Kaggle-layout folder into a training part and a held-out part, stratified, 15 %,
   seed 0: the split of `benchmarks/bench_real_recipe.py` (its code, imported), so the two agree;
2. runs `pcam train --data WORK/train --out WORK/run` with the default CPU recipe (pcamnet, 36
   epochs; extra options after `--`). A finished run already in WORK/run is reused, so the
   scoring and packaging steps can be rerun without training again;
3. scores the held-out patches, which training never saw (neither as training nor as validation
   data), once and with TTA (8 symmetries), and computes ROC-AUC with a Hanley-McNeil standard error,
   PR-AUC, accuracy/sensitivity/specificity at the model's threshold and the Brier score;
4. writes `pcam_core/bundled/pcam-real-pcamnet.pt` (the averaged weights, the experiment config,
   the threshold and the held-out figures; loadable with weights_only=True) and
   `pcam_core/bundled/MODEL_CARD.md`.

With `--folds K` (the cross-validated ensemble, issue 24) it instead
1. runs `pcam train --data DATA --out WORK/cv --folds K` on every patch of the folder (no held-out part:
   each patch is held out once, by the fold that validates on it); a killed job is resumed by running the
   same command again (`--resume` is passed when WORK/cv exists and has not finished);
2. packages the K fold models as an ensemble run into the package folder: ensemble.json, members/fold-<k>/
   checkpoints/best.pt (averaged weights only), the out-of-fold predictions (oof_predictions.csv with each patch's
   fold; valid_predictions.csv / valid_predictions_tta.csv per scoring mode) and the temperatures fitted on them
   (one pass and TTA), cv.json and the out-of-scope guard; the old single-model file is removed. A finished
   cross-validation in WORK/cv is reused, so rerunning the same command only repackages (and re-times) it;
3. writes the model card: cross-validated figures with intervals, the triage at 98 % sensitivity (cross-fitted),
   calibration, the size on disk, the training time and the scoring time per patch of the ensemble against one member.
Then `scripts/fit_slide_decision.py --write` refits the slide decision for it (on out-of-fold slide maps).
`python scripts/train_bundled.py --retime` only measures the packaged ensemble's scoring time again (after a change to
how the models score) and rewrites that figure in ensemble.json and the card.

    python scripts/train_bundled.py --folds 5 [--combine prob] [--work /tmp/pcam-bundled-cv] [-- TRAIN_ARGS]

(on a machine with several GPUs, `-- --parallel-folds 5` trains the 5 folds side by side; a resume keeps it)

Only this script (and the benchmarks) read ../shared; the package ships the result.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
WORK_DEFAULT = Path("/tmp/pcam-bundled")
sys.path.insert(0, str(REPO))

from benchmarks.bench_real_recipe import make_split  # noqa: E402  the benchmark's split, reused as is
from pcam_core.api import DEFAULT_THRESHOLD, load_predictor  # noqa: E402
from pcam_core.bundled import BUNDLED_DIR, BUNDLED_FILE, LABEL, MODEL_CARD  # noqa: E402
from pcam_core.config import COMBINES, DEFAULT_COMBINE, ExperimentConfig  # noqa: E402
from pcam_core.checkpoint import load_checkpoint, packaged, save_checkpoint  # noqa: E402
from pcam_core.fileio import atomic_write_with  # noqa: E402
from pcam_core.runs import checkpoint_path  # noqa: E402
from pcam_core.metrics import binary_metrics  # noqa: E402
from pcam_core.runs import RunDir  # noqa: E402


def hanley_mcneil_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of a ROC-AUC (Hanley & McNeil, Radiology 1982)."""
    q1 = auc / (2 - auc)
    q2 = 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def train(data: Path, run: Path, train_args: list[str]) -> list[str]:
    """`pcam train` on the training part; returns the command. A finished run is reused."""
    command = [sys.executable, "-m", "pcam_core", "train", "--data", str(data), "--out", str(run), *train_args]
    if RunDir(run).exists() and RunDir(run).raw_status().get("state") == "finished":
        print(f"reusing the finished run {run}")
        return command
    print("$", shlex.join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO)
    print(f"trained in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    return command


def score_holdout(run: Path, held: pd.DataFrame, holdout_dir: Path, threshold: float) -> dict[str, Any]:
    """Held-out figures, one pass and with TTA."""
    predictor = load_predictor(run, device="cpu")
    paths = [holdout_dir / f"{ident}.tif" for ident in held["id"]]
    labels = held["label"].to_numpy()
    n_pos, n_neg = int(labels.sum()), int((1 - labels).sum())
    out: dict[str, Any] = {"n": len(labels), "n_tumour": n_pos, "n_normal": n_neg, "threshold": threshold}
    for name, tta in (("one_pass", False), ("tta", True)):
        probs = predictor.predict(paths, tta=tta)
        m = binary_metrics(labels, probs, threshold)
        out[name] = {
            "roc_auc": m["roc_auc"],
            "roc_auc_se": hanley_mcneil_se(m["roc_auc"], n_pos, n_neg),
            "pr_auc": m["pr_auc"],
            "accuracy": m["accuracy"],
            "sensitivity": m["recall"],
            "specificity": m["specificity"],
            "brier": m["brier"],
            "ece": m["ece"],
            "confusion": m["confusion"],
        }
    return out


def write_bundled(out_dir: str | Path, run_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write the bundled model file (from a finished run's best checkpoint: its inference weights and
    config, the threshold and `record`) and its model card into `out_dir`. Used by
    `scripts/train_bundled.py`; the model file holds nothing a weights_only load refuses."""
    out_dir = Path(out_dir)
    payload = load_checkpoint(checkpoint_path(Path(run_dir), "best"))
    path = out_dir / BUNDLED_FILE
    out_dir.mkdir(parents=True, exist_ok=True)
    # the data path named the script's temporary split: the data's name instead
    shipped = packaged(payload, record["data"]["name"], threshold=float(record["holdout"]["threshold"]), bundled=record)
    save_checkpoint(path, shipped)
    load_checkpoint(path)  # refuses (CheckpointError) anything a weights_only load cannot read back
    card = render_card(record, shipped["config"])
    atomic_write_with(out_dir / MODEL_CARD, lambda h: h.write(card.encode("utf-8")))
    return path


def _row(name: str, figures: dict[str, Any]) -> str:
    c = figures["confusion"]
    return (f"| {name} | {figures['roc_auc']:.4f} ± {figures['roc_auc_se']:.4f} | {figures['pr_auc']:.4f} | "
            f"{figures['accuracy']:.3f} | {figures['sensitivity']:.3f} | {figures['specificity']:.3f} | "
            f"{figures['brier']:.4f} | {c['tp']} / {c['fp']} / {c['tn']} / {c['fn']} |")


def render_card(record: dict[str, Any], config: dict[str, Any]) -> str:
    """The model card's Markdown, from the record `scripts/train_bundled.py` made."""
    data, held, train = record["data"], record["holdout"], config["train"]
    minutes = f"{record['train_seconds'] / 60:.1f} min on {record['machine']}" if record.get("train_seconds") else record["machine"]
    changed = record.get("train_args") or []
    recipe = ("The default CPU recipe of `pcam train`" if not changed else
              f"The CPU recipe of `pcam train`, its defaults but `{' '.join(changed)}`")
    note = f"\n\n{record['note'].rstrip('.')}." if record.get("note") else ""
    return f"""# Model card: {LABEL}

`--run bundled` on every command that takes a run; `pcam_core.load_predictor("bundled")` in Python; the
dashboard's default model in a workspace without runs of its own. File: `pcam_core/bundled/{BUNDLED_FILE}`.

## Intended use
Research and teaching: scoring 96×96-pixel H&E patches of lymph-node sections, as PatchCamelyon cuts them,
for the presence of metastatic tumour tissue in the central 32×32 pixels. **Not a diagnosis**, not a medical
device, not validated for any clinical decision.

## Model
`{config['model']['name']}` (compact CNN, single logit; the probability is its sigmoid), the moving-average
(EMA) weights of the epoch with the best validation ROC-AUC (epoch {record.get('best_epoch')}, validation
ROC-AUC {record.get('best_valid_roc_auc') or float('nan'):.4f}). Decision threshold {held['threshold']}: the training
loss weighs the classes equally (pos_weight), so 0.5 is its natural operating point; it was not tuned on the
held-out patches.

## Data
{data['source']}: {data['patches']:,} patches in all.
- Trained on {data['train_patches_note']}.
- Held out: {data['holdout_patches']} patches ({held['n_tumour']} tumour, {held['n_normal']} normal), {data['holdout_split']};
  never seen in training, neither as training nor as validation data (SHA-1 of their sorted ids: `{data['holdout_ids_sha1'][:16]}…`).
- There is no slide id in this data, so patches of one slide can lie on both sides of the split: the
  held-out figures can be optimistic for slides the model has never seen.
- The real-patch fixtures in the repository's `tests/data/` come from the same 4,000 patches: many of
  them were training data of this model, so the tests' figures on them are not held-out figures.

## Recipe
{recipe} ({train['epochs']} epochs, batch {train['batch_size']}, {train['optimizer']}
at peak lr {train['lr']} with a {train['schedule']} schedule, EMA {train['ema_decay']}, symmetry, stain and colour
augmentation), seed {train['seed']}, torch {record['torch']}; {minutes}.{note}

Made by `scripts/train_bundled.py` (in the repository: the split, the training, the held-out scoring and
this card), run as

    {record['command']}
    # which ran, after the split:
    {record['train_command']}

## Held-out figures ({held['n']} real patches)
ROC-AUC with its Hanley-McNeil standard error; accuracy, sensitivity and specificity at the threshold
{held['threshold']}; Brier score (lower is better); confusion as TP / FP / TN / FN.

| scoring | ROC-AUC | PR-AUC | accuracy | sensitivity | specificity | Brier | TP / FP / TN / FN |
|---|---|---|---|---|---|---|---|
{_row('one pass', held['one_pass'])}
{_row('TTA (8 symmetries)', held['tta'])}

## Limits
- Trained on a few thousand patches from the Camelyon16 slides (two Dutch hospitals) at 0.972 µm/px
  (10× equivalent). Other labs, stains, scanners, magnifications and tissues are untested: expect its
  probabilities to be off there, and check it on labelled patches of your own before relying on a figure.
- {held['n']} held-out patches give a ROC-AUC known to about ±{2 * held['tta']['roc_auc_se']:.3f} (two standard errors).
- The probability is not calibrated for tissue unlike the training data; the whole-slide maps made with it
  inherit all of the above.
"""


def train_folds(data: Path, cv: Path, folds: int, combine: str, train_args: list[str]) -> list[str]:
    """`pcam train --folds K` on every patch of `data` into `cv`, resumed when `cv` holds an unfinished job; returns
    the command that started it. A finished job is reused."""
    command = [sys.executable, "-m", "pcam_core", "train", "--data", str(data), "--out", str(cv), "--folds", str(folds),
               "--combine", combine, *train_args]
    state = RunDir(cv).raw_status().get("state") if RunDir(cv).exists() else None
    if state == "finished" and RunDir(cv).ensemble_path.exists():
        print(f"reusing the finished cross-validation {cv}")
        return command
    side_by_side = train_args[train_args.index("--parallel-folds"):][:2] if "--parallel-folds" in train_args else []
    run = command if state is None else [sys.executable, "-m", "pcam_core", "train", "--out", str(cv), "--resume", *side_by_side]
    print("$", shlex.join(run), flush=True)
    start = time.perf_counter()
    subprocess.run(run, check=True, cwd=REPO)
    print(f"trained in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    return command


def scoring_time(ensemble_dir: Path, member_dir: Path, n: int = 256, repeats: int = 3) -> dict[str, Any]:
    """Milliseconds per patch, one pass in batches of 256 on this CPU (best of `repeats`): the ensemble and one member."""
    from pcam_core.api import load_predictor

    pixels = np.random.default_rng(0).integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
    out: dict[str, Any] = {"patches": n, "threads": torch.get_num_threads(), "machine": f"{platform.machine()} CPU"}
    for name, folder in (("ensemble", ensemble_dir), ("one_model", member_dir)):
        predictor = load_predictor(folder, device="cpu")
        predictor.predict(pixels[:16])  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            predictor.predict(pixels)
            best = min(best, time.perf_counter() - start)
        out[f"{name}_ms_per_patch"] = 1000 * best / n
    return out


def write_bundled_ensemble(out_dir: Path, cv_dir: Path, record: dict[str, Any], combine: str) -> Path:
    """Package the finished cross-validation `cv_dir` as the bundled ensemble in `out_dir` (see the module docstring)
    and write its card. Returns ensemble.json."""
    import shutil

    from pcam_core.ensemble import write_record

    cv, out = RunDir(cv_dir), RunDir(out_dir)
    out.path.mkdir(parents=True, exist_ok=True)
    folds = cv.config().data.folds
    members = []
    for k in range(folds):
        member = RunDir(out.path / "members" / f"fold-{k}")
        save_checkpoint(member.best_checkpoint, packaged(load_checkpoint(cv.fold(k).checkpoint("best")), record["data"]["name"]))
        load_checkpoint(member.best_checkpoint)  # refuses anything a weights_only load cannot read back
        members.append(member)
    for src, dst in ((cv.valid_predictions_path, out.valid_predictions_path), (cv.valid_predictions_tta_path, out.valid_predictions_tta_path),
                     (cv.oof_predictions_path, out.oof_predictions_path),  # with the fold column: which member held each out
                     (cv.calibration_path, out.calibration_path), (cv.calibration_tta_path, out.calibration_tta_path),
                     (cv.cv_path, out.cv_path), (cv.scope_path, out.scope_path)):
        if src.exists():
            shutil.copyfile(src, dst)
    if (out.path / BUNDLED_FILE).exists():  # the single model it replaces
        (out.path / BUNDLED_FILE).unlink()
    write_record(out, members, combine, threshold=DEFAULT_THRESHOLD, bundled=record)  # loadable: time it
    record["scoring_time"] = scoring_time(out.path, members[0].path)
    record["size_mb"] = sum(p.stat().st_size for p in out.path.rglob("*") if p.is_file() and p.suffix in (".pt", ".csv", ".json", ".npz")) / 1e6
    write_record(out, members, combine, threshold=DEFAULT_THRESHOLD, bundled=record)
    write_cv_card(out, record)
    return out.ensemble_path


def write_cv_card(out: RunDir, record: dict[str, Any]) -> None:
    """Write the packaged ensemble's model card from its record and cv.json."""
    from pcam_core.loading import load_run_model

    config = load_run_model(out.path, device="cpu").config.to_dict()  # the package loads as a run, through the one loader
    card = render_cv_card(record, config, json.loads(out.cv_path.read_text()))
    atomic_write_with(out.path / MODEL_CARD, lambda h: h.write(card.encode("utf-8")))


def retime(out_dir: Path) -> None:
    """Measure the packaged ensemble's scoring time again on this machine and rewrite that figure in its record
    (ensemble.json) and card, nothing else: after a change to how the models score (their memory format, say)."""
    from pcam_core.ensemble import member_runs
    from pcam_core.fileio import atomic_write_json

    out = RunDir(out_dir)
    payload = json.loads(out.ensemble_path.read_text())
    record = payload["bundled"]
    before = record.get("scoring_time", {})
    record["scoring_time"] = scoring_time(out.path, member_runs(out)[0].path)
    atomic_write_json(out.ensemble_path, {**payload, "bundled": record})
    write_cv_card(out, record)
    for key in ("ensemble_ms_per_patch", "one_model_ms_per_patch"):
        print(f"{key}: {before.get(key, float('nan')):.2f} -> {record['scoring_time'][key]:.2f}")


def _cv_row(name: str, r: dict[str, Any]) -> str:
    from pcam_core.stats import format_interval

    p, t = r["pooled"], r["triage"]
    return (f"| {name} | {format_interval(p['roc_auc'], 4)} | {format_interval(r['mean_fold_roc_auc'], 4)} | "
            f"{format_interval(p.get('pr_auc'), 4)} | {format_interval(p['accuracy'])} | {format_interval(p['recall'])} | "
            f"{format_interval(p['specificity'])} | {r['ece']:.4f} | {t['miss_rate']:.2%} / {t['referral_rate']:.1%} |")


def render_cv_card(record: dict[str, Any], config: dict[str, Any], cv: dict[str, Any]) -> str:
    """The model card of the cross-validated ensemble."""
    data, train, timing = record["data"], config["train"], record["scoring_time"]
    cal = record.get("calibration") or {}
    temps = ", ".join(f"{name} T {value['temperature']:.3f}, bias {value.get('bias', 0.0):+.3f} (ECE {value['before']['ece']:.4f} -> {value['after']['ece']:.4f})"
                      for name, value in sorted(cal.items(), key=lambda kv: kv[0] != "one pass"))  # one pass first
    # a config written before `train.keep` existed (the ensemble of 2026-12-06) reads as keep='best'
    if ExperimentConfig.from_dict(config).keeps_last_epoch:
        kept = f"last epoch, {train['epochs']} of {train['epochs']}"
        selection = ("- Each member is its last epoch: its held-out fold was scored after every epoch but never used to pick one, so the\n"
                     "  out-of-fold figures above carry no selection bias from it (`train.keep`, docs/training.md).")
    else:
        kept = "best validated epoch"
        selection = ("- Each member's best epoch was picked on its own held-out fold (cross-validation validates on the fold it holds\n"
                     "  out), so the out-of-fold figures above carry a small selection bias: slightly optimistic, as the epoch kept is\n"
                     "  the one that did best on those very patches.")
    return f"""# Model card: {LABEL}

`--run bundled` on every command that takes a run; `pcam_core.load_predictor("bundled")` in Python; the
dashboard's default model in a workspace without runs of its own. An ensemble run (`pcam_core.ensemble`): the
{cv['folds']} models of a {cv['folds']}-fold cross-validation, whose probability is the {record['combine']} mean of theirs.

## Intended use
Research and teaching: scoring 96×96-pixel H&E patches of lymph-node sections, as PatchCamelyon cuts them,
for the presence of metastatic tumour tissue in the central 32×32 pixels. **Not a diagnosis**, not a medical
device, not validated for any clinical decision.

## Model
{cv['folds']} × `{config['model']['name']}` (each the moving-average weights of its {kept}), one graph:
`pcam export` writes the ensemble as one ONNX/TorchScript model. Threshold {DEFAULT_THRESHOLD} (class-balanced loss).
Size on disk {record['size_mb']:.1f} MB. Scoring time per patch (one pass, batches of 256, {timing['threads']} thread(s),
{timing['machine']}): the ensemble {timing['ensemble_ms_per_patch']:.2f} ms, one member {timing['one_model_ms_per_patch']:.2f} ms.
Training time: {_duration(record['train_seconds'])} for the {cv['folds']} folds in all, {_how_folds_trained(record)} ({record['machine']}).

## Data
{data['source']}: all {data['patches']:,} patches, in {cv['folds']} folds stratified by label (seed
{config['data']['split_seed']}; the data has no slide ids, so patches of one slide can lie in two folds and the
figures below can be optimistic for slides never seen). Every patch was trained on by {cv['folds'] - 1} of the members and
held out by one: the figures below are that member's out-of-fold predictions (`oof_predictions.csv`, with each patch's
fold; `valid_predictions.csv` and `valid_predictions_tta.csv` hold the same predictions per scoring mode).
The real-patch fixtures in the repository's `tests/data/` come from the same patches: every one of them was
training data of {cv['folds'] - 1} members, so the tests' figures on them are not out-of-fold figures.

## Recipe
The CPU recipe of `pcam train`{', with `' + ' '.join(record['train_args']) + '`' if record.get('train_args') else ''}
({train['epochs']} epochs, batch {train['batch_size']}, {train['optimizer']} at peak lr {train['lr']}, {train['schedule']}
schedule, EMA {train['ema_decay']}), torch {record['torch']}; {_duration(record['train_seconds'])} of training in all
({record['machine']}).

    {record['command']}
    # which ran:
    {record['train_command']}

## Cross-validated figures ({cv['n']:,} real patches, out of fold)
ROC-AUC pooled over every patch (DeLong interval) and the mean of the folds' (normal interval); PR-AUC; accuracy,
sensitivity, specificity at {DEFAULT_THRESHOLD} (Wilson intervals); calibration error before the temperature; triage at
{cv['one_pass']['triage']['target_sensitivity']:.0%} target sensitivity, each fold called with thresholds fitted on the
others: tumour patches missed / patches referred to a pathologist.

| scoring | ROC-AUC (pooled) | ROC-AUC (mean of folds) | PR-AUC | accuracy | sensitivity | specificity | ECE | triage miss / referred |
|---|---|---|---|---|---|---|---|---|
{_cv_row('one pass', cv['one_pass'])}
{_cv_row('TTA (8 symmetries)', cv['tta'])}

The ensemble itself has no out-of-fold predictions (every patch trained some of its members): an average of
models is usually at least as good as its members, so these figures are expected to understate it slightly.

## Calibration, triage and scope
Temperature and bias (`sigmoid(logit(p) / T + b)`: the bias takes out the class-balanced loss's lean towards tumour) fitted
on the out-of-fold predictions of each scoring mode, applied to the matching one: {temps or 'none'}.
The triage thresholds (`--triage`) are fitted on the same out-of-fold predictions of the scoring mode used. The
out-of-scope guard is the first member's (fitted on its training folds, threshold on its held-out fold).

## Limits
- Camelyon16 slides (two Dutch hospitals) at 0.972 µm/px only; other labs, stains, scanners and tissues are untested.
- The temperature and triage are fitted on single members' predictions and applied to their mean.
- Synthetic shifts (docs/robustness.md: the first member on the 800 patches of its held-out fold): focus is its
  weakest point. A blur of 1 µm, a scan 20 % darker or brighter, a move two thirds of the way to another lab's H&E
  look or JPEG at quality 15 takes it past where it can be trusted (the last two on its raw calibration); stain
  amounts up to 45 % off and JPEG at quality 30 do not.
{selection}
- The slide decision (`slide_decision.json`) is fitted on single members' out-of-fold slide maps (mosaics of one
  fold's held-out patches scored by that fold's member) and applied to the ensemble's maps (docs/slides.md).
- Every window of a slide costs {cv['folds']} models' time: on a 2-core CPU a CAMELYON-size slide of real tissue takes
  hours (benchmarks/README.md). `candidates/pcamscan`, one network that scans a slide exactly, takes minutes, at
  0.011-0.014 less patch ROC-AUC (docs/recipe-experiments.md).
- Data, more than recipe, limits it: halving a fold's training patches (3,200 to 1,600) cost 0.0135 ROC-AUC with
  TTA (two folds pooled), more than any recipe change tried gained; about 1.5 times the patches would be needed
  for 0.975 (docs/recipe-experiments.md, a learning curve).
"""


def _duration(seconds: float) -> str:
    """`1 h 23 min`, or `42 min` under an hour."""
    minutes = round((seconds or 0.0) / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _how_folds_trained(record: dict) -> str:
    """"one after another", or "side by side, N at a time" (`--parallel-folds N` among the training options)."""
    args = list(record.get("train_args") or [])
    if "--parallel-folds" in args[:-1] and int(args[args.index("--parallel-folds") + 1]) > 1:
        return f"side by side, {args[args.index('--parallel-folds') + 1]} at a time (the sum of their times)"
    return "one after another"


def main_folds(args: argparse.Namespace) -> None:
    """The cross-validated ensemble (`--folds K`)."""
    data = args.data.resolve()
    if not (data / "train_labels.csv").exists():
        raise SystemExit(f"{data}: not a Kaggle-layout folder (no train_labels.csv); give --data")
    cv_dir = args.work / "cv"
    args.work.mkdir(parents=True, exist_ok=True)
    command = train_folds(data, cv_dir, args.folds, args.combine, args.train_args)
    cv = RunDir(cv_dir)
    n = len(pd.read_csv(data / "train_labels.csv"))
    calibration = {name: json.loads(path.read_text()) for name, path in
                   (("one pass", cv.calibration_path), ("TTA", cv.calibration_tta_path)) if path.exists()}
    record = {
        "name": "bundled model (real tissue), cross-validated ensemble",
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
        "data": {"source": "pcam-real-dev: real PCam patches (Kaggle 'Histopathologic Cancer Detection' layout, "
                           "Camelyon16 lymph-node slides, 96x96 px at 0.972 um/px)",
                 "name": f"pcam-real-dev ({n:,} real PCam patches, {args.folds}-fold cross-validation)", "patches": n},
        "command": "python scripts/train_bundled.py " + shlex.join(sys.argv[1:]),
        "train_command": "pcam " + shlex.join(command[3:]).replace(str(args.work), "WORK"),
        "train_args": args.train_args, "combine": args.combine, "folds": args.folds,
        "train_seconds": cv.summary().get("train_seconds") or 0.0,
        "torch": str(torch.__version__), "machine": f"{platform.machine()} CPU", "calibration": calibration,
        "cv": {mode: {"roc_auc": r["pooled"]["roc_auc"], "mean_fold_roc_auc": r["mean_fold_roc_auc"], "ece": r["ece"],
                      "triage": {k: r["triage"][k] for k in ("target_sensitivity", "miss_rate", "referral_rate")}}
               for mode, r in json.loads(cv.cv_path.read_text()).items() if mode in ("one_pass", "tta")},
    }
    written = write_bundled_ensemble(args.out, cv_dir, record, args.combine)
    size = json.loads(written.read_text())["bundled"]["size_mb"]
    print(json.dumps(record["cv"], indent=2))
    print(f"wrote {written.parent} ({size:.2f} MB) and its {MODEL_CARD}")
    if size >= 20:
        raise SystemExit(f"the bundled ensemble is {size:.1f} MB, over the 20 MB the package allows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "pcam-real-dev")
    parser.add_argument("--holdout-frac", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    parser.add_argument("--work", type=Path, default=WORK_DEFAULT,
                        help="the split (symbolic links) and the run folder; kept, so a rerun reuses the training")
    parser.add_argument("--out", type=Path, default=BUNDLED_DIR, help="where the model file and card go (default: the package)")
    parser.add_argument("--note", default="", help="a sentence for the model card's recipe (why it differs from the default, say)")
    parser.add_argument("--folds", type=int, default=0, help="K >= 2: train the cross-validated ensemble of K folds on "
                        "every patch (no held-out part); see the module docstring")
    parser.add_argument("--combine", choices=COMBINES, default=DEFAULT_COMBINE, help="with --folds: mean probability or mean logit")
    parser.add_argument("--retime", action="store_true", help="only measure the packaged ensemble's scoring time in "
                        "--out again and rewrite it in its record and card (no training, no data needed)")
    parser.add_argument("train_args", nargs="*", help="extra `pcam train` options (after --)")
    args = parser.parse_args()
    if args.retime:
        retime(args.out)
        return
    if args.folds:
        if args.work == WORK_DEFAULT:
            args.work = Path("/tmp/pcam-bundled-cv")
        main_folds(args)
        return

    data = args.data.resolve()
    if not (data / "train_labels.csv").exists():
        raise SystemExit(f"{data}: not a Kaggle-layout folder (no train_labels.csv); give --data")
    work = args.work
    if (work / "holdout").exists():
        held = pd.read_csv(work / "holdout.csv")
        print(f"reusing the split in {work}")
    else:
        work.mkdir(parents=True, exist_ok=True)
        held = make_split(data, work, args.holdout_frac, args.seed)
        held.to_csv(work / "holdout.csv", index=False)
    n_train = len(pd.read_csv(work / "train" / "train_labels.csv"))
    overlap = set(held["id"]) & set(pd.read_csv(work / "train" / "train_labels.csv")["id"])
    assert not overlap, f"{len(overlap)} held-out ids are in the training part"

    command = train(work / "train", work / "run", args.train_args)
    run = RunDir(work / "run")
    config = run.config()
    summary = run.summary()
    threshold = DEFAULT_THRESHOLD  # the trainer's loss is class-balanced (pos_weight), so 0.5 is its operating point
    holdout = score_holdout(work / "run", held, work / "holdout", threshold)
    best = run.best_epoch() or {}
    record = {
        "name": "bundled model (real tissue)",
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
        "data": {
            "source": "pcam-real-dev: real PCam patches (Kaggle 'Histopathologic Cancer Detection' layout, "
                      "Camelyon16 lymph-node slides, 96x96 px at 0.972 um/px)",
            "name": f"pcam-real-dev, training part ({n_train:,} real PCam patches; {len(held)} held out)",
            "patches": n_train + len(held),
            "train_patches": n_train,
            "train_patches_note": f"{n_train:,} patches, incl. the trainer's own validation split "
                                  f"({config.data.valid_frac:.0%}, seed {config.data.split_seed}) that picked the best epoch",
            "holdout_patches": len(held),
            "holdout_split": f"stratified {args.holdout_frac:.0%}, seed {args.seed} "
                             "(benchmarks/bench_real_recipe.py make_split)",
            "holdout_ids_sha1": hashlib.sha1("\n".join(sorted(held["id"])).encode()).hexdigest(),
        },
        "command": "python scripts/train_bundled.py " + shlex.join(sys.argv[1:]),
        "train_command": "pcam " + shlex.join(command[3:]).replace(str(work), "WORK"),
        "train_args": args.train_args,
        "note": args.note,
        "train_seconds": summary.get("train_seconds"),
        "best_epoch": best.get("epoch"),
        "best_valid_roc_auc": best.get("roc_auc"),
        "torch": str(torch.__version__),  # a TorchVersion object would need pickle to load
        "machine": f"{platform.machine()} CPU",
        "holdout": holdout,
    }
    written = write_bundled(args.out, work / "run", record)
    print(json.dumps(holdout, indent=2))
    print(f"wrote {written} ({written.stat().st_size / 1e6:.2f} MB) and {args.out / MODEL_CARD}")


if __name__ == "__main__":
    main()
