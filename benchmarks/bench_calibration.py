"""Temperature alone or temperature and bias: which calibrates a cross-validated model's probabilities better?

Reads the out-of-fold predictions of a cross-validation, as `compare_oof.py` reads them (a run folder of
`pcam train --folds K`, or a folder holding one oof_predictions.csv with a fold column; default: the bundled
ensemble, pcam_core/bundled) and, for each scoring mode, judges each way of
calibrating **cross-fitted**: fitted on K-1 folds, applied to the fold left out, so no patch is judged by a fit
that saw it. Prints ECE (10 bins), Brier and NLL raw, with the temperature alone (`calibration.fit_temperature`),
and with temperature and bias (`calibration.fit_temperature_and_bias`, what runs fit), and the mean probability
against the share of tumour (the lean a class-balanced loss gives).

    python benchmarks/bench_calibration.py [FOLDER]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from compare_oof import MODES, out_of_fold  # noqa: E402  the same reader, the same scoring modes
from pcam_core.calibration import apply_temperature, calibration_scores, fit_temperature, fit_temperature_and_bias  # noqa: E402


def cross_fitted(labels: np.ndarray, probs: np.ndarray, folds: np.ndarray, bias: bool) -> np.ndarray:
    """Each fold's probabilities calibrated by a fit on the other folds."""
    out = np.empty_like(probs, dtype=np.float64)
    for k in np.unique(folds):
        fit, held = folds != k, folds == k
        if bias:
            temperature, b = fit_temperature_and_bias(labels[fit], probs[fit])
        else:
            temperature, b = fit_temperature(labels[fit], probs[fit]), 0.0
        out[held] = apply_temperature(probs[held], temperature, b)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, nargs="?", default=REPO / "pcam_core" / "bundled")
    args = parser.parse_args()
    frame = out_of_fold(args.source)
    labels, folds = frame["label"].to_numpy(), frame["fold"].to_numpy()
    print(f"{args.source}: {len(frame):,} out-of-fold predictions in {len(np.unique(folds))} folds, {labels.mean():.1%} tumour; "
          "each way fitted on the other folds and judged on the fold left out")
    rows = []
    for mode, column in MODES.items():
        probs = frame[column].to_numpy(dtype=np.float64)
        for way, calibrated in (("raw", probs), ("temperature", cross_fitted(labels, probs, folds, bias=False)),
                                ("temperature and bias", cross_fitted(labels, probs, folds, bias=True))):
            rows.append({"scoring": mode, "calibration": way, "mean probability": calibrated.mean(), **calibration_scores(labels, calibrated)})
    with pd.option_context("display.width", 200, "display.float_format", "{:.4f}".format):
        print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
