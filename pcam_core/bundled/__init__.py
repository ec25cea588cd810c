"""The bundled model: a compact model trained on real PCam patches, shipped inside the package, and
usable wherever a run is (`--run bundled`, `load_predictor("bundled")`, the dashboard's run choice).

    pcam_core/bundled/
      pcam-real-pcamnet.pt   the averaged weights, the ExperimentConfig, the threshold and the held-out
                             figures, in the one checkpoint schema (loaded with weights_only=True)
      MODEL_CARD.md          data, recipe, held-out figures, intended use and limits

Both are written by `scripts/train_bundled.py` (the only code that reads the training data). The name
`bundled` (the string, exactly) and this folder's path both mean the bundled model; every command
turns a run argument into a checkpoint through `pcam_core.runs.checkpoint_path`, which asks
`is_bundled` first. Importing this module loads no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

BUNDLED = "bundled"  # the run name of the bundled model
LABEL = "bundled model (real tissue)"  # how the dashboard names it
BUNDLED_DIR = Path(__file__).resolve().parent
BUNDLED_FILE = "pcam-real-pcamnet.pt"
MODEL_CARD = "MODEL_CARD.md"


def is_bundled(run: Any) -> bool:
    """Whether a run argument names the bundled model: the string "bundled", or this folder's path.
    (A run folder of yours called `bundled` is still reachable as `./bundled`.)"""
    if isinstance(run, str) and run == BUNDLED:
        return True
    try:
        return Path(run).resolve() == BUNDLED_DIR
    except (TypeError, OSError, RuntimeError):
        return False


def bundled_checkpoint() -> Path:
    """The bundled model's checkpoint file."""
    path = BUNDLED_DIR / BUNDLED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"the bundled model is missing from this installation ({path}); "
                                "reinstall pcam_core, or write it with `python scripts/train_bundled.py`")
    return path


def model_card() -> str:
    """The model card (Markdown)."""
    path = BUNDLED_DIR / MODEL_CARD
    if not path.is_file():
        raise FileNotFoundError(f"the bundled model's card is missing from this installation ({path})")
    return path.read_text(encoding="utf-8")


def bundled_record() -> dict[str, Any]:
    """What `scripts/train_bundled.py` recorded in the model file: data, command, held-out figures."""
    from ..checkpoint import load_checkpoint

    return dict(load_checkpoint(bundled_checkpoint()).get("bundled") or {})


def write_bundled(out_dir: str | Path, run_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write the bundled model file (from a finished run's best checkpoint: its inference weights and
    config, the threshold and `record`) and its model card into `out_dir`. Used by
    `scripts/train_bundled.py`; the model file holds nothing a weights_only load refuses."""
    from ..checkpoint import inference_weights, load_checkpoint, save_checkpoint
    from ..fileio import atomic_write_with
    from ..runs import checkpoint_path

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


__all__ = ["BUNDLED", "BUNDLED_DIR", "BUNDLED_FILE", "LABEL", "MODEL_CARD", "bundled_checkpoint", "bundled_record",
           "is_bundled", "model_card", "render_card", "write_bundled"]
