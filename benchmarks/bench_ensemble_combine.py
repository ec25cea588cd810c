"""Mean probability or mean logit: which way should an ensemble of fold models join them? (issue 24)

Out-of-fold predictions cannot answer it (every patch trained all members but one), so this holds patches out:
it draws a stratified pool and a disjoint held-out part from a real Kaggle-layout folder, cross-validates on the
pool (`pcam train --folds K`), and scores the held-out patches with the ensemble of the K fold models both ways.
Figures: ROC-AUC (DeLong interval; paired DeLong test of the two), log loss, Brier score and ECE, one pass and
TTA; the members' own held-out ROC-AUC for scale.

    OMP_NUM_THREADS=1 python benchmarks/bench_ensemble_combine.py --pool 800 --holdout 400 --folds 3 -- --epochs 3

Writes WORK/combine.json. Small pools give wide intervals: read the paired test, not the point figures alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.special import expit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pcam_core.calibration import nll, to_logits  # noqa: E402
from pcam_core.data.common import stratified_split  # noqa: E402
from pcam_core.ensemble import member_runs  # noqa: E402
from pcam_core.inference import predict_pixels  # noqa: E402
from pcam_core.loading import load_run_model  # noqa: E402
from pcam_core.metrics import expected_calibration_error  # noqa: E402
from pcam_core.models import EnsembleModel  # noqa: E402
from pcam_core.stats import auc_interval, paired_auc_test  # noqa: E402
from pcam_core.transforms import dihedral, eval_preset  # noqa: E402


def split(data: Path, work: Path, pool: int, holdout: int, seed: int) -> pd.DataFrame:
    """A stratified pool (symbolic links, Kaggle layout, in WORK/pool) and a disjoint held-out table."""
    labels = pd.read_csv(data / "train_labels.csv", dtype={"id": str})
    n = len(labels)
    _, pool_idx, held_idx = stratified_split(labels["label"].to_numpy(), [pool / n, holdout / n], seed)
    (work / "pool" / "train").mkdir(parents=True)
    for ident in labels["id"].iloc[pool_idx]:
        (work / "pool" / "train" / f"{ident}.tif").symlink_to((data / "train" / f"{ident}.tif").resolve())
    labels.iloc[pool_idx].to_csv(work / "pool" / "train_labels.csv", index=False)
    held = labels.iloc[held_idx].reset_index(drop=True)
    held.to_csv(work / "holdout.csv", index=False)
    return held


def member_view_logits(model: torch.nn.Module, pixels: np.ndarray, batch_size: int = 200) -> np.ndarray:
    """(8, N) logits of one model on the 8 symmetries of each patch (view 0: the patch as it is), as
    `inference.predict_batch` orders its TTA views."""
    normalize = eval_preset()
    out = []
    with torch.no_grad():
        for start in range(0, len(pixels), batch_size):
            x = normalize(torch.from_numpy(pixels[start:start + batch_size]).permute(0, 3, 1, 2))
            out.append(torch.stack([model(dihedral(x, k) if k else x).float() for k in range(8)]).numpy())
    return np.concatenate(out, axis=1).astype(np.float64)


def combined(z: np.ndarray, combine: str) -> np.ndarray:
    """(views, N) probabilities of the ensemble per view from (members, views, N) logits."""
    return expit(z).mean(axis=0) if combine == "prob" else expit(z.mean(axis=0))


def scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    return {"roc_auc": auc_interval(labels, probs), "log_loss": nll(labels, to_logits(probs)),
            "brier": float(np.mean((probs - labels) ** 2)), "ece": expected_calibration_error(labels, probs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "pcam-real-dev")
    parser.add_argument("--work", type=Path, default=Path("/tmp/pcam-ensemble-combine"))
    parser.add_argument("--pool", type=int, default=800)
    parser.add_argument("--holdout", type=int, default=400)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("train_args", nargs="*", help="extra `pcam train` options (after --)")
    args = parser.parse_args()
    from PIL import Image

    held = pd.read_csv(args.work / "holdout.csv", dtype={"id": str}) if (args.work / "holdout.csv").exists() else \
        split(args.data, args.work, args.pool, args.holdout, args.seed)
    cv = args.work / "cv"
    if not (cv / "ensemble.json").exists():
        command = ["train", "--data", str(args.work / "pool"), "--out", str(cv), "--folds", str(args.folds), *args.train_args]
        if (cv / "config.json").exists():
            command = ["train", "--out", str(cv), "--resume"]
        subprocess.run([sys.executable, "-m", "pcam_core", *command], check=True, cwd=REPO)
    pixels = np.stack([np.asarray(Image.open(args.data / "train" / f"{i}.tif").convert("RGB")) for i in held["id"]])
    labels = held["label"].to_numpy()
    loaded = load_run_model(cv, device="cpu")
    members = list(loaded.model.members)
    report: dict[str, object] = {"pool": args.pool, "holdout": len(held), "folds": args.folds, "train_args": args.train_args,
                                 "members": [str(m.path) for m in member_runs(loaded.run.folder)]}
    # every member's logit on every view once, (members, views, patches); the ensembles are combined from them
    # (`models.EnsembleModel` does the same in one graph; checked against it on the first patches below)
    z = np.stack([member_view_logits(m, pixels) for m in members])
    for combine in ("prob", "logit"):
        direct = predict_pixels(EnsembleModel(members, combine).eval(), pixels[:8], tta=True)
        assert np.allclose(direct, combined(z[:, :, :8], combine).mean(axis=0), atol=1e-5), combine
    for mode, views in (("one_pass", 1), ("tta", 8)):
        probs = {c: combined(z[:, :views], c).mean(axis=0) for c in ("prob", "logit")}
        member_aucs = [auc_interval(labels, expit(z[m, :views]).mean(axis=0))["value"] for m in range(len(members))]
        report[mode] = {"prob": scores(labels, probs["prob"]), "logit": scores(labels, probs["logit"]),
                        "paired_delong_prob_vs_logit": paired_auc_test(labels, probs["prob"], probs["logit"]),
                        "members_roc_auc": member_aucs}
    (args.work / "combine.json").write_text(json.dumps(report, indent=2, default=float))
    print(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
