"""`pcam robustness`: a run scored under graded image shifts, and its report card."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .common import RUN_HELP, fmt, progress_bar, scoring_options, shared


def add(sub: argparse._SubParsersAction) -> None:
    from ..shifts import SHIFT_GROUPS

    p = sub.add_parser("robustness", parents=shared("checkpoint", "device", "tta", "batch_size", "threshold"), help="score a run on a labelled split under graded image shifts", description=(
        "Score a run on a labelled split under graded shifts (stain amounts, stain normalisation to another lab, "
        "blur, JPEG, brightness, contrast): ROC-AUC, calibration error, Brier score and accuracy per shift and "
        "strength, and a report card of where the model stops being trustworthy (ROC-AUC more than 0.05 below "
        "the unshifted one by more than its own error (a paired DeLong interval), or calibration error above 0.1). Writes robustness/<split>.csv and .json into the "
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
    p.set_defaults(func=cmd_robustness)


def cmd_robustness(args: argparse.Namespace) -> int:
    from ..robustness import run_robustness

    bar = None
    verbose_lines = not sys.stderr.isatty()  # a job's log (the dashboard's) gets one line per condition instead of a bar

    def start(total: int) -> None:
        nonlocal bar
        bar = progress_bar(total, "robustness")

    def progress(row: dict[str, Any]) -> None:
        if bar is not None:
            bar.set_description(f"{row['shift']} {row['strength']:+d}", refresh=False)
            bar.update(row["n"] if row["strength"] else 0)
        if verbose_lines:
            print(f"{row['shift']} {row['strength']:+d}: ROC-AUC {fmt(row['roc_auc'], 3)}, ECE {fmt(row['ece'], 3)}, "
                  f"accuracy {fmt(row['accuracy'], 3)}", flush=True)

    try:
        report = run_robustness(args.run, args.data, args.split, scoring_options(args), out_dir=args.out, shifts=args.shifts,
                                limit=args.limit, seed=args.seed, on_start=start, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    print(f"{report['dataset']}: {report['n']} patches, TTA {'on' if report['tta'] else 'off'}, "
          f"threshold {report['threshold']:.3f}, {report['seconds']:.0f} s")
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{'shift':<13} {'strength':>8} {'level':>7} {'ROC-AUC':>8} {'drop (95% interval)':>23} {'ECE':>6} {'Brier':>6} "
          f"{'acc':>6} {'mean p':>7}")
    for row in report["table"]:
        low, high = row.get("auc_drop_low"), row.get("auc_drop_high")
        drop = fmt(row["auc_drop"], 3) + (f" ({low:+.3f} {high:+.3f})" if low is not None else "")
        print(f"{row['shift']:<13} {row['strength']:>+8d} {row['level']:>7.3g} {fmt(row['roc_auc'], 3):>8} "
              f"{drop:>23} {row['ece']:>6.3f} {row['brier']:>6.3f} {row['accuracy']:>6.3f} {row['mean_probability']:>7.3f}")
    card = report["card"]
    print(f"\nReport card (trustworthy while the ROC-AUC stays within {card['auc_drop']} of the unshifted one, or its drop"
          " within its own error,"
          f"{' and the calibration error at most ' + str(card['ece_limit']) if card['judges_ece'] else ''}):")
    for note in card["notes"]:
        print(f"  note: {note}")
    for entry in card["entries"]:
        print(f"  {entry['title']}: {entry['sentence']}")
    print(f"wrote {report['csv']} and {report['json']}")
    return 0

