"""The `pcam` command line (also `python -m pcam_core`). argparse lives here and nowhere else."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from . import __version__
from .config import (
    DATA_FORMATS,
    DEVICES,
    MONITORS,
    OPTIMIZERS,
    SCHEDULES,
    AugmentConfig,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    TrackingConfig,
    TrainConfig,
)
from .tracking import INSTALL_HINT, resolve_uri
from .triage import DEFAULT_FPR

EXIT_ERROR = 2
RUN_HELP = ("training run folder (its best checkpoint, else its last), or `bundled`: the model trained on real "
            "patches that ships with pcam_core (pcam_core/bundled/MODEL_CARD.md)")


# -- helpers ---------------------------------------------------------------------------------------

def _bar(total: int | None, desc: str, unit: str = "img", initial: int = 0):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, initial=initial, disable=not sys.stderr.isatty(), leave=True)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _fmt(value: Any, digits: int = 4) -> str:
    return "-" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


# -- train -----------------------------------------------------------------------------------------

def _default(value: Any, note: str = "") -> str:
    """'(default: VALUE)' for a help text, VALUE taken from the config dataclasses (never typed twice)."""
    if note:
        return f"(default: {note})"
    return f"(default: {'none' if value is None else value})"


# flags that `--resume` honours; every other flag given with it is refused (the run keeps its saved config)
_RESUMABLE_DESTS = ("out", "resume", "epochs", "config", "func", "help")


def _add_train(sub: argparse._SubParsersAction) -> None:
    D, A, M, T, K = DataConfig(), AugmentConfig(), ModelConfig(), TrainConfig(), TrackingConfig()
    p = sub.add_parser("train", help="train a model into a run folder", description=(
        "Train a model. Flags override --config; anything not given takes the defaults (the CPU recipe: "
        f"the compact pcamnet, {T.epochs} epochs, AdamW with a one-cycle schedule, weight averaging, symmetry, "
        "stain and colour augmentation). Under torchrun this runs DistributedDataParallel. With --resume "
        "the run continues with its saved config; only --epochs may change it (to extend or shorten the "
        "run: the learning-rate schedule is then rebuilt for the new total and continued at the step reached)."))
    p.add_argument("--data", help="PCam HDF5 folder or Kaggle folder (required unless --config or --resume gives it)")
    p.add_argument("--out", required=True, help="run folder to create (or to continue, with --resume)")
    p.add_argument("--config", help="experiment config JSON (as written to a run's config.json)")
    p.add_argument("--format", choices=DATA_FORMATS, help="data layout " + _default(D.format))
    p.add_argument("--model", help="model name (see `pcam models`); 'auto' = pcamnet on CPU, resnet18 on CUDA " + _default(M.name))
    p.add_argument("--weights", help="local weights file to start from (never downloaded) " + _default(M.weights))
    p.add_argument("--dropout", type=float, help="dropout before the output layer " + _default(M.dropout))
    p.add_argument("--epochs", type=int, help="passes over the training split; with --resume, the run's new total " + _default(T.epochs))
    p.add_argument("--batch-size", type=int, help="per process; the global batch is this times the process count " + _default(T.batch_size))
    p.add_argument("--lr", type=float, help="peak learning rate " + _default(T.lr))
    p.add_argument("--weight-decay", type=float, help="weight decay of the kernels " + _default(T.weight_decay))
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=_default(T.optimizer))
    p.add_argument("--schedule", choices=SCHEDULES, help=_default(T.schedule))
    p.add_argument("--pos-weight", type=float, help="positive-class loss weight "
                   + _default(T.pos_weight, "negatives/positives" if T.pos_weight is None else ""))
    p.add_argument("--label-smoothing", type=float, help="pull the targets towards 0.5 by this much " + _default(T.label_smoothing))
    p.add_argument("--ema", type=float, dest="ema_decay", help="weight-averaging decay (0 disables) " + _default(T.ema_decay))
    p.add_argument("--device", choices=DEVICES, help="auto: CUDA when there is a GPU " + _default(T.device))
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision " + _default(T.amp, "on CUDA only" if T.amp is None else ""))
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model " + _default(T.compile))
    p.add_argument("--seed", type=int, help="seed of the initialisation, shuffling and augmentation " + _default(T.seed))
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps " + _default(T.max_steps))
    p.add_argument("--early-stopping", type=int, help="epochs without improvement before stopping (0: off) " + _default(T.early_stopping))
    p.add_argument("--monitor", choices=MONITORS, help="validation metric that picks the best epoch " + _default(T.monitor))
    p.add_argument("--valid-frac", type=float, help="validation share for data without a valid split " + _default(D.valid_frac))
    p.add_argument("--split-seed", type=int, help="seed of that validation split " + _default(D.split_seed))
    p.add_argument("--workers", type=int, dest="num_workers", help="loader worker processes (-1: auto) " + _default(D.num_workers))
    p.add_argument("--cache", choices=("auto", "yes", "no"), help="hold the data in RAM " + _default(D.cache))
    p.add_argument("--label-overrides", metavar="CSV", help="train with reviewed labels: a review export (columns id, verdict; "
                   "the Review page's CSV). disagree_label_wrong flips a training patch's label, artefact drops it, other "
                   "verdicts keep it; ids that are not training patches are counted and warned about. The run keeps a copy "
                   + _default(D.label_overrides))
    p.add_argument("--no-augment", action="store_true", help="disable all augmentation")
    p.add_argument("--stain", type=float, help="HED stain jitter strength " + _default(A.stain))
    p.add_argument("--shift", type=int, help="random shift in pixels " + _default(A.shift))
    p.add_argument("--name", help="a label for the run")
    p.add_argument("--mlflow", metavar="URI", help="also log the run to this MLflow tracking store (e.g. sqlite:///mlflow.db; "
                   f"needs {INSTALL_HINT}); a resumed run logs to the same MLflow run " + _default(K.mlflow_uri))
    p.add_argument("--mlflow-experiment", metavar="NAME", help="MLflow experiment of the run " + _default(K.mlflow_experiment))
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    refused = {a.dest: a.option_strings[0] for a in p._actions if a.option_strings and a.dest not in _RESUMABLE_DESTS}
    p.set_defaults(func=cmd_train, resume_refuses=refused)


def build_config(args: argparse.Namespace) -> ExperimentConfig:
    """The experiment config from --config (if any) with every flag given on the command line on top."""
    config = ExperimentConfig.from_json(args.config) if args.config else ExperimentConfig()
    data = {k: v for k, v in {"path": args.data, "format": args.format, "valid_frac": args.valid_frac,
                              "split_seed": args.split_seed, "num_workers": args.num_workers, "cache": args.cache,
                              "label_overrides": str(Path(args.label_overrides).resolve()) if args.label_overrides else None,
                              }.items() if v is not None}
    model = {k: v for k, v in {"name": args.model, "weights": args.weights, "dropout": args.dropout}.items() if v is not None}
    train = {k: v for k, v in {
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
        "optimizer": args.optimizer, "schedule": args.schedule, "pos_weight": args.pos_weight,
        "label_smoothing": args.label_smoothing, "ema_decay": args.ema_decay, "device": args.device, "amp": args.amp,
        "compile": args.compile, "seed": args.seed, "max_steps": args.max_steps, "early_stopping": args.early_stopping,
        "monitor": args.monitor}.items() if v is not None}
    augment: dict[str, Any] = {}
    if args.no_augment:
        augment = {"symmetries": False, "stain": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0, "shift": 0}
    augment.update({k: v for k, v in {"stain": args.stain, "shift": args.shift}.items() if v is not None})
    tracking = {k: v for k, v in {"mlflow_uri": resolve_uri(args.mlflow) if args.mlflow is not None else None,
                                  "mlflow_experiment": args.mlflow_experiment}.items() if v is not None}
    changes: dict[str, Any] = {"data": data, "model": model, "train": train, "augment": augment, "tracking": tracking}
    if args.name is not None:
        changes["name"] = args.name
    config = config.replace(**changes)
    if not config.data.path and not args.resume:
        raise ValueError("--data is required (a PCam HDF5 folder or a Kaggle folder); try `pcam demo-data --out demo` first")
    return config


def _check_resume_flags(args: argparse.Namespace) -> None:
    """--resume continues a run with its saved config: refuse every flag it cannot honour (all but --epochs),
    rather than ignore it. --config may only name the run's own config.json (as `pcam_core.runs.launch` does)."""
    from .runs import RunDir

    given = [flag for dest, flag in args.resume_refuses.items() if getattr(args, dest) not in (None, False)]
    if args.config and Path(args.config).resolve() != RunDir(args.out).config_path.resolve():
        given.insert(0, "--config")
    if given:
        raise ValueError(
            f"--resume continues {args.out} with the config saved in it; it cannot change {', '.join(given)} "
            "(only --epochs can be changed on resume). Start a new run with another --out to train with other settings"
        )


def _train_bar() -> tuple[Callable[[dict[str, Any]], None], Callable[[], None]]:
    """A progress bar over the whole run (images, images/s, time left), drawn when stderr is a terminal:
    (callback for each optimiser step, close)."""
    bar = None

    def on_step(p: dict[str, Any]) -> None:
        nonlocal bar
        if bar is None:
            bar = _bar(p["total_steps"] * p["images"], f"epoch {p['epoch']}/{p['epochs']}", initial=(p["step"] - 1) * p["images"])
        bar.set_description(f"epoch {p['epoch']}/{p['epochs']}", refresh=False)
        bar.set_postfix_str(f"loss {p['loss']:.4f}", refresh=False)
        bar.update(p["images"])

    def close() -> None:
        if bar is not None:
            bar.close()

    return on_step, close


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .train import StopRequested, fit

    if args.resume:
        _check_resume_flags(args)
    config = build_config(args) if not args.resume else ExperimentConfig()
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 speaks
    show_bar = main_rank and sys.stderr.isatty()
    on_step, close_bar = _train_bar()
    try:
        with logging_redirect_tqdm() if show_bar else contextlib.nullcontext():  # log lines above the bar
            summary = fit(config, args.out, resume=args.resume, epochs=args.epochs if args.resume else None,
                          on_step=on_step if show_bar else None)
    except StopRequested:
        if main_rank:
            print(f"stopped: checkpoint saved in {args.out}; continue with `pcam train --out {args.out} --resume`", file=sys.stderr)
        return 0
    finally:
        close_bar()
    if not main_rank:
        return 0
    if summary.get("best_metrics"):
        best = summary["best_metrics"]
        print(f"finished {summary['run_id']}: {summary['epochs_done']} epochs in {summary['train_seconds'] / 60:.1f} min "
              f"({summary['ended_by']}); best epoch {best['epoch']}: ROC-AUC {_fmt(best.get('roc_auc'))}, "
              f"accuracy {_fmt(best.get('accuracy'))}, F1 {_fmt(best.get('f1'))}")
    if summary.get("synthetic_data"):
        print("note: trained on SYNTHETIC demo data; its figures say nothing about real tissue")
    if summary.get("label_overrides"):
        c = summary["label_overrides"]
        print(f"reviewed labels: {c['flipped']} flipped, {c['dropped']} dropped, {c['kept']} kept, {c['unmatched']} unmatched "
              f"(copy and counts in {args.out})")
    for warning in summary.get("warnings") or []:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


# -- evaluate / predict / merge ---------------------------------------------------------------------

def _add_eval_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a run on a labelled split", description=(
        "Score a run's best checkpoint on a labelled split: writes --out (metrics JSON with ROC, PR and "
        "calibration curves) and <out stem>_predictions.csv (id,label,probability,index) beside it."))
    p.add_argument("--run", required=True, help=RUN_HELP)
    p.add_argument("--data", required=True, help="PCam HDF5 folder or Kaggle folder")
    p.add_argument("--split", default="test", help="train, valid or test (for Kaggle data, valid is the run's own validation split)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="average the 8 symmetries of the square (default: on; --no-tta for one pass, 8x faster)")
    p.add_argument("--out", required=True)
    p.add_argument("--threshold", choices=("fixed", "youden", "sensitivity"), default="fixed",
                   help="how to pick the decision threshold, on the run's validation predictions")
    p.add_argument("--threshold-value", type=float, default=0.5, help="the fixed threshold, or the target sensitivity")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=-1)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="write a Kaggle submission CSV", description=(
        "Predict the tumour probability of every image in --input (a folder of images, a Kaggle folder's "
        "test/ split, or an HDF5 split) and write Kaggle's format: id,label with label the probability."))
    p.add_argument("--run", required=True, help=RUN_HELP)
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--split", help="split of an HDF5 or Kaggle folder (default: test)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="average the 8 symmetries of the square (default: on; --no-tta for one pass, 8x faster)")
    p.add_argument("--skip-bad", action="store_true", help="leave unreadable images out and list them, instead of stopping")
    p.add_argument("--shard", help="i/n: predict only the i-th of n equal parts (merge them with `pcam merge`)")
    p.add_argument("--results", help="also write a results CSV: id, probability (and probability_calibrated when the run has "
                                     "a temperature), uncertainty (spread of the 8 TTA views), call")
    p.add_argument("--triage", type=float, metavar="SENSITIVITY",
                   help="calls by split-conformal triage at this target sensitivity (e.g. 0.98): normal, refer or tumour, "
                        "fitted on the run's validation predictions (needs --results)")
    p.add_argument("--triage-fpr", type=float, default=DEFAULT_FPR,
                   help=f"false-positive rate the triage's tumour calls may have on normal patches (default: {DEFAULT_FPR})")
    p.add_argument("--calibrated", action="store_true",
                   help="the submission's label is the calibrated probability (the run's temperature, `pcam calibrate`)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=-1)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("calibrate", help="fit a run's temperature on its validation predictions", description=(
        "Fit temperature scaling on the run's validation predictions and write calibration.json into the run folder "
        "(training does this when a run ends). Prints the temperature and the NLL, ECE and Brier score before and after."))
    p.add_argument("--run", required=True, help="training run folder (the bundled model's temperature ships with it)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("compare", help="compare runs on the same labelled split (paired DeLong test)", description=(
        "Score each run on the same split, join on patch ids, and print each run's metrics with 95% intervals at one "
        "threshold and the paired DeLong test of each run's ROC-AUC against the first run's."))
    p.add_argument("--runs", nargs="+", required=True, help="two or more run folders (or `bundled`)")
    p.add_argument("--data", required=True, help="PCam HDF5 folder or Kaggle folder")
    p.add_argument("--split", default="test")
    p.add_argument("--threshold", type=float, default=0.5, help="the threshold of the side-by-side metrics (default: 0.5)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True, help="average the 8 symmetries (default: on)")
    p.add_argument("--out", help="also write the comparison as JSON")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=-1)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("merge", help="merge shard submissions into one")
    p.add_argument("parts", nargs="+")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_merge)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .predict import evaluate_run

    with _bar(None, "evaluate") as bar:
        report = evaluate_run(args.run, args.data, args.split, args.out, tta=args.tta, threshold=args.threshold,
                              threshold_value=args.threshold_value, device=args.device, batch_size=args.batch_size,
                              num_workers=args.workers, which=args.checkpoint, progress=bar.update)
    m = report["metrics"]
    c = m["confusion"]
    print(f"{report['dataset']}: n={m['n']}, threshold {m['threshold']:.3f} (tn {c['tn']}, fp {c['fp']}, fn {c['fn']}, tp {c['tp']})")
    print(_interval_lines(m, report["intervals"]))
    cal = report["calibration"]
    if cal:
        print(f"calibration (temperature {cal['temperature']:.3f}): ECE {cal['before']['ece']:.4f} -> {cal['after']['ece']:.4f}, "
              f"Brier {cal['before']['brier']:.4f} -> {cal['after']['brier']:.4f}")
    else:
        print(f"calibration: none fitted (ECE {m['ece']:.4f}, Brier {m['brier']:.4f}); `pcam calibrate --run RUN` fits one")
    print(f"wrote {args.out} and {report['predictions_file']}")
    return 0


INTERVAL_NAMES = {"roc_auc": "ROC-AUC", "pr_auc": "PR-AUC", "accuracy": "accuracy", "recall": "sensitivity",
                  "specificity": "specificity", "precision": "precision", "f1": "F1", "brier": "Brier"}


def _interval_lines(metrics: dict[str, Any], intervals: dict[str, Any], indent: str = "  ") -> str:
    """One line per headline metric: its value and 95% interval, "0.951 (0.930-0.970)", and the method."""
    from .stats import format_interval

    return "\n".join(f"{indent}{INTERVAL_NAMES[k]:<12} {format_interval(intervals[k]) if intervals.get(k) else _fmt(metrics.get(k), 3)}"
                     f"{'  [' + intervals[k]['method'] + ']' if intervals.get(k) else ''}"
                     for k in INTERVAL_NAMES if k in intervals or k in metrics)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .bundled import is_bundled
    from .calibration import calibrate_run, load_calibration

    if is_bundled(args.run):  # shipped with the package, fitted by scripts/bundled_calibration.py: shown, not rewritten
        cal = load_calibration(args.run)
        print(f"the bundled model's temperature ships with it: {cal.temperature:.4f}, fitted on its {cal.n} held-out patches")
        for name in ("nll", "ece", "brier"):
            print(f"  {name.upper() if name != 'brier' else 'Brier':<6} {cal.before[name]:.4f} -> {cal.after[name]:.4f}")
        return 0
    cal = calibrate_run(args.run)
    print(f"temperature {cal.temperature:.4f} fitted on {cal.n} validation patches ({cal.fitted_on})")
    for name in ("nll", "ece", "brier"):
        print(f"  {name.upper() if name != 'brier' else 'Brier':<6} {cal.before[name]:.4f} -> {cal.after[name]:.4f}")
    print(f"wrote {Path(args.run) / 'calibration.json'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .fileio import atomic_write_json
    from .data.loader import dataset_for_split
    from .loading import load_run_model
    from .predict import predict_dataset
    from .stats import compare_predictions

    if len(set(args.runs)) < 2:
        raise ValueError(f"--runs needs two or more different runs, got {' '.join(args.runs)}")
    frames = {}
    for run in args.runs:
        loaded = load_run_model(run, device="cpu" if args.device == "auto" else args.device)
        model, config = loaded.model, loaded.config
        dataset = dataset_for_split(args.data, args.split, config)
        if not dataset.has_labels:
            raise ValueError(f"{dataset.describe()} has no labels to compare runs on")
        with _bar(len(dataset), f"score {Path(run).name}") as bar:
            preds = predict_dataset(model, dataset, tta=args.tta, batch_size=args.batch_size, num_workers=args.workers,
                                    progress=bar.update).predictions
        frames[str(run)] = preds.to_frame()
    result = compare_predictions(frames, args.threshold)
    print(f"{result['n']} patches of {args.data} ({args.split}), threshold {args.threshold}, 95% intervals")
    for name, row in result["runs"].items():
        print(f"{name}:")
        print(_interval_lines(row["metrics"], row["intervals"]))
    for name, test in result["paired_tests"].items():
        print(f"ROC-AUC {name} - {result['reference']}: {test['difference']:+.4f} ({test['low']:+.4f} to {test['high']:+.4f}), "
              f"paired DeLong z {test['z']:.2f}, p = {test['p_value']:.3g}")
    if args.out:
        atomic_write_json(args.out, {k: v for k, v in result.items() if k not in ("labels", "probabilities")})
        print(f"wrote {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import parse_shard, predict_submission

    shard = parse_shard(args.shard)
    bar = None

    def start(n: int) -> None:
        nonlocal bar
        bar = _bar(n, "predict")

    try:
        result = predict_submission(args.run, args.input, args.out, split=args.split, tta=args.tta, skip_bad=args.skip_bad,
                                    shard=shard, device=args.device, batch_size=args.batch_size, num_workers=args.workers,
                                    results=args.results, triage=args.triage, triage_fpr=args.triage_fpr, calibrated=args.calibrated,
                                    which=args.checkpoint, on_start=start, progress=lambda n: bar.update(n) if bar else None)
    finally:
        if bar is not None:
            bar.close()
    print(f"wrote {result['rows']} predictions to {result['out']} ({result['dataset']}, model {result['model']}, "
          f"TTA {'on' if result['tta'] else 'off'}{', shard ' + result['shard'] if result['shard'] else ''}"
          f"{', calibrated (temperature %.3f)' % result['temperature'] if result['calibrated'] else ''})")
    if result.get("results"):
        print(f"wrote the results (probability, uncertainty, call) to {result['results']}")
    triage = result.get("triage")
    if triage:
        calls = triage["calls"]
        print(f"triage at target sensitivity {triage['target_sensitivity']}: normal below {triage['normal_below']:.4f}, "
              f"tumour above {triage['tumour_above']:.4f}{' (the thresholds cross: one cut, nothing referred)' if triage['crossed'] else ''}")
        print(f"referral rate {triage['referral_rate']:.1%}: {calls['refer']} referred, {calls['normal']} normal, {calls['tumour']} tumour")
        print(triage["guarantee"])
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} unreadable image(s), listed in {result['skipped_file']}:", file=sys.stderr)
        for name, reason in result["skipped"]:
            print(f"  {name}: {reason}", file=sys.stderr)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .predict import merge_submissions

    rows = merge_submissions(args.parts, args.out)
    print(f"merged {len(args.parts)} shard(s) into {args.out}: {rows} rows")
    return 0


# -- robustness ------------------------------------------------------------------------------------

def _add_robustness(sub: argparse._SubParsersAction) -> None:
    from .shifts import SHIFT_GROUPS

    p = sub.add_parser("robustness", help="score a run on a labelled split under graded image shifts", description=(
        "Score a run on a labelled split under graded shifts (stain amounts, stain normalisation to another lab, "
        "blur, JPEG, brightness, contrast): ROC-AUC, calibration error, Brier score and accuracy per shift and "
        "strength, and a report card of where the model stops being trustworthy (ROC-AUC more than 0.05 below "
        "the unshifted one, or calibration error above 0.1). Writes robustness/<split>.csv and .json into the "
        "run folder (or into --out). docs/robustness.md explains the shifts."))
    p.add_argument("--run", required=True, help=RUN_HELP)
    p.add_argument("--data", required=True, help="PCam HDF5 folder or Kaggle folder")
    p.add_argument("--split", default="test", help="a labelled split: train, valid or test (for Kaggle data, valid is the run's own validation split)")
    p.add_argument("--shifts", default=",".join(SHIFT_GROUPS),
                   help=f"comma-separated, from {', '.join(SHIFT_GROUPS)} (stain: haematoxylin and eosin; each also by name) "
                        "(default: all)")
    p.add_argument("--limit", type=int, help="score a seeded sample of this many patches, stratified by label (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of that sample (default: 0)")
    p.add_argument("--out", help="folder to write <split>.csv and .json into (default: the run folder's robustness/; "
                   "required for the bundled model)")
    p.add_argument("--threshold", type=float, help="decision threshold of the accuracy (default: the run's own, else 0.5)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=False,
                   help="average the 8 symmetries of the square (default: off, one pass per patch and condition)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--batch-size", type=int, default=256)
    p.set_defaults(func=cmd_robustness)


def cmd_robustness(args: argparse.Namespace) -> int:
    from .robustness import run_robustness

    bar = None
    verbose_lines = not sys.stderr.isatty()  # a job's log (the dashboard's) gets one line per condition instead of a bar

    def start(total: int) -> None:
        nonlocal bar
        bar = _bar(total, "robustness")

    def progress(row: dict[str, Any]) -> None:
        if bar is not None:
            bar.set_description(f"{row['shift']} {row['strength']:+d}", refresh=False)
            bar.update(row["n"] if row["strength"] else 0)
        if verbose_lines:
            print(f"{row['shift']} {row['strength']:+d}: ROC-AUC {_fmt(row['roc_auc'], 3)}, ECE {_fmt(row['ece'], 3)}, "
                  f"accuracy {_fmt(row['accuracy'], 3)}", flush=True)

    try:
        report = run_robustness(args.run, args.data, args.split, out_dir=args.out, shifts=args.shifts, limit=args.limit,
                                seed=args.seed, tta=args.tta, threshold=args.threshold, device=args.device,
                                batch_size=args.batch_size, which=args.checkpoint, on_start=start, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    print(f"{report['dataset']}: {report['n']} patches, TTA {'on' if report['tta'] else 'off'}, "
          f"threshold {report['threshold']:.3f}, {report['seconds']:.0f} s")
    print(f"{'shift':<13} {'strength':>8} {'level':>7} {'ROC-AUC':>8} {'drop':>7} {'ECE':>6} {'Brier':>6} {'acc':>6} {'mean p':>7}")
    for row in report["table"]:
        print(f"{row['shift']:<13} {row['strength']:>+8d} {row['level']:>7.3g} {_fmt(row['roc_auc'], 3):>8} "
              f"{_fmt(row['auc_drop'], 3):>7} {row['ece']:>6.3f} {row['brier']:>6.3f} {row['accuracy']:>6.3f} "
              f"{row['mean_probability']:>7.3f}")
    card = report["card"]
    print(f"\nReport card (trustworthy while the ROC-AUC stays within {card['auc_drop']} of the unshifted one"
          f"{' and the calibration error at most ' + str(card['ece_limit']) if card['judges_ece'] else ''}):")
    for note in card["notes"]:
        print(f"  note: {note}")
    for entry in card["entries"]:
        print(f"  {entry['title']}: {entry['sentence']}")
    print(f"wrote {report['csv']} and {report['json']}")
    return 0


# -- explain ---------------------------------------------------------------------------------------

def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="class activation map overlays and centre focus per patch", description=(
        "Explain a run's predictions: one overlay PNG per patch (<id>.png: heat map over the patch, central "
        "32x32 region outlined) and explanations.csv (id, probability, centre_focus, method, layer, target) "
        "in --out. Centre focus is the share of the map inside the central region (1/9 for a uniform map)."))
    p.add_argument("--run", required=True, help=RUN_HELP)
    p.add_argument("--input", required=True, help="an image file, a folder of images, a Kaggle folder or PCam HDF5 data")
    p.add_argument("--out", required=True, help="folder for the PNGs and explanations.csv")
    p.add_argument("--method", default="gradcam",
                   help="gradcam (default), gradcam++, hirescam, xgradcam, layercam, eigencam or scorecam (slow)")
    p.add_argument("--layer", help="Grad-CAM layer (default: the model's first; `pcam models` lists them with resolutions)")
    p.add_argument("--target", choices=("tumour", "normal"), default="tumour", help="the class to explain")
    p.add_argument("--opacity", type=float, default=0.5, help="heat map opacity over the patch, 0 to 1")
    p.add_argument("--colormap", default="jet", help="matplotlib colormap of the heat map")
    p.add_argument("--scale", type=int, default=1, help="enlarge the PNGs this many times (nearest neighbour)")
    p.add_argument("--split", help="split of an HDF5 or Kaggle folder (default: test; for Kaggle data, valid is the run's own validation split)")
    p.add_argument("--limit", type=int, help="explain only the first N patches")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import open_patches, write_explanations
    from .loading import load_run_model

    loaded = load_run_model(args.run, checkpoint=args.checkpoint, device=args.device)
    model, config = loaded.model, loaded.config
    dataset = open_patches(args.input, args.split, valid_frac=config.data.valid_frac, seed=config.data.split_seed)
    total = min(len(dataset), args.limit) if args.limit else len(dataset)
    with _bar(total, "explain") as bar:
        result = write_explanations(model, dataset, args.out, model_name=config.model.name, method=args.method,
                                    layer=args.layer, target=args.target, opacity=args.opacity, cmap=args.colormap,
                                    scale=args.scale, limit=args.limit, batch_size=args.batch_size, progress=bar.update)
    print(f"wrote {result['rows']} overlays and {result['csv']} ({result['method']} at {result['layer']} "
          f"({result['resolution']}), target {result['target']}, model {config.model.name})")
    return 0


# -- runs ------------------------------------------------------------------------------------------

def _add_runs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="list training runs with status and best metrics")
    p.add_argument("--root", default=os.environ.get("PCAM_RUNS", str(Path(os.environ.get("PCAM_WORKSPACE", "workspace")) / "runs")),
                   help="folder holding run folders (default: $PCAM_WORKSPACE/runs or ./workspace/runs)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("stop", help="ask a running run to stop cleanly (it saves a checkpoint)")
    p.add_argument("--run", required=True)
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for it to stop")
    p.set_defaults(func=cmd_stop)


def cmd_runs(args: argparse.Namespace) -> int:
    from .runs import list_runs

    if not Path(args.root).is_dir():
        what = "is not a folder" if Path(args.root).exists() else "not found"
        raise FileNotFoundError(f"runs folder {what}: {args.root}")
    runs = list_runs(args.root)
    if args.json:
        _print_json([r.to_dict() for r in runs])
        return 0
    if not runs:
        print(f"no runs in {args.root}")
        return 0
    print(f"{'run':42} {'state':11} {'model':12} {'epochs':>7} {'best AUC':>9} {'acc':>7}")
    for r in runs:
        best = r.best or {}
        print(f"{r.run_id[:42]:42} {r.state:11} {r.model[:12]:12} {f'{r.epochs_done}/{r.epochs_total}':>7} "
              f"{_fmt(best.get('roc_auc')):>9} {_fmt(best.get('accuracy')):>7}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from .runs import RunDir, stop

    run = RunDir(args.run)
    if not run.exists():
        raise FileNotFoundError(f"{run.path} is not a run folder")
    if not stop(run, timeout=args.wait):
        print(f"{run.run_id} is not running (state: {run.status().get('state')})")
        return 0
    print(f"{run.run_id}: {run.status().get('state')}")
    return 0


# -- data ------------------------------------------------------------------------------------------

def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check every image of a dataset, file by file")
    p.add_argument("path", help="Kaggle folder, image folder, PCam HDF5 folder or one _x.h5 file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("convert", help="Kaggle layout -> PCam HDF5 layout (the fast path)")
    p.add_argument("--input", required=True, help="Kaggle folder (train/ and train_labels.csv)")
    p.add_argument("--out", required=True)
    p.add_argument("--valid-frac", type=float, default=0.1)
    p.add_argument("--test-frac", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("demo-data", help="generate the SYNTHETIC demo dataset (PCam HDF5 layout)")
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=4096)
    p.add_argument("--valid", type=int, default=1024)
    p.add_argument("--test", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("download", help="download PCam from Zenodo (record 2546921)")
    p.add_argument("--dest", required=True)
    p.add_argument("--splits", default="train,valid,test", help="comma-separated")
    p.add_argument("--base-url", default=None, help="where the files are served (default: Zenodo)")
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("models", help="list the registered models")
    p.set_defaults(func=cmd_models)


def cmd_verify(args: argparse.Namespace) -> int:
    from .data.verify import verify_path

    bar = _bar(None, "verify")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        report = verify_path(args.path, progress=progress)
    finally:
        bar.close()
    if args.json:
        _print_json({"target": report.target, "checked": report.checked, "ok": report.ok,
                     "problems": [{"file": f, "problem": p} for f, p in report.problems]})
    else:
        for where, what in report.problems:
            print(f"{where}: {what}")
        print(f"checked {report.checked} image(s) in {report.target}: "
              + ("all good" if report.ok else f"{len(report.problems)} problem(s)"))
    return 0 if report.ok else 1


def cmd_convert(args: argparse.Namespace) -> int:
    from .data.convert import convert_kaggle

    with _bar(None, "convert") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        counts = convert_kaggle(args.input, args.out, valid_frac=args.valid_frac, test_frac=args.test_frac,
                                seed=args.seed, progress=progress)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .data.demo import DemoSpec, make_demo_dataset

    for name in ("train", "valid", "test"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1")
    spec = DemoSpec(sizes=(("train", args.train), ("valid", args.valid), ("test", args.test)), seed=args.seed)
    with _bar(100, "demo-data", unit="%") as bar:
        counts = make_demo_dataset(args.out, spec, progress=lambda f, _msg: bar.update(round(f * 100) - bar.n))
    print(f"wrote SYNTHETIC demo data to {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .data.download import DEFAULT_BASE_URL, download_pcam

    bars: list[Any] = []

    def factory(name: str, total: int | None, initial: int) -> Callable[[int], None]:
        bar = _bar(total, name, unit="B", initial=initial)
        bars.append(bar)
        return bar.update

    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    try:
        paths = download_pcam(args.dest, splits=splits, base_url=args.base_url or DEFAULT_BASE_URL,
                              progress_factory=factory, timeout=args.timeout)
    finally:
        for bar in bars:
            bar.close()
    print(f"{len(paths)} file(s) ready in {args.dest}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import MODELS

    for spec in MODELS.values():
        layers = ", ".join(f"{name} ({size}x{size})" for name, size in spec.target_layers.items())
        print(f"{spec.name:14} {spec.description}\n{'':14} Grad-CAM layers: {layers}")
    return 0


# -- slides ----------------------------------------------------------------------------------------

def _add_slides(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("slide", help="tumour map, regions and report of whole-slide images", description=(
        "Score whole-slide images on PCam's definition: a 96-px window at 0.972 um/px per 32x32 cell (stride 32) or "
        "per 96x96 cell (stride 96), tissue only. A slide file writes into --out; a folder of slides writes "
        "--out/<slide name>/ per slide: heatmap.npy, heatmap.png, heatmap.tif, tissue.png, tumour_regions.geojson, "
        "tiles.csv and summary.json. --shard i/n splits the work across machines: a folder of at least n slides by "
        "slide, one slide (or fewer slides than shards) by its region tiles, each shard into OUT/shards/, the outputs "
        "written by the shard that completes the set (or by --merge). Under torchrun each process takes shard "
        "RANK/WORLD_SIZE on its own GPU (cuda:LOCAL_RANK) or the CPU: torchrun --standalone --nproc-per-node 4 -m pcam_core -- slide "
        "... See docs/slides.md."))
    p.add_argument("--run", help=RUN_HELP + " (not needed with --merge)")
    p.add_argument("--input", required=True, help="a slide file (SVS, NDPI, MRXS, tiled TIFF, ...) or a folder of them")
    p.add_argument("--out", required=True)
    p.add_argument("--stride", type=int, choices=(32, 96), default=32, help="cell size in PCam-scale pixels (96: 9x cheaper)")
    p.add_argument("--tta", action="store_true", help="average the 8 symmetries of the square (8x slower)")
    p.add_argument("--threshold", type=float, default=0.5, help="probability at which a cell counts as tumour")
    p.add_argument("--mpp", type=float, help="microns per level-0 pixel, for slides whose metadata lacks it")
    p.add_argument("--min-tissue", type=float, default=0.25, help="tissue share a cell needs to be scored")
    p.add_argument("--workers", type=int, default=2, help="region-reading worker processes (0: read in this process)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--shard", help="i/n: the i-th of n parts: of the sorted slide list when the folder has at least n slides, "
                   "else of each slide's region tiles (written to OUT/shards/, merged when all n are complete)")
    p.add_argument("--merge", action="store_true", help="write the outputs of sharded slides whose shards are all complete "
                   "(names the missing shards otherwise); scores nothing")
    p.add_argument("--resume", action="store_true", help="continue unfinished analyses in --out where they stopped")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.set_defaults(func=cmd_slide)

    p = sub.add_parser("slide-report", help="the printable HTML report of a slide analysis", description=(
        "Write the report of a finished `pcam slide` analysis: one self-contained HTML file (images embedded, print CSS "
        "for A4) with the map, the figures, the regions with crops, the model and its card. `pcam slide` writes it as "
        "report.html beside summary.json already; this writes it again (e.g. after the slide moved). See docs/slides.md."))
    p.add_argument("--analysis", required=True, help="an analysis folder (holding summary.json)")
    p.add_argument("--out", help="the HTML file to write (default: report.html in the analysis folder)")
    p.set_defaults(func=cmd_slide_report)

    p = sub.add_parser("slide-queue", help="run the dashboard's queue of slide analyses (the dashboard starts it)", description=(
        "Run the queued slide analyses of a workspace one at a time until the queue is empty, each as its own "
        "background job; leave at once when another runner is running. See docs/slides.md, 'The slide library'."))
    p.add_argument("--workspace", required=True, help="the workspace folder")
    p.set_defaults(func=cmd_slide_queue)

    p = sub.add_parser("demo-slide", help="write a SYNTHETIC pyramidal whole-slide TIFF with known tumour regions")
    p.add_argument("--out", required=True, help="folder for slide.tif, truth.png, truth.npy and truth.json")
    p.add_argument("--size", default="20000x16000", help="level-0 WIDTHxHEIGHT in pixels (at 0.243 um/px)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo_slide)


def cmd_slide(args: argparse.Namespace) -> int:
    from .predict import parse_shard
    from .slides.batch import analyse, merge

    if args.merge:
        return _report_slides(merge(args.input, args.out, threshold=args.threshold))
    if not args.run:
        raise ValueError("--run is required (a run folder, or 'bundled'), except with --merge")

    bars: list[Any] = []

    def progress_factory(name: str):
        def start(total: int, done: int) -> None:
            bars.append(_bar(total, name, unit="win", initial=done))

        return start, lambda n: bars[-1].update(n) if bars else None

    try:
        records = analyse(args.run, args.input, args.out, shard=parse_shard(args.shard), device=args.device, which=args.checkpoint,
                          resume=args.resume, threshold=args.threshold, progress_factory=progress_factory, stride=args.stride,
                          tta=args.tta, mpp=args.mpp, min_tissue=args.min_tissue, num_workers=args.workers, batch_size=args.batch_size)
    finally:
        for bar in bars:
            bar.close()
    return _report_slides(records)


def _report_slides(records: list[dict[str, Any]]) -> int:
    failed = [r for r in records if r["status"] == "failed"]
    for r in records:
        if r["status"] == "failed":
            print(f"failed: {r['slide']}: {r['error']}", file=sys.stderr)
            continue
        if r["status"] == "shard done":
            print(f"shard {r['shard']} done: {r['slide']} -> {r['folder']}/shards; outputs when the other shards are complete "
                  f"(not yet: {', '.join(r['missing'])})")
            continue
        s = r["summary"]
        print(f"{r['status']}: {r['slide']} -> {r['folder']}: score {s['slide_score']:.3f} (top-{s['top_k']} mean "
              f"{s['slide_topk_mean']:.3f}), {s['regions']} region(s), {s['tumour_area_mm2']:.3f} mm2, largest "
              f"{s['largest_diameter_mm']:.2f} mm ({s['size_class']}), {s['windows_scored']} windows in {s['seconds']:.1f} s"
              + (f", {len(s['skipped_regions'])} unreadable region(s) skipped" if s["skipped_regions"] else ""))
    if failed:
        print(f"{len(failed)} of {len(records)} slide(s) failed", file=sys.stderr)
        return 1
    return 0


def cmd_slide_report(args: argparse.Namespace) -> int:
    from .slides.report import write_report

    print(f"wrote {write_report(args.analysis, out=args.out)}")
    return 0


def cmd_slide_queue(args: argparse.Namespace) -> int:
    from .workspace.slides import SlideLibrary

    started = SlideLibrary(args.workspace).run_queue()
    print(f"queue empty: {started} analysis(es) started")
    return 0


def cmd_demo_slide(args: argparse.Namespace) -> int:
    from .slides.demo import DemoSlideSpec, make_demo_slide

    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must look like WIDTHxHEIGHT (e.g. 20000x16000), not {args.size!r}") from None
    truth = make_demo_slide(args.out, DemoSlideSpec(width=width, height=height, seed=args.seed))
    print(f"wrote a SYNTHETIC slide {Path(args.out) / truth['slide']} ({width}x{height} at {truth['mpp']} um/px, levels "
          f"{truth['levels']}) with {len(truth['regions'])} tumour region(s): "
          + ", ".join(f"{r['name']} {r['diameter_mm']:.2f} mm ({r['size_class']})" for r in truth["regions"]))
    return 0


# -- export ----------------------------------------------------------------------------------------

def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a run's model to TorchScript or ONNX (with WSInfer's config)", description=(
        "Export a run's model: it takes float32 RGB in [0, 1], shape (N, 3, 96, 96), with the normalisation inside, "
        "and returns the tumour probability (N,). The export is reloaded and compared with PyTorch at once; the "
        "report goes to FILE.json. TorchScript also writes STEM-wsinfer/ (torchscript_model.pt, config.json) for "
        "WSInfer and QuPath's WSInfer extension. See docs/export.md."))
    p.add_argument("--run", required=True, help=RUN_HELP)
    p.add_argument("--format", required=True, choices=("torchscript", "onnx"))
    p.add_argument("--out", required=True, help="the model file to write (its folder must exist)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="best falls back to last (default: best)")
    p.add_argument("--check-data", help="patches for the parity check: a Kaggle, HDF5 or image folder "
                                        "(default: 64 patches of random pixels)")
    p.add_argument("--check-split", help="split of --check-data (default: train)")
    p.add_argument("--check-limit", type=int, default=256, help="use at most this many patches of --check-data (default: 256)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run

    check, source = None, None
    if args.check_data:
        from .data.loader import open_dataset

        if args.check_limit < 1:
            raise ValueError(f"--check-limit must be at least 1, not {args.check_limit}")
        dataset = open_dataset(args.check_data, args.check_split)
        n = min(len(dataset), args.check_limit)
        if n == 0:
            raise ValueError(f"--check-data {args.check_data}: no patches to check with")
        check = dataset.read_pixels(range(n))
        source = f"{args.check_data}" + (f" ({args.check_split})" if args.check_split else "") + f", first {n}"
    report = export_run(args.run, args.format, args.out, which=args.checkpoint, check=check, check_source=source)
    par = report["parity"]
    print(f"wrote {report['file']} ({report['format']}, model {report['model']}, epoch {report['epoch']}, from {report['checkpoint']})")
    print(f"parity with PyTorch on {par['n']} patches ({par['source']}), "
          f"batch sizes {', '.join(map(str, par['batch_sizes']))}: max |diff| {par['max_abs_diff']:.2e}, "
          f"mean {par['mean_abs_diff']:.2e} ({par['runtime']})")
    if "wsinfer" in report:
        w = report["wsinfer"]
        print(f"wrote {w['folder']}/ for WSInfer and QuPath (two-class logits; max |diff| of softmax {w['parity']['max_abs_diff']:.2e})")
    print(f"report: {report['file']}.json")
    return 0


# -- serve -----------------------------------------------------------------------------------------

# what `pcam_core.serve.Limits` defaults to, for --help (importing serve loads torch and FastAPI; tests check they agree)
SERVE_DEFAULTS = {"max_file_mb": 2.0, "max_request_mb": 64.0, "max_batch": 256, "batch_wait_ms": 2.0}
SERVE_TOKEN_ENV = "PCAM_API_TOKEN"


def _add_serve(sub: argparse._SubParsersAction) -> None:
    L = SERVE_DEFAULTS
    p = sub.add_parser("serve", help="an HTTP API that scores patches and slides with a run (FastAPI)", description=(
        "Serve a run's model over HTTP: POST /v1/predict (image files), POST /v1/slides and GET /v1/slides/ID "
        "(whole-slide analyses of files in --slides-dir), GET /v1/health; OpenAPI docs at /docs. See docs/serve.md."))
    p.add_argument("--run", required=True, help=RUN_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help=_default(8000))
    p.add_argument("--token", help=f"bearer token every route but /v1/health requires (default: ${SERVE_TOKEN_ENV}; unset: no token)")
    p.add_argument("--slides-dir", help="the only folder whose slides POST /v1/slides may analyse (default: slide analysis off)")
    p.add_argument("--work-dir", default=str(Path(os.environ.get("PCAM_WORKSPACE", "workspace")) / "serve"),
                   help="where slide analyses are written (default: $PCAM_WORKSPACE/serve or ./workspace/serve)")
    p.add_argument("--max-file-mb", type=float, default=L["max_file_mb"], help="largest image file accepted " + _default(L["max_file_mb"]))
    p.add_argument("--max-request-mb", type=float, default=L["max_request_mb"], help="largest request body " + _default(L["max_request_mb"]))
    p.add_argument("--max-batch", type=int, default=L["max_batch"], help="most patches in one forward pass " + _default(L["max_batch"]))
    p.add_argument("--batch-wait-ms", type=float, default=L["batch_wait_ms"],
                   help="how long a forward pass waits for other requests to join it " + _default(L["batch_wait_ms"]))
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import Limits, create_app, serve

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, not {args.port}")
    limits = Limits(**{name: getattr(args, name) for name in SERVE_DEFAULTS})
    token = args.token or os.environ.get(SERVE_TOKEN_ENV) or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        print(f"warning: listening on {args.host} without a token: anyone who can reach it can use it", file=sys.stderr)
    app = create_app(args.run, token=token, slides_dir=args.slides_dir, work_dir=args.work_dir, device=args.device, limits=limits)
    print(f"serving {args.run} on http://{args.host}:{args.port} (docs at /docs)" + (", token required" if token else ""), file=sys.stderr)
    serve(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning")
    return 0


# -- entry point -----------------------------------------------------------------------------------

def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pcam", description="Metastatic-tissue detection on PatchCamelyon patches.")
    parser.add_argument("--version", action="version", version=f"pcam_core {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more, and show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_data(sub)
    _add_train(sub)
    _add_eval_predict(sub)
    _add_robustness(sub)
    _add_explain(sub)
    _add_runs(sub)
    _add_slides(sub)
    _add_export(sub)
    _add_serve(sub)
    return parser


def clean_message(err: BaseException) -> str:
    """One readable line for an error, also when it was re-raised from a DataLoader worker (whose
    message then carries the worker's traceback)."""
    text = str(err).strip()
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # every failure a user can cause ends as one clear line, not a traceback
        if args.verbose or os.environ.get("PCAM_DEBUG"):
            traceback.print_exc()
        print(f"error: {clean_message(err)}", file=sys.stderr)
        return EXIT_ERROR


__all__ = ["build_config", "main", "make_parser"]
