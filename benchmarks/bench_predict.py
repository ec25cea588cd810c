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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import PeakTreeRSS, machine, warm_page_cache, write_official_split
from pcam_core.data import PCamH5, make_loader, open_dataset, patch_id
from pcam_core.data.h5 import is_h5_root
from pcam_core.inference import predict_batch
from pcam_core.loading import load_run_model
from pcam_core.predict import predict_submission
from pcam_core.scoring_options import ScoringOptions

REPO = Path(__file__).resolve().parents[1]
SOURCES = {"HDF5 split": "h5", "Kaggle tifs": "tifs"}  # name -> folder under the work directory


def bare_forward(model, pixels: np.ndarray, batch: int) -> float:
    x_all = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    predict_batch(model, x_all[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(x_all), batch):
        predict_batch(model, x_all[i : i + batch])
    return len(x_all) / (time.perf_counter() - start)


def read_rate(source: Path, batch: int, workers: int) -> float:
    """Images per second of reading and decoding alone (the loader the prediction uses, no model)."""
    dataset = open_dataset(source, "test" if is_h5_root(source) else None)
    start = time.perf_counter()
    n = sum(len(b["index"]) for b in make_loader(dataset, batch, shuffle=False, num_workers=workers, ids=True))
    return n / (time.perf_counter() - start)


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
    parser.add_argument("--trials", type=int, default=3, help="alternating timed passes; the median is kept")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = work / SOURCES["HDF5 split"]
        write_official_split(root, "test", args.n)
        write_official_split(root, "train", 512)
        write_official_split(root, "valid", 256)
        run = args.run or make_run(root, work)
        tifs = work / SOURCES["Kaggle tifs"]
        tifs.mkdir()
        ds = PCamH5(root, "test")
        pixels = ds.read_pixels(np.arange(len(ds)))
        from PIL import Image

        for i, p in enumerate(pixels):
            p = p.copy()
            p[0, 0] = [i % 256, i // 256 % 256, i // 65536]  # the split repeats patches; ids must be unique
            Image.fromarray(p).save(tifs / f"{patch_id(p)}.tif")
        assert len(list(tifs.iterdir())) == args.n
        warm_page_cache(*root.glob("*.h5"), *tifs.iterdir())
        model = load_run_model(run, device="cpu").model
        # This machine is shared and noisy: the bare pass and the in-process prediction alternate, and the
        # median of --trials is kept. Memory is sampled only while the command runs (a child process),
        # so that sampling /proc does not slow down the timed passes.
        bare_rates: list[float] = []
        inproc_rates: dict[str, list[float]] = {name: [] for name in SOURCES}
        for _ in range(args.trials):
            bare_rates.append(bare_forward(model, pixels, args.batch))
            for name, folder in SOURCES.items():
                start = time.perf_counter()
                predict_submission(run, work / folder, work / f"{folder}.csv",
                                   ScoringOptions(tta=False, workers=args.workers, batch_size=args.batch))
                inproc_rates[name].append(args.n / (time.perf_counter() - start))
        bare = statistics.median(bare_rates)
        reading = {name: read_rate(work / folder, args.batch, args.workers) for name, folder in SOURCES.items()}
        results = {}
        for name, folder in SOURCES.items():
            with PeakTreeRSS(every=0.5) as peak:
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "pcam_core", "predict", "--run", str(run), "--input", str(work / folder),
                                "--out", str(work / f"{folder}-cli.csv"), "--workers", str(args.workers), "--no-tta",
                                "--batch-size", str(args.batch)], check=True, cwd=REPO, capture_output=True)
                cli = args.n / (time.perf_counter() - start)
            results[name] = (statistics.median(inproc_rates[name]), cli, peak.peak_gb)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import pcam_core.predict"], check=True, cwd=REPO, capture_output=True)
    startup = time.perf_counter() - start
    print(f"inference, {args.n} patches, batch {args.batch}, {args.workers} workers, images/s")
    print(f"  bare forward pass on tensors in memory: {bare:8.0f}   (median of {args.trials})")
    for name, (inproc, cli, peak_gb) in results.items():
        print(f"  pcam predict, {name:12}: in-process {inproc:8.0f} (ratio {inproc / bare:.2f}), "
              f"as a command {cli:8.0f} (ratio {cli / bare:.2f}); peak memory of the command {peak_gb:.2f} GB PSS")
        print(f"      reading and decoding alone, {args.workers} workers: {reading[name]:8.0f}")
    print(f"  (a command also pays for starting Python and importing torch: {startup:.1f} s to import pcam_core.predict)")


if __name__ == "__main__":
    main()
