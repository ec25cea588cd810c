"""`pcam runs` and `pcam stop`: the training runs of a folder."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .common import fmt, print_json


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="list training runs with status and best metrics", description=(
        "List the run folders directly inside a folder, newest first: state, model, epochs done and planned, best "
        "validation ROC-AUC and accuracy (a cross-validation's: out of fold). `pcam train --out runs/first` makes a "
        "run inside runs/: list it with --root runs."))
    p.add_argument("--root", default=os.environ.get("PCAM_RUNS", str(Path(os.environ.get("PCAM_WORKSPACE", "workspace")) / "runs")),
                   help="folder holding run folders (default: $PCAM_WORKSPACE/runs or ./workspace/runs)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("stop", help="ask a running run to stop cleanly (it saves a checkpoint)", description=(
        "Ask a running run to stop (SIGTERM to its launcher or trainer, as the dashboard's Stop): it saves a checkpoint "
        "and ends as 'stopped'; `pcam train --out RUN --resume` goes on from there."))
    p.add_argument("--run", required=True, help="the run folder (what `pcam train --out` was given)")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for it to stop (default: 60)")
    p.set_defaults(func=cmd_stop)


def cmd_runs(args: argparse.Namespace) -> int:
    from ..runs import list_runs

    if not Path(args.root).is_dir():
        what = "is not a folder" if Path(args.root).exists() else "not found"
        raise FileNotFoundError(f"runs folder {what}: {args.root} (--root names the folder that holds your run folders: "
                                f"for `pcam train --out runs/first`, --root runs)")
    runs = list_runs(args.root)
    if args.json:
        print_json([r.to_dict() for r in runs])
        return 0
    if not runs:
        print(f"no runs in {args.root}")
        return 0
    print(f"{'run':42} {'state':11} {'model':12} {'epochs':>7} {'best AUC':>9} {'acc':>7}")
    for r in runs:
        best = r.best or {}
        print(f"{r.run_id[:42]:42} {r.state:11} {r.model[:12]:12} {f'{r.epochs_done}/{r.epochs_total}':>7} "
              f"{fmt(best.get('roc_auc')):>9} {fmt(best.get('accuracy')):>7}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from ..runs import RunDir, stop

    run = RunDir(args.run)
    if not run.exists():
        raise FileNotFoundError(f"{run.path} is not a run folder")
    if not stop(run, timeout=args.wait):
        print(f"{run.run_id} is not running (state: {run.status().get('state')})")
        return 0
    print(f"{run.run_id}: {run.status().get('state')}")
    return 0

