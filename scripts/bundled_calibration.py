"""Ship the bundled model's held-out predictions and its temperature, so that calibration and triage work for
the model the dashboard starts with.

    python scripts/bundled_calibration.py [--data ../shared/data/pcam-real-dev]

It scores the held-out patches of `scripts/train_bundled.py` (the same stratified 15 %, seed 0: training never saw
them) with the bundled model, one pass per patch as the trainer scores its validation split (and with TTA for the
8-view spread), and writes into the package:
- `pcam_core/bundled/valid_predictions.csv`: id, label, probability (one pass), probability_tta, uncertainty, index;
- `pcam_core/bundled/calibration.json`: the temperature fitted on them (`pcam_core.calibration`).
The triage thresholds are fitted from that CSV when asked for (`calibration.run_triage`). Only this script reads
../shared; the package ships the result.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_real_recipe import make_split  # noqa: E402  the bundled model's held-out split
from pcam_core.api import as_patches, load_predictor  # noqa: E402
from pcam_core.bundled import BUNDLED, BUNDLED_DIR, is_ensemble  # noqa: E402
from pcam_core.calibration import calibrate_run  # noqa: E402
from pcam_core.fileio import atomic_write_text  # noqa: E402
from pcam_core.inference import predict_pixels  # noqa: E402
from pcam_core.runs import RunDir  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "pcam-real-dev")
    args = parser.parse_args()
    if is_ensemble():
        raise SystemExit("the bundled model is the cross-validated ensemble, whose out-of-fold predictions and temperatures "
                         "`python scripts/train_bundled.py --folds K` writes; this script is for the single model")
    with tempfile.TemporaryDirectory() as tmp:
        held = make_split(args.data, Path(tmp), 0.15, 0).reset_index(drop=True)
        files = [Path(tmp) / "holdout" / f"{ident}.tif" for ident in held["id"]]
        predictor = load_predictor(BUNDLED)
        pixels = as_patches([str(f) for f in files])
    single = predictor.predict(pixels, tta=False)
    tta, spread = predict_pixels(predictor.model, pixels, tta=True, spread=True)
    frame = pd.DataFrame({"id": held["id"], "label": held["label"].astype(int), "probability": single,
                          "probability_tta": tta, "uncertainty": spread, "index": np.arange(len(held))})
    run = RunDir(BUNDLED_DIR)
    atomic_write_text(run.valid_predictions_path, frame.to_csv(index=False, float_format="%.6f"))
    calibration = calibrate_run(BUNDLED)
    print(f"{len(frame)} held-out patches ({int(frame['label'].sum())} tumour) -> {run.valid_predictions_path}")
    print(f"temperature {calibration.temperature:.3f}: ECE {calibration.before['ece']:.4f} -> {calibration.after['ece']:.4f}, "
          f"Brier {calibration.before['brier']:.4f} -> {calibration.after['brier']:.4f} -> {run.calibration_path}")


if __name__ == "__main__":
    main()
