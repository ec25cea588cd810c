"""The bundled model: models trained on real PCam patches, shipped inside the package, and usable wherever a run
is (`--run bundled`, `load_predictor("bundled")`, the dashboard's run choice).

What ships (since 2026-12-06) is a 5-fold cross-validated ensemble made by `scripts/train_bundled.py --folds 5`, laid
out as an ensemble run (`pcam_core.ensemble`):

    pcam_core/bundled/
      ensemble.json          the members, how they are combined, the threshold and the record (cross-validated figures)
      members/fold-<k>/checkpoints/best.pt   each member's averaged weights and ExperimentConfig (weights_only=True)
      oof_predictions.csv    every patch's out-of-fold prediction, with its fold; valid_predictions.csv and
                             valid_predictions_tta.csv per scoring mode; cv.json
      calibration.json, calibration_tta.json   the temperatures fitted on them, per scoring mode
      scope.npz              the out-of-scope guard (the first member's)
      MODEL_CARD.md          data, recipe, cross-validated figures, intended use and limits
      slide_decision.json    which slide regions are reported and the slide classifier (`slides.decision`)

`scripts/train_bundled.py` without `--folds` writes the other form this module reads: one model file,
pcam-real-pcamnet.pt (weights, config, threshold and held-out figures in the one checkpoint schema), with its card.
Which form is here: `is_ensemble()`.

The model and its card are written by `scripts/train_bundled.py` (the only code that reads the training data,
and the only writer of the model file and its card); slide_decision.json by `scripts/fit_slide_decision.py`, from
mosaics of held-out patches (the single model's held-out part; for the ensemble, each fold's held-out patches scored
by that fold's member: docs/slides.md, The slide decision). The name
`bundled` (the string, exactly) and this folder's path both mean the bundled model; every command
turns a run argument into a checkpoint through `pcam_core.runs.checkpoint_path`, which asks
`is_bundled` first. Importing this module loads no torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BUNDLED = "bundled"  # the run name of the bundled model
LABEL = "bundled model (real tissue)"  # how the dashboard names it
BUNDLED_DIR = Path(__file__).resolve().parent
BUNDLED_FILE = "pcam-real-pcamnet.pt"
MODEL_CARD = "MODEL_CARD.md"
ENSEMBLE_FILE = "ensemble.json"  # present when the bundled model is a cross-validated ensemble (`pcam_core.ensemble`)


def is_bundled(run: Any) -> bool:
    """Whether a run argument names the bundled model: the string "bundled", or this folder's path.
    (A run folder of yours called `bundled` is still reachable as `./bundled`.)"""
    if isinstance(run, str) and run == BUNDLED:
        return True
    try:
        return Path(run).resolve() == BUNDLED_DIR
    except (TypeError, OSError, RuntimeError):
        return False


def is_ensemble() -> bool:
    """Whether the bundled model is the cross-validated ensemble (else the single model file)."""
    return (BUNDLED_DIR / ENSEMBLE_FILE).is_file()


def held_out_words() -> str:
    """What the predictions the bundled model ships are, in words: "out-of-fold" (the ensemble: each patch scored by
    the one member that did not train on it) or "held-out" (the single model's patches it never trained on)."""
    return "out-of-fold" if is_ensemble() else "held-out"


def bundled_checkpoint() -> Path:
    """The bundled model's checkpoint: the model file, or the ensemble's `ensemble.json` (which lists its members'
    checkpoints), as `runs.checkpoint_path("bundled")` names it."""
    path = BUNDLED_DIR / (ENSEMBLE_FILE if is_ensemble() else BUNDLED_FILE)
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
    """What `scripts/train_bundled.py` recorded: data, command, held-out figures (the single model's `holdout`) or
    cross-validated ones (the ensemble's `cv`), in the model file or in `ensemble.json`."""
    if is_ensemble():  # the cross-validated ensemble (`scripts/train_bundled.py --folds K`)
        return dict(json.loads((BUNDLED_DIR / ENSEMBLE_FILE).read_text(encoding="utf-8")).get("bundled") or {})
    from ..checkpoint import load_checkpoint  # torch, only when asked

    return dict(load_checkpoint(bundled_checkpoint()).get("bundled") or {})


__all__ = ["BUNDLED", "BUNDLED_DIR", "BUNDLED_FILE", "ENSEMBLE_FILE", "LABEL", "MODEL_CARD", "bundled_checkpoint",
           "bundled_record", "held_out_words", "is_bundled", "is_ensemble", "model_card"]
