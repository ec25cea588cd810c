"""How much would more real patches give? A learning curve on one fold of the bundled ensemble's cross-validation.
(issue 24: the best model the real patches we have can give)

The bundled recipe trained on fewer of fold k's training patches (a stratified random subset of each size, the smaller
ones inside the larger, seeded), each validated on the same held-out fold as the bundled member of fold k, which
trained on all of them. Each size is a fold run exactly as `pcam train --folds K` trains one (its last epoch kept), the
dropped patches given as a label-overrides file (`artefact`: dropped from training; the held-out fold is untouched),
then scored one pass and with TTA. Printed: each size's ROC-AUC on the held-out fold, paired against the bundled
member's (DeLong), and the gain per doubling of the training patches.

    python benchmarks/learning_curve.py --data ../shared/data/pcam-real-dev --work /tmp/lc [--sizes 800 1600] [--fold 0]

Each size is written to WORK/keep<N>/folds/fold-<k>/ (as a cross-validation's fold), so `benchmarks/compare_oof.py
WORK/keep<N> pcam_core/bundled --folds k` reads it too; a size already scored there is kept. The recipe's options
(e.g. `--epochs 54`, the bundled recipe's) come after `--`, as `pcam train` takes them. At 54 epochs a size of N
patches takes about N / 3,200 of a bundled fold's 20 min on this 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pcam_core.cli import make_parser  # noqa: E402
from pcam_core.cli.train import build_config  # noqa: E402
from pcam_core.crossval import score_fold  # noqa: E402
from pcam_core.runs import RunDir  # noqa: E402
from pcam_core.stats import paired_auc_test  # noqa: E402
from pcam_core.train import fit  # noqa: E402

MODES = {"one pass": "probability", "TTA": "probability_tta"}


def subsets(train: pd.DataFrame, sizes: list[int], seed: int) -> dict[int, set[str]]:
    """The ids kept at each size: stratified by label, each size's inside the next larger one's."""
    rng = np.random.default_rng(seed)
    order = {label: rng.permutation(group["id"].to_numpy()) for label, group in train.groupby("label")}
    return {n: {i for label, ids in order.items() for i in ids[:round(n * len(ids) / len(train))]} for n in sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="the Kaggle folder the reference was cross-validated on")
    parser.add_argument("--work", required=True, type=Path, help="where the runs and the overrides files go")
    parser.add_argument("--reference", type=Path, default=REPO / "pcam_core" / "bundled",
                        help="a folder with the cross-validation's oof_predictions.csv (default: the bundled ensemble)")
    parser.add_argument("--fold", type=int, default=0, help="the fold held out (default: 0)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[800, 1600], help="training patches kept (default: 800 1600)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsets")
    args, train_args = parser.parse_known_args()
    train_args = [a for a in train_args if a != "--"]
    reference = pd.read_csv(args.reference / "oof_predictions.csv", dtype={"id": str})
    folds = int(reference["fold"].max()) + 1
    held, train = reference[reference["fold"] == args.fold], reference[reference["fold"] != args.fold]
    if any(not 0 < n < len(train) for n in args.sizes):
        raise SystemExit(f"--sizes must lie between 1 and {len(train) - 1}, the training patches of fold {args.fold}")
    kept = subsets(train, sorted(args.sizes), args.seed)
    rows = []
    for n in sorted(args.sizes):
        folder = args.work / f"keep{n}"
        member = RunDir(folder / "folds" / f"fold-{args.fold}")
        overrides = args.work / f"drop-keep{n}.csv"
        if not member.oof_predictions_path.exists():
            args.work.mkdir(parents=True, exist_ok=True)
            dropped = train[~train["id"].isin(kept[n])]
            pd.DataFrame({"id": dropped["id"], "verdict": "artefact"}).to_csv(overrides, index=False)
            config = build_config(make_parser().parse_args(["train", "--data", str(args.data), "--out", str(member.path),
                                                             "--label-overrides", str(overrides), *train_args]))
            config = config.replace(data={"folds": folds, "fold": args.fold}, name=f"learning curve: {n} patches")
            fit(config, member.path, resume=member.exists())
            score_fold(member, member.config())
        scored = pd.read_csv(member.oof_predictions_path, dtype={"id": str}).merge(held, on="id", suffixes=("", "_ref"))
        if len(scored) != len(held) or not (scored["label"] == scored["label_ref"]).all():
            raise SystemExit(f"{member.path}: its held-out patches are not the reference's fold {args.fold}")
        for mode, column in MODES.items():
            test = paired_auc_test(scored["label"].to_numpy(), scored[column].to_numpy(), scored[f"{column}_ref"].to_numpy())
            rows.append({"patches": n, "scoring": mode, "roc_auc": test["auc_a"], "all": test["auc_b"],
                         "difference": test["difference"], "low": test["low"], "high": test["high"], "p": test["p_value"]})
    table = pd.DataFrame(rows)
    print(f"fold {args.fold}'s {len(held)} held-out patches; the reference trained on all {len(train)} of the others")
    with pd.option_context("display.width", 200, "display.float_format", "{:.4f}".format):
        print(table.to_string(index=False))
    for mode in MODES:
        points = table[table["scoring"] == mode]
        sizes, aucs = [*points["patches"], len(train)], [*points["roc_auc"], points["all"].iloc[0]]
        gains = [(b - a) / math.log2(m / n) for n, m, a, b in zip(sizes, sizes[1:], aucs, aucs[1:])]
        steps = ", ".join(f"{n}->{m}: {g:+.4f}" for n, m, g in zip(sizes, sizes[1:], gains))
        line = f"{mode}: ROC-AUC gained per doubling of the training patches, {steps}"
        if gains[-1] > 0:  # curves flatten: the last doubling's rate, held, is the most the next doublings can give
            line += (f"; at the last rate, 0.975 needs {2 ** ((0.975 - aucs[-1]) / gains[-1]):.1f}x the {len(train)} "
                     "patches (more, as curves flatten)") if aucs[-1] < 0.975 else ""
        print(line)
    (args.work / "learning_curve.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
