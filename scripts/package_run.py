"""Package a finished run folder to ship in the repository (as `candidates/pcamscan` is): its records as `pcam train`
wrote them, its best checkpoint cut to the weights it predicts with (`checkpoint.packaged`: the moving average, no
optimiser state), and the data path in its config replaced by the data's name (a training machine's path means
nothing elsewhere). A fold run of a cross-validation packages the same way (its validation split is its held-out fold).

    python scripts/package_run.py /tmp/scan-cv/folds/fold-0 candidates/pcamscan --data-name "pcam-real-dev (...)" [--replace]

What it copies, where the run has it: config.json, summary.json, status.json, epochs.jsonl, the temperatures
(calibration.json, calibration_tta.json), the out-of-scope guard (scope.npz), the validation predictions
(valid_predictions*.csv, and a fold's oof_predictions.csv) and the slide decision (slide_decision.json). A fold run
scored before its TTA record was kept (`crossval.write_fold_tta`) gets it here, from its oof_predictions.csv. Other files
in OUT (its README.md) are kept; `--replace` is needed where OUT already holds a checkpoint, and then the files it
would copy are first removed from OUT, so that none of the old run's is left beside the new one's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pcam_core.checkpoint import load_checkpoint, packaged, save_checkpoint  # noqa: E402
from pcam_core.crossval import write_fold_tta  # noqa: E402
from pcam_core.fileio import atomic_write_json  # noqa: E402
from pcam_core.runs import RunDir  # noqa: E402

RECORDS = ("summary.json", "status.json", "epochs.jsonl", "calibration.json", "calibration_tta.json", "scope.npz",
           "valid_predictions.csv", "valid_predictions_tta.csv", "oof_predictions.csv", "slide_decision.json")


def package(run: Path, out: Path, data_name: str, *, replace: bool = False) -> RunDir:
    source, target = RunDir(run), RunDir(out)
    if not source.config_path.exists() or not source.best_checkpoint.exists():
        raise SystemExit(f"{run}: not a finished run folder (config.json and checkpoints/best.pt expected)")
    if source.is_ensemble:
        raise SystemExit(f"{run}: an ensemble; package its members, or use scripts/train_bundled.py")
    if target.best_checkpoint.exists() and not replace:
        raise SystemExit(f"{out} already holds a run (checkpoints/best.pt); give --replace to replace it")
    if target.path.resolve() == source.path.resolve():
        raise SystemExit("the run and OUT are the same folder")
    for name in ("config.json", *RECORDS, "checkpoints/best.pt", "checkpoints/last.pt"):
        (target.path / name).unlink(missing_ok=True)
    target.best_checkpoint.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(target.best_checkpoint, packaged(load_checkpoint(source.best_checkpoint), data_name))
    load_checkpoint(target.best_checkpoint)  # refuses anything a weights_only load cannot read back
    config = json.loads(source.config_path.read_text())
    config["data"] = {**config["data"], "path": data_name}
    atomic_write_json(target.config_path, config)
    for name in RECORDS:
        if (source.path / name).exists():
            shutil.copyfile(source.path / name, target.path / name)
    if target.oof_predictions_path.exists() and not target.valid_predictions_tta_path.exists():
        write_fold_tta(target)  # a fold run scored before 2026-12-07's TTA record: its TTA temperature, from its oof file
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished run folder (a fold run of a cross-validation too)")
    parser.add_argument("out", type=Path, help="the folder to write (a run folder every command takes with --run)")
    parser.add_argument("--data-name", required=True, help="what the data was, in place of its path on this machine")
    parser.add_argument("--replace", action="store_true", help="replace the run OUT holds")
    args = parser.parse_args()
    target = package(args.run, args.out, args.data_name, replace=args.replace)
    size = sum(p.stat().st_size for p in target.path.rglob("*") if p.is_file()) / 1e6
    print(f"packaged {args.run} into {target.path} ({size:.1f} MB)")


if __name__ == "__main__":
    main()
