"""`pcam evaluate`, `predict`, `calibrate`, `compare` and `merge`: a run scored on patches."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..metrics import THRESHOLD_METHODS
from ..triage import DEFAULT_FPR
from .common import RUN_HELP, fmt, progress_bar, scoring_options, shared

SCORING = ("checkpoint", "device", "tta", "batch_size", "workers", "threshold")


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", parents=shared(*SCORING), help="score a run on a labelled split", description=(
        "Score a run on a labelled split: writes --out (metrics JSON with ROC, PR and calibration curves and 95% "
        "intervals) and <out stem>_predictions.csv (id,label,probability,index) beside it. The threshold is the run's "
        "own unless --threshold gives one, or --threshold-method chooses one on the run's validation predictions."))
    p.add_argument("--run", required=True, help=RUN_HELP)
    p.add_argument("--data", required=True, help="PCam HDF5 folder or Kaggle folder")
    p.add_argument("--split", default="test", help="train, valid or test (for Kaggle data, valid is the run's own validation "
                                                   "split; default: test)")
    p.add_argument("--out", required=True, help="the metrics JSON to write (its folder is made; the predictions CSV beside it)")
    p.add_argument("--threshold-method", choices=THRESHOLD_METHODS, default="fixed",
                   help="fixed: --threshold (else the run's own); youden: the ROC point maximising sensitivity + specificity; "
                        "sensitivity: the highest threshold reaching --target-sensitivity; both chosen on the run's "
                        "validation predictions, never on the data scored (default: fixed)")
    p.add_argument("--target-sensitivity", type=float, metavar="S", help="the sensitivity --threshold-method sensitivity reaches")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", parents=shared(*SCORING), help="write a Kaggle submission CSV", description=(
        "Predict the tumour probability of every image in --input (an image file, a folder of images, a Kaggle "
        "folder's test/ split, or an HDF5 split) and write Kaggle's format: id,label with label the probability. "
        "Grayscale, RGBA and 16-bit images are converted to 8-bit RGB, as the Predict page and the API convert them, "
        "with a note."))
    p.add_argument("--run", required=True, help=RUN_HELP)
    p.add_argument("--input", required=True, help="an image file, a folder of images, a Kaggle folder or PCam HDF5 data")
    p.add_argument("--out", required=True, help="the submission CSV to write (id,label; its folder is made)")
    p.add_argument("--split", help="split of an HDF5 or Kaggle folder (default: test)")
    p.add_argument("--skip-bad", action="store_true", help="leave unreadable images out and list them, instead of stopping")
    p.add_argument("--shard", help="i/n: predict only the i-th of n equal parts (merge them with `pcam merge`)")
    p.add_argument("--results", help="also write a results CSV: id, probability (and probability_calibrated when the run has "
                                     "a temperature), uncertainty (spread of the 8 TTA views), call (at --threshold), notes")
    p.add_argument("--triage", type=float, metavar="SENSITIVITY",
                   help="calls by split-conformal triage at this target sensitivity (e.g. 0.98): normal, refer or tumour, "
                        "fitted on the run's validation predictions (needs --results)")
    p.add_argument("--triage-fpr", type=float, default=DEFAULT_FPR,
                   help=f"false-positive rate the triage's tumour calls may have on normal patches (default: {DEFAULT_FPR})")
    p.add_argument("--calibrated", action="store_true",
                   help="the submission's label is the calibrated probability (the run's temperature, `pcam calibrate`)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("calibrate", help="fit a run's temperature on its validation predictions", description=(
        "Fit temperature scaling on the run's validation predictions and write calibration.json into the run folder "
        "(training does this when a run ends). Prints the temperature and the NLL, ECE and Brier score before and after."))
    p.add_argument("--run", required=True, help="training run folder (the bundled model's temperature ships with it)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("scope", parents=shared("device", "batch_size", "checkpoint"),
                       help="fit a run's out-of-scope guard on its own data", description=(
        "Fit the out-of-scope guard (docs/scope.md) of a run on its training data (statistics) and validation data "
        "(threshold: about 5 %% of them flagged) and write scope.npz into the run folder (training does this when a run "
        "ends). The bundled model's guard ships with it."))
    p.add_argument("--run", required=True, help="training run folder")
    p.add_argument("--limit", type=int, default=5000, help="patches of each split used at most (default: 5000)")
    p.set_defaults(func=cmd_scope)

    p = sub.add_parser("compare", parents=shared(*SCORING), help="compare runs on the same labelled split (paired DeLong test)",
                       description=(
        "Score each run on the same split, join on patch ids, and print each run's metrics with 95% intervals (each at "
        "its own threshold, or all at --threshold) and the paired DeLong test of each run's ROC-AUC against the first run's."))
    p.add_argument("--runs", nargs="+", required=True, help="two or more run folders (or `bundled`)")
    p.add_argument("--data", required=True, help="PCam HDF5 folder or Kaggle folder")
    p.add_argument("--split", default="test", help="the labelled split every run is scored on (default: test)")
    p.add_argument("--out", help="also write the comparison as JSON")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("merge", help="merge shard submissions into one")
    p.add_argument("parts", nargs="+", help="the shard submissions (`pcam predict --shard i/n --out ...`)")
    p.add_argument("--out", required=True, help="the merged submission CSV to write")
    p.set_defaults(func=cmd_merge)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..predict import evaluate_run

    bar = None

    def start(n: int) -> None:
        nonlocal bar
        bar = progress_bar(n, "evaluate")

    try:
        report = evaluate_run(args.run, args.data, args.split, args.out, scoring_options(args), threshold_method=args.threshold_method,
                              target=args.target_sensitivity, on_start=start, progress=lambda n: bar.update(n) if bar else None)
    finally:
        if bar is not None:
            bar.close()
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    m = report["metrics"]
    c = m["confusion"]
    print(f"{report['dataset']}: n={m['n']}, threshold {m['threshold']:.3f} (tn {c['tn']}, fp {c['fp']}, fn {c['fn']}, tp {c['tp']})")
    print(_interval_lines(m, report["intervals"]))
    cal = report["calibration"]
    if cal:
        print(f"calibration ({cal['describe']}): ECE {cal['before']['ece']:.4f} -> {cal['after']['ece']:.4f}, "
              f"Brier {cal['before']['brier']:.4f} -> {cal['after']['brier']:.4f}")
    else:
        print(f"calibration: none fitted (ECE {m['ece']:.4f}, Brier {m['brier']:.4f}); `pcam calibrate --run RUN` fits one")
    print(f"wrote {args.out} and {report['predictions_file']}")
    return 0


INTERVAL_NAMES = {"roc_auc": "ROC-AUC", "pr_auc": "PR-AUC", "accuracy": "accuracy", "recall": "sensitivity",
                  "specificity": "specificity", "precision": "precision", "f1": "F1", "brier": "Brier"}


def _interval_lines(metrics: dict[str, Any], intervals: dict[str, Any], indent: str = "  ") -> str:
    """One line per headline metric: its value and 95% interval, "0.951 (0.930-0.970)", and the method."""
    from ..stats import format_interval

    return "\n".join(f"{indent}{INTERVAL_NAMES[k]:<12} {format_interval(intervals[k]) if intervals.get(k) else fmt(metrics.get(k), 3)}"
                     f"{'  [' + intervals[k]['method'] + ']' if intervals.get(k) else ''}"
                     for k in INTERVAL_NAMES if k in intervals or k in metrics)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..bundled import held_out_words
    from ..calibration import calibrate_run, load_calibration
    from ..runs import resolve_run

    if resolve_run(args.run).bundled:  # shipped with the package, fitted by scripts/bundled_calibration.py: shown, not rewritten
        cal = load_calibration(args.run)
        print(f"the bundled model's calibration ships with it: {cal.describe}, fitted on its {cal.n} {held_out_words()} patches")
        for name in ("nll", "ece", "brier"):
            print(f"  {name.upper() if name != 'brier' else 'Brier':<6} {cal.before[name]:.4f} -> {cal.after[name]:.4f}")
        return 0
    folder = resolve_run(args.run).folder
    modes = (False, True) if folder.valid_predictions_tta_path.exists() else (False,)  # a cross-validated run: both modes
    for tta in modes:
        cal = calibrate_run(args.run, tta=tta)
        print(f"{cal.describe} fitted on {cal.n} validation patches ({cal.fitted_on})")
        for name in ("nll", "ece", "brier"):
            print(f"  {name.upper() if name != 'brier' else 'Brier':<6} {cal.before[name]:.4f} -> {cal.after[name]:.4f}")
        print(f"wrote {folder.calibration_tta_path if tta else folder.calibration_path}")
        if cal.warning:
            print(f"warning: {cal.warning}", file=sys.stderr)
    return 0


def cmd_scope(args: argparse.Namespace) -> int:
    from ..loading import load_run_model
    from ..scope import fit_run_scope

    loaded = load_run_model(args.run, checkpoint=args.checkpoint, device=args.device, posthoc=False)  # the guard it replaces may be damaged
    if loaded.run.bundled:
        raise ValueError("the bundled model's guard ships with it (scripts/bundled_scope.py); give a run folder of yours")
    if args.limit < 20:
        raise ValueError(f"--limit {args.limit}: the guard needs at least 20 patches of each split")
    scope = fit_run_scope(loaded.run.folder, loaded.model, loaded.config, limit=args.limit, batch_size=args.batch_size)
    print(f"out-of-scope guard of {loaded.model_name} ({', '.join(scope.layers)}): {scope.n_fit} training patches, "
          f"threshold {scope.threshold:.3f} flags {scope.rate:.1%} of {scope.n_calibration} validation patches")
    print(f"wrote {loaded.run.folder.scope_path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..fileio import atomic_write_json
    from ..data.loader import dataset_for_split
    from ..loading import load_run_model
    from ..predict import predict_dataset
    from ..stats import compare_predictions

    if len(set(args.runs)) < 2:
        raise ValueError(f"--runs needs two or more different runs, got {' '.join(args.runs)}")
    options = scoring_options(args)
    frames, thresholds = {}, {}
    for run in args.runs:
        loaded = load_run_model(run, checkpoint=options.checkpoint, device=options.device)
        dataset = dataset_for_split(args.data, args.split, loaded.config)
        if not dataset.has_labels:
            raise ValueError(f"{dataset.describe()} has no labels to compare runs on")
        with progress_bar(len(dataset), f"score {Path(run).name}") as bar:
            preds = predict_dataset(loaded.model, dataset, device=loaded.device, tta=options.tta, batch_size=options.batch_size,
                                    num_workers=options.workers, progress=bar.update).predictions
        frames[str(run)] = preds.to_frame()
        thresholds[str(run)] = options.threshold_or(loaded.threshold)
    result = compare_predictions(frames, thresholds)
    print(f"{result['n']} patches of {args.data} ({args.split}), 95% intervals")
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    for name, row in result["runs"].items():
        print(f"{name} (threshold {row['metrics']['threshold']:.3f}):")
        print(_interval_lines(row["metrics"], row["intervals"]))
    for name, test in result["paired_tests"].items():
        print(f"ROC-AUC {name} - {result['reference']}: {test['difference']:+.4f} ({test['low']:+.4f} to {test['high']:+.4f}), "
              f"paired DeLong z {test['z']:.2f}, p = {test['p_value']:.3g}")
    if args.out:
        atomic_write_json(args.out, {k: v for k, v in result.items() if k not in ("labels", "probabilities")})
        print(f"wrote {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..predict import predict_submission
    from ..sharding import parse_shard

    shard = parse_shard(args.shard)
    bar = None

    def start(n: int) -> None:
        nonlocal bar
        bar = progress_bar(n, "predict")

    try:
        result = predict_submission(args.run, args.input, args.out, scoring_options(args), split=args.split, skip_bad=args.skip_bad,
                                    shard=shard, results=args.results, triage=args.triage, triage_fpr=args.triage_fpr,
                                    calibrated=args.calibrated, on_start=start, progress=lambda n: bar.update(n) if bar else None)
    finally:
        if bar is not None:
            bar.close()
    print(f"wrote {result['rows']} predictions to {result['out']} ({result['dataset']}, model {result['model']}, "
          f"TTA {'on' if result['tta'] else 'off'}{', shard ' + result['shard'] if result['shard'] else ''}"
          f"{', calibrated (' + result['calibration'] + ')' if result['calibrated'] else ''})")
    if result["calibration_warning"] and (result["calibrated"] or result.get("results")):  # calibrated probabilities written
        print(f"warning: {result['calibration_warning']}", file=sys.stderr)
    if result["converted"]:
        notes = sorted({note for _, note in result["converted"]})
        print(f"note: {len(result['converted'])} image(s) converted to 8-bit RGB, as the Predict page and the API convert them: "
              + "; ".join(notes) + (" (each in the results file's notes)" if result.get("results") else ""), file=sys.stderr)
    if result.get("results"):
        print(f"wrote the results (probability, uncertainty, call at threshold {result['threshold']:.3f}) to {result['results']}")
        if result.get("out_of_scope") is not None:
            print(f"out of the model's scope: {result['out_of_scope']} of {result['rows']} patch(es), called refer "
                  "(unlike the lymph-node H&E the model was trained on: docs/scope.md)")
        elif not result.get("scope_checked"):
            from ..scope import no_guard_warning

            print(f"warning: run {no_guard_warning(args.run)}", file=sys.stderr)
    triage = result.get("triage")
    if triage:
        calls = triage["calls"]
        crossed = (f" (the thresholds cross: one cut at {triage['tumour_above']:.4f}, no patch referred as uncertain)"
                   if triage["crossed"] else "")
        print(f"triage at target sensitivity {triage['target_sensitivity']}: normal below {triage['normal_below']:.4f}, "
              f"tumour above {triage['tumour_above']:.4f}{crossed}")
        outside = result.get("out_of_scope") or 0  # referred whatever their probability
        print(f"referral rate {triage['referral_rate']:.1%}: {calls['refer']} referred"
              + (f" ({outside} of them out of scope)" if outside else "") + f", {calls['normal']} normal, {calls['tumour']} tumour")
        print(triage["guarantee"])
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} image(s), listed in {result['skipped_file']}:", file=sys.stderr)
        for name, reason in result["skipped"]:
            print(f"  {name}: {reason}", file=sys.stderr)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from ..predict import merge_submissions

    rows = merge_submissions(args.parts, args.out)
    print(f"merged {len(args.parts)} shard(s) into {args.out}: {rows} rows")
    return 0

