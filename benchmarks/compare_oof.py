"""Two cross-validations of the same folds, compared patch by patch: a recipe variant against the bundled ensemble
(or any two). Issue 24's recipe experiments are judged this way (docs/recipe-experiments.md).

Each side is a cross-validation run folder (`pcam train --folds K --out W`: its `folds/fold-<k>/oof_predictions.csv`,
so a job stopped after some folds can be compared on those) or a folder holding one `oof_predictions.csv` with a
`fold` column (the bundled ensemble: pcam_core/bundled). Only the folds both sides hold are compared, and they must
hold the same patches with the same labels (the same data, `--folds K` and split seed): anything else is refused.

For every fold and for those folds pooled: ROC-AUC of both, one pass and TTA, with the paired DeLong difference
(95 % interval, p) of the variant minus the reference.

    python benchmarks/compare_oof.py /tmp/pcam-bundled-54/cv [pcam_core/bundled] [--folds 0 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pcam_core.stats import paired_auc_test  # noqa: E402

MODES = {"one pass": "probability", "TTA": "probability_tta"}


def out_of_fold(folder: Path) -> pd.DataFrame:
    """Every out-of-fold prediction a cross-validation folder holds, with its fold."""
    fold_files = sorted((folder / "folds").glob("fold-*/oof_predictions.csv"))
    if fold_files:
        frame = pd.concat([pd.read_csv(path, dtype={"id": str}) for path in fold_files])
    elif (folder / "oof_predictions.csv").exists():
        frame = pd.read_csv(folder / "oof_predictions.csv", dtype={"id": str})
    else:
        raise SystemExit(f"{folder}: no out-of-fold predictions (folds/fold-<k>/oof_predictions.csv or oof_predictions.csv)")
    missing = {"id", "label", "fold", *MODES.values()} - set(frame.columns)
    if missing:
        raise SystemExit(f"{folder}: its out-of-fold predictions lack the column(s) {', '.join(sorted(missing))}")
    return frame


def paired(variant: pd.DataFrame, reference: pd.DataFrame, folds: list[int]) -> pd.DataFrame:
    """One row per fold and one for the folds pooled, per scoring mode."""
    rows = []
    for name, subset in [*((f"fold {k}", [k]) for k in folds), *((("pooled", folds),) if len(folds) > 1 else ())]:
        a, b = variant[variant["fold"].isin(subset)], reference[reference["fold"].isin(subset)]
        joined = a.merge(b, on="id", suffixes=("_v", "_r"))
        if not (len(joined) == len(a) == len(b)) or not (joined["fold_v"] == joined["fold_r"]).all():
            raise SystemExit(f"{name}: the two sides do not hold the same patches ({len(a)} and {len(b)}, {len(joined)} "
                             "shared): compare cross-validations of the same data, --folds and split seed")
        if not (joined["label_v"] == joined["label_r"]).all():
            raise SystemExit(f"{name}: the two sides disagree on the labels of the same patch ids")
        labels = joined["label_v"].to_numpy()
        for mode, column in MODES.items():
            test = paired_auc_test(labels, joined[f"{column}_v"].to_numpy(), joined[f"{column}_r"].to_numpy())
            rows.append({"folds": name, "scoring": mode, "patches": len(joined), "variant": test["auc_a"],
                         "reference": test["auc_b"], "difference": test["difference"], "low": test["low"],
                         "high": test["high"], "p": test["p_value"]})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", type=Path)
    parser.add_argument("reference", type=Path, nargs="?", default=REPO / "pcam_core" / "bundled")
    parser.add_argument("--folds", type=int, nargs="*", help="the folds to compare (default: every fold both hold)")
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()
    variant, reference = out_of_fold(args.variant), out_of_fold(args.reference)
    shared = sorted(set(variant["fold"]) & set(reference["fold"]))
    folds = args.folds if args.folds is not None else shared
    if not folds or set(folds) - set(shared):
        raise SystemExit(f"folds {folds} are not all held by both sides (the variant holds {sorted(set(variant['fold']))}, "
                         f"the reference {sorted(set(reference['fold']))})")
    table = paired(variant, reference, [int(k) for k in folds])
    print(f"variant {args.variant} against reference {args.reference}: paired DeLong, variant minus reference")
    with pd.option_context("display.width", 200, "display.float_format", "{:.4f}".format):
        print(table.to_string(index=False))
    if args.json:
        args.json.write_text(json.dumps(table.replace({np.nan: None}).to_dict(orient="records"), indent=2))


if __name__ == "__main__":
    main()
