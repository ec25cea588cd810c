"""Benchmark 3: `pcam predict` on an HDF5 split and on a folder of Kaggle tifs, against the model's
bare forward pass on tensors already in memory.

    python benchmarks/bench_predict.py [--n 8192] [--run RUN_DIR] [--workers 2]

Both sides make one pass per patch (`--no-tta`; TTA multiplies both by 8). The bare forward pass is
what no tool can beat: normalise + model + sigmoid over batches of 256 that
sit in RAM. `pcam predict` is timed as a user runs it (a fresh process: start-up, model load, reading,
decoding, writing the CSV), and also in-process via `predict_submission` (reading, decoding and
writing only), so the ratio shows where time goes. Memory: the peak RSS of the predicting process
tree is printed too (it stays bounded: batches stream through; only ids and probabilities are kept).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import PeakTreeRSS, machine, warm_page_cache, write_official_split
from pcam_core.data import PCamH5, patch_id
from pcam_core.inference import predict_batch
from pcam_core.predict import load_run_model, predict_submission

REPO = Path(__file__).resolve().parents[1]


def bare_forward(model, pixels: np.ndarray, batch: int) -> float:
    x_all = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    predict_batch(model, x_all[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(x_all), batch):
        predict_batch(model, x_all[i : i + batch])
    return len(x_all) / (time.perf_counter() - start)


def make_run(root: Path, work: Path) -> Path:
    """A run to predict with: the default model after a few steps (timing does not need accuracy)."""
    run = work / "run"
    subprocess.run([sys.executable, "-m", "pcam_core", "train", "--data", str(root), "--out", str(run), "--epochs", "1",
                    "--max-steps", "5", "--workers", "0"], check=True, cwd=REPO, capture_output=True)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--run", type=Path)
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = work / "h5"
        write_official_split(root, "test", args.n)
        write_official_split(root, "train", 512)
        write_official_split(root, "valid", 256)
        run = args.run or make_run(root, work)
        tifs = work / "tifs"
        tifs.mkdir()
        ds = PCamH5(root, "test")
        pixels = ds.read_pixels(np.arange(len(ds)))
        from PIL import Image

        for p in pixels:
            Image.fromarray(p).save(tifs / f"{patch_id(p)}.tif")
        warm_page_cache(*root.glob("*.h5"), *tifs.iterdir())
        model, _, _ = load_run_model(run)
        bare = bare_forward(model, pixels, args.batch)
        results = {}
        for name, source in (("HDF5 split", root), ("Kaggle tifs", tifs)):
            with PeakTreeRSS() as peak:
                start = time.perf_counter()
                predict_submission(run, source, work / f"{name}.csv", tta=False, num_workers=args.workers, batch_size=args.batch)
                inproc = args.n / (time.perf_counter() - start)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "pcam_core", "predict", "--run", str(run), "--input", str(source),
                            "--out", str(work / f"{name}-cli.csv"), "--workers", str(args.workers), "--no-tta"], check=True, cwd=REPO,
                           capture_output=True)
            cli = args.n / (time.perf_counter() - start)
            results[name] = (inproc, cli, peak.peak_gb)
    print(f"inference, {args.n} patches, batch {args.batch}, {args.workers} workers, images/s")
    print(f"  bare forward pass on tensors in memory: {bare:8.0f}")
    for name, (inproc, cli, peak_gb) in results.items():
        print(f"  pcam predict, {name:12}: in-process {inproc:8.0f} (ratio {inproc / bare:.2f}), "
              f"as a command {cli:8.0f} (ratio {cli / bare:.2f}); peak memory {peak_gb:.2f} GB")


if __name__ == "__main__":
    main()
