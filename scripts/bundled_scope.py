"""Ship the bundled model's out-of-scope guard (`pcam_core.scope`): `pcam_core/bundled/scope.npz`.

    python scripts/bundled_scope.py [--data ../shared/data/pcam-real-dev]

The guard's statistics are fitted on the bundled model's training patches (the 3,400 of the 4,000 real patches
that `scripts/train_bundled.py` trained on: its 15 % held-out split, seed 0, left out) and its threshold is the
95th percentile of the distances of the 600 held-out patches (so about 5 % of real lymph-node patches like those
are flagged). Only this script reads ../shared; the package ships the result. How well it tells other tissue
apart is measured by `benchmarks/bench_scope.py`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pcam_core.api import as_patches  # noqa: E402
from pcam_core.bundled import BUNDLED, is_ensemble  # noqa: E402
from pcam_core.loading import load_run_model  # noqa: E402
from pcam_core.runs import resolve_run  # noqa: E402
from pcam_core.scope import fit_scope, scope_features  # noqa: E402


def bundled_split(data: Path) -> tuple[list[Path], list[Path]]:
    """(training patch files, held-out patch files) of the model whose features the bundled guard reads: for the
    single model, the held-out ids it ships; for the cross-validated ensemble, its first member's, which held out
    fold 0 of its out-of-fold predictions (the guard is that member's: fitted on its training folds, its threshold
    on that fold)."""
    labels = pd.read_csv(data / "train_labels.csv", dtype={"id": str})
    folder = resolve_run(BUNDLED).folder
    if is_ensemble():
        oof = pd.read_csv(folder.oof_predictions_path, dtype={"id": str})
        held = set(oof.loc[oof["fold"] == 0, "id"])
    else:
        held = set(pd.read_csv(folder.valid_predictions_path, dtype={"id": str})["id"])
    files = {ident: data / "train" / f"{ident}.tif" for ident in labels["id"]}
    return [f for i, f in files.items() if i not in held], [f for i, f in files.items() if i in held]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "pcam-real-dev")
    args = parser.parse_args()
    if is_ensemble():
        raise SystemExit("the bundled model is the cross-validated ensemble, whose out-of-scope guard (the first member's) "
                         "`python scripts/train_bundled.py --folds K` writes; this script is for the single model")
    train_files, held_files = bundled_split(args.data)
    loaded = load_run_model(BUNDLED, device="cpu")
    fit = scope_features(loaded.model, loaded.model_name, as_patches([str(f) for f in train_files]))
    held = scope_features(loaded.model, loaded.model_name, as_patches([str(f) for f in held_files]))
    scope = fit_scope(fit, held, model_name=loaded.model_name,
                      fitted_on=f"{len(train_files)} real PCam training patches of the bundled model; threshold on its "
                                f"{len(held_files)} held-out patches")
    path = loaded.run.folder.scope_path
    scope.save(path)
    print(f"threshold {scope.threshold:.3f} ({scope.rate:.1%} of {len(held_files)} held-out patches flagged), "
          f"{fit.shape[1]} features from {', '.join(scope.layers)} -> {path}")
    assert np.isfinite(scope.threshold)


if __name__ == "__main__":
    main()
