"""Folds one after another against folds side by side (`pcam train --folds K --parallel-folds N`).

The same cross-validation trained twice into WORK, each as its own `pcam train` process: once with its K folds one
after another in one process, once with N of them at a time, each in a process of its own. Printed: each job's wall
time (the process, start to end), the sum of its folds' training times, the ratio of the wall times, and how far the two
jobs' out-of-fold probabilities lie apart: the same training, so apart only by the thread counts' different float
sums, which training amplifies (`--same-threads` gives both jobs the same count: then they agree).

    python benchmarks/bench_parallel_folds.py --data tests/data/pcam-real-kaggle --work /tmp/bpf [--folds 2] [--parallel 2]
        [--same-threads] [-- --epochs 8 --workers 0]

On a machine with several GPUs each fold process gets one (slot s on GPU s modulo their number): that is where side
by side pays. On a CPU the folds share the cores (each gets cores / N threads); the ratio there says what sharing costs
or gains for a small network whose one training does not fill the cores. Options after `--` go to both `pcam train`s
(e.g. `--epochs 54`, the bundled recipe's); a job already finished in WORK is timed again from scratch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pcam_core.runs import RunDir  # noqa: E402


def run_job(data: Path, out: Path, folds: int, parallel: int, train_args: list[str], threads: int | None = None) -> float:
    """Train the cross-validation into `out` (removed first) in a `pcam train` process; its wall time in seconds."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "pcam_core", "train", "--data", str(data), "--out", str(out), "--folds", str(folds),
               *train_args, *(["--parallel-folds", str(parallel)] if parallel > 1 else [])]
    env = dict(os.environ)
    if threads is None:
        env.pop("OMP_NUM_THREADS", None)  # each job shares the cores out its own way
    else:
        env["OMP_NUM_THREADS"] = str(threads)
    print("$", " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a Kaggle or HDF5 folder with labels")
    parser.add_argument("--work", type=Path, required=True, help="where the two jobs are written")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=2, help="folds side by side in the second job")
    parser.add_argument("--same-threads", action="store_true", help="both jobs with cores / parallel threads a process "
                        "(OMP_NUM_THREADS): the same arithmetic, so the same out-of-fold probabilities, to show that side by "
                        "side trains the same folds; without it each job uses the cores as it would")
    parser.add_argument("train_args", nargs="*", help="options for both `pcam train`s, after --")
    args = parser.parse_args()
    train_args = args.train_args or ["--epochs", "4", "--workers", "0"]
    jobs = {"one after another": (args.work / "sequential", 1), f"{args.parallel} side by side": (args.work / "side", args.parallel)}
    walls, frames = {}, {}
    for name, (out, parallel) in jobs.items():
        threads = max(1, (os.cpu_count() or 1) // args.parallel) if args.same_threads else None
        walls[name] = run_job(args.data, out, args.folds, parallel, train_args, threads)
        summary = json.loads(RunDir(out).summary_path.read_text())
        frames[name] = pd.read_csv(RunDir(out).oof_predictions_path, dtype={"id": str}).set_index("id")
        print(f"{name}: {walls[name]:.1f} s wall, {summary['train_seconds']:.1f} s of fold training in all, "
              f"out-of-fold ROC-AUC {summary['cv']['one_pass']['pooled']['roc_auc']['value']:.4f}", flush=True)
    (first, a), (second, b) = walls.items()
    print(f"wall time, {second} / {first}: {b / a:.2f} ({os.cpu_count()} CPU cores here"
          + (f", {n} GPUs" if (n := _gpus()) else ", no GPU") + ")")
    one, two = frames.values()
    gap = np.abs(one["probability"] - two.loc[one.index, "probability"])
    print(f"out-of-fold probabilities of the two jobs: largest difference {gap.max():.2e}, mean {gap.mean():.2e} "
          f"({len(gap):,} patches)")


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


if __name__ == "__main__":
    main()
