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
sys.path.insert(0, str(REPO))

from benchmarks.bench_real_recipe import make_split  # noqa: E402  the benchmark's split, reused as is
from pcam_core.api import DEFAULT_THRESHOLD, load_predictor  # noqa: E402
from pcam_core.bundled import BUNDLED_DIR, BUNDLED_FILE, LABEL, MODEL_CARD  # noqa: E402
from pcam_core.checkpoint import inference_weights, load_checkpoint, save_checkpoint  # noqa: E402
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
    weights = {k: v.detach().clone().contiguous() for k, v in inference_weights(payload).items()}
    path = out_dir / BUNDLED_FILE
    out_dir.mkdir(parents=True, exist_ok=True)
    config = dict(payload["config"])  # the data path named the script's temporary split: name the data instead
    config["data"] = {**config["data"], "path": record["data"]["name"]}
    save_checkpoint(path, {
        "config": config,
        "model": weights,
        "ema": None,
        "epoch": payload.get("epoch"),
        "global_step": payload.get("global_step"),
        "threshold": float(record["holdout"]["threshold"]),
        "synthetic_data": False,
        "bundled": record,
    })
    load_checkpoint(path)  # refuses (CheckpointError) anything a weights_only load cannot read back
    card = render_card(record, config)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "pcam-real-dev")
    parser.add_argument("--holdout-frac", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    parser.add_argument("--work", type=Path, default=Path("/tmp/pcam-bundled"),
                        help="the split (symbolic links) and the run folder; kept, so a rerun reuses the training")
    parser.add_argument("--out", type=Path, default=BUNDLED_DIR, help="where the model file and card go (default: the package)")
    parser.add_argument("--note", default="", help="a sentence for the model card's recipe (why it differs from the default, say)")
    parser.add_argument("train_args", nargs="*", help="extra `pcam train` options (after --)")
    args = parser.parse_args()

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
