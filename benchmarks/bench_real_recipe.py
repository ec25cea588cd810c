"""Benchmark 6: the default CPU recipe on real patches, scored on a held-out part it never saw.

    python benchmarks/bench_real_recipe.py [--data ../shared/data/pcam-real-dev] [--holdout-frac 0.15]

Splits the real Kaggle-layout folder (stratified, seeded) into a training folder and a held-out folder
(symbolic links, nothing copied), runs `pcam train --data TRAIN --out RUN` with default options, then
`pcam predict` on the held-out images with and without TTA, and prints the training minutes and the
held-out ROC-AUC. Extra arguments after `--` go to `pcam train`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

from pcam_core.data.common import stratified_split

REPO = Path(__file__).resolve().parents[1]


def make_split(data: Path, work: Path, holdout_frac: float, seed: int) -> pd.DataFrame:
    labels = pd.read_csv(data / "train_labels.csv")
    keep, held = stratified_split(labels["label"].to_numpy(), [holdout_frac], seed)
    (work / "train" / "train").mkdir(parents=True)
    (work / "holdout").mkdir()
    for i in keep:
        ident = labels["id"][i]
        (work / "train" / "train" / f"{ident}.tif").symlink_to((data / "train" / f"{ident}.tif").resolve())
    labels.iloc[keep].to_csv(work / "train" / "train_labels.csv", index=False)
    for i in held:
        ident = labels["id"][i]
        (work / "holdout" / f"{ident}.tif").symlink_to((data / "train" / f"{ident}.tif").resolve())
    return labels.iloc[held]


def pcam(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pcam_core", *args], check=True, cwd=REPO)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "pcam-real-dev")
    parser.add_argument("--holdout-frac", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep the run folder here instead of a temporary one")
    parser.add_argument("train_args", nargs="*", help="extra `pcam train` options (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        held = make_split(args.data, work, args.holdout_frac, args.seed)
        run = args.keep or work / "run"
        train_s = pcam("train", "--data", str(work / "train"), "--out", str(run), *args.train_args)
        results = {}
        for tta in (False, True):
            sub = work / f"sub{'_tta' if tta else ''}.csv"
            predict_s = pcam("predict", "--run", str(run), "--input", str(work / "holdout"), "--out", str(sub), "--tta" if tta else "--no-tta")
            scored = held.merge(pd.read_csv(sub), on="id", suffixes=("_true", "_prob"))
            assert len(scored) == len(held)
            results[tta] = (roc_auc_score(scored["label_true"], scored["label_prob"]), predict_s)
        best = pd.read_json(run / "epochs.jsonl", lines=True)
        print(f"\nreal-data recipe: trained on {len(pd.read_csv(work / 'train' / 'train_labels.csv'))} patches "
              f"(incl. its own validation split), held out {len(held)}")
        print(f"training wall time: {train_s / 60:.1f} min   (pcam train {' '.join(args.train_args) or 'with default options'})")
        print(f"best validation ROC-AUC during training: {best['roc_auc'].max():.4f}")
        for tta, (auc, secs) in results.items():
            print(f"held-out ROC-AUC {'with TTA (8 symmetries)' if tta else 'without TTA'}: {auc:.4f}   (predict {secs:.1f} s)")


if __name__ == "__main__":
    main()
