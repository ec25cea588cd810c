"""Does test-time augmentation gain from shifted views as well as the 8 symmetries of the square? (issue 24)

Each patch of a cross-validated ensemble (the bundled model by default) is scored by the one member that never trained
on it (its `oof_predictions.csv` says which), in 8 symmetries x 9 placements: as it is, and moved by 4 and 8 px up,
down, left and right (the patch reflected at its edges; the label's central 32 x 32 px stay inside the window). Prints
the pooled out-of-fold ROC-AUC of several ways of averaging those views, each against the 8-view TTA every command
uses, with the paired DeLong difference (95 % interval, p) and the difference on each fold; and the cost in views.

    python benchmarks/bench_tta_shifts.py --data ../shared/data/pcam-real-dev [--run pcam_core/bundled] [--json out.json]

The 8-view column agrees with `probability_tta` of the run's `oof_predictions.csv` (checked: the script stops if not).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.special import expit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pcam_core.data.kaggle import KaggleFolder  # noqa: E402
from pcam_core.ensemble import load_ensemble  # noqa: E402
from pcam_core.runs import resolve_run  # noqa: E402
from pcam_core.stats import paired_auc_test  # noqa: E402
from pcam_core.transforms import dihedral, eval_preset  # noqa: E402

SHIFTS = [(0, 0), (4, 0), (-4, 0), (0, 4), (0, -4), (8, 0), (-8, 0), (0, 8), (0, -8)]  # (dy, dx) in px
PAD = 8


@torch.no_grad()
def view_logits(member: torch.nn.Module, pixels: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Logits (N, 8 symmetries, len(SHIFTS)) of uint8 patches (N, 96, 96, 3)."""
    normalize = eval_preset()
    out = np.empty((len(pixels), 8, len(SHIFTS)), dtype=np.float64)
    for start in range(0, len(pixels), batch_size):
        x = normalize(torch.from_numpy(pixels[start:start + batch_size]).permute(0, 3, 1, 2).contiguous())
        padded = F.pad(x, (PAD, PAD, PAD, PAD), mode="reflect")
        for j, (dy, dx) in enumerate(SHIFTS):
            window = padded[:, :, PAD + dy:PAD + dy + 96, PAD + dx:PAD + dx + 96]
            for k in range(8):
                out[start:start + len(x), k, j] = member(dihedral(window, k) if k else window).float().numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="the Kaggle folder the run was cross-validated on")
    parser.add_argument("--run", default="pcam_core/bundled", help="a cross-validated ensemble run (default: the bundled model)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    run = resolve_run(args.run)
    oof = pd.read_csv(run.path / "oof_predictions.csv", dtype={"id": str})
    ensemble, _, _ = load_ensemble(run.folder, torch.device("cpu"))
    members = list(ensemble.members)
    folds = sorted(oof.fold.unique())
    if len(folds) != len(members):
        raise SystemExit(f"{run.path}: {len(members)} members but {len(folds)} folds in oof_predictions.csv")
    data = KaggleFolder(args.data)
    position = {pid: i for i, pid in enumerate(data.ids)}
    missing = [pid for pid in oof.id if pid not in position]
    if missing:
        raise SystemExit(f"{len(missing)} out-of-fold patches are not in {args.data} (first: {missing[0]})")

    logits = np.empty((len(oof), 8, len(SHIFTS)))
    started = time.time()
    for fold in folds:
        rows = np.flatnonzero(oof.fold.to_numpy() == fold)
        pixels = data.read_pixels(np.array([position[pid] for pid in oof.id.to_numpy()[rows]]))
        logits[rows] = view_logits(members[fold], pixels)
        print(f"fold {fold}: {len(rows)} patches x {8 * len(SHIFTS)} views, {time.time() - started:.0f} s", flush=True)

    labels = oof.label.to_numpy()
    probs = expit(logits)
    reference = probs[:, :, 0].mean(1)
    gap = float(np.abs(reference - oof.probability_tta.to_numpy()).max())
    if gap > 1e-4:
        raise SystemExit(f"the 8-view probabilities differ from the run's probability_tta by up to {gap:.2g}: not its members?")
    variants = {  # name: (scores, views per patch)
        "8 symmetries (the commands' TTA)": (reference, 8),
        "8 symmetries, mean logit": (expit(logits[:, :, 0].mean(1)), 8),
        "1 view x 5 placements (0, 4 px)": (probs[:, 0, :5].mean(1), 5),
        "8 x 5 placements (0, 4 px)": (probs[:, :, :5].mean((1, 2)), 40),
        "8 x 5 placements (0, 8 px)": (probs[:, :, [0, 5, 6, 7, 8]].mean((1, 2)), 40),
        "8 x 9 placements (0, 4, 8 px)": (probs.mean((1, 2)), 72),
    }
    from sklearn.metrics import roc_auc_score

    results = []
    print(f"\n{len(oof)} out-of-fold patches of {run.path}; differences against the 8-symmetry TTA")
    for name, (scores, views) in variants.items():
        test = paired_auc_test(labels, scores, reference)
        per_fold = [roc_auc_score(labels[oof.fold == k], scores[oof.fold == k]) -
                    roc_auc_score(labels[oof.fold == k], reference[oof.fold == k]) for k in folds]
        results.append({"scoring": name, "views": views, "roc_auc": test["auc_a"], "difference": test["difference"],
                        "low": test["low"], "high": test["high"], "p": test["p_value"], "per_fold": per_fold})
        print(f"{name:34s} {views:3d} views  ROC-AUC {test['auc_a']:.4f}  {test['difference']:+.4f} "
              f"({test['low']:+.4f} to {test['high']:+.4f}), p = {test['p_value']:.2g}; folds "
              + " ".join(f"{d:+.4f}" for d in per_fold))
    if args.json:
        args.json.write_text(json.dumps({"run": str(run.path), "n": len(oof), "results": results}, indent=2))


if __name__ == "__main__":
    main()
