"""Benchmark: `pcam slide`'s analysis against the model's bare forward pass, and region reading against
the naive loop (one read per window).

    python benchmarks/bench_slide.py [--size 20000x16000] [--levels 1,16] [--workers 2] [--batch-size 256] [--model pcamnet]
                                     [--skip-analysis] [--naive-limit 1000] [--repeats 3]

On a SYNTHETIC demo slide written first, by default at 0.243 um/px with levels 1 and 16 only: a 40x scan
without a level at PCam's scale, so every read is made from level 0 and resampled 4x (the common case;
`--levels 1,2,4,8` gives a slide read at PCam scale from its level 2, as it is). OpenSlide's tile cache
stays at its default size. The model has its initial weights (speed does not depend on
them). Three figures, all in windows per second at stride 32, one pass per window (no TTA):
  bare     predict_batch over windows already in memory as a uint8 tensor (what no reader can beat)
  analysis score_slide end to end (tissue mask, region reads in workers, cutting, inference, map writes)
  reading  RegionWindows alone (one read per region tile) vs the naive loop: one read_scaled per window through
           OpenSlide's read_region (PCAM_DIRECT_TILES=0, as WSInfer reads patches); the region reads both ways (JPEG
           tiles decoded directly, the default, and OpenSlide's read_region), and the naive loop on direct tiles.
           In one process, `--repeats` rounds of the four interleaved, the median of each reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402
from pcam_core.inference import predict_batch  # noqa: E402
from pcam_core.models import create_model  # noqa: E402
from pcam_core.slides.analysis import Lattice, RegionWindows, score_slide  # noqa: E402
from pcam_core.slides.demo import DemoSlideSpec, make_demo_slide  # noqa: E402
from pcam_core.slides.folder import AnalysisFolder  # noqa: E402
from pcam_core.slides.reader import DIRECT_TILES_ENV, open_slide  # noqa: E402
from pcam_core.slides.tissue import cell_fraction, read_thumbnail, tissue_mask  # noqa: E402
from pcam_core.transforms import eval_preset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="20000x16000")
    parser.add_argument("--levels", default="1,16", help="pyramid downsamples written")
    parser.add_argument("--skip-analysis", action="store_true", help="reading figures only")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--model", default="pcamnet")
    parser.add_argument("--naive-limit", type=int, default=1000, help="windows read by the naive loop")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the reading figures")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        levels = tuple(int(v) for v in args.levels.split(","))
        make_demo_slide(tmp / "demo", DemoSlideSpec(width=width, height=height, levels=levels))
        print(f"demo slide {width}x{height}, levels {levels}: written in {time.perf_counter() - t:.1f} s")
        path = tmp / "demo" / "slide.tif"
        model = create_model(args.model).eval()
        torch.set_grad_enabled(False)

        n, analysis, analysis_s = 0, float("nan"), float("nan")
        if not args.skip_analysis:
            t = time.perf_counter()
            state = score_slide(model, path, AnalysisFolder(tmp / "out"), checkpoint="initial weights", num_workers=args.workers,
                                batch_size=args.batch_size)
            analysis_s = time.perf_counter() - t
            n = state["windows"]
            analysis = n / analysis_s

        with open_slide(path) as slide:
            lattice = Lattice(*slide.dimensions, slide.mpp, 32)
            score = cell_fraction(tissue_mask(read_thumbnail(slide)), 32, lattice.shape) >= 0.25
        windows = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (min(max(n, 1024), 4096), 3, 96, 96), dtype=np.uint8))
        normalize = eval_preset()
        predict_batch(model, windows[: args.batch_size], normalize=normalize)  # warm-up
        t = time.perf_counter()
        for b in range(0, len(windows), args.batch_size):
            predict_batch(model, windows[b:b + args.batch_size], normalize=normalize)
        bare = len(windows) / (time.perf_counter() - t)

        tiles = list(range(len(lattice.tiles())))
        cells = np.argwhere(score)[: args.naive_limit]

        def regions(direct: bool) -> float:
            os.environ[DIRECT_TILES_ENV] = "1" if direct else "0"
            t = time.perf_counter()
            read = sum(len(item["images"]) for item in RegionWindows(path, lattice.mpp, lattice, tiles, score))
            return read / (time.perf_counter() - t)

        def naive(direct: bool) -> float:
            os.environ[DIRECT_TILES_ENV] = "1" if direct else "0"
            with open_slide(path) as slide:
                t = time.perf_counter()
                for i, j in cells:
                    x0, y0 = lattice.window_origin(i, j)
                    slide.read_scaled(float(x0), float(y0), 96 * lattice.f, 96 * lattice.f, (96, 96))
                return len(cells) / (time.perf_counter() - t)

        rates: dict[str, list[float]] = {"naive": [], "region_openslide": [], "region": [], "naive_direct": []}
        for _ in range(args.repeats):
            rates["naive"].append(naive(False))
            rates["region_openslide"].append(regions(False))
            rates["region"].append(regions(True))
            rates["naive_direct"].append(naive(True))
        os.environ.pop(DIRECT_TILES_ENV)
        rate = {k: statistics.median(v) for k, v in rates.items()}

    print(f"windows scored: {n} (stride 32, batch {args.batch_size}, workers {args.workers}, model {args.model})")
    print(f"bare forward pass:   {bare:8.0f} windows/s")
    print(f"analysis end to end: {analysis:8.0f} windows/s  ({analysis / bare:.2f} of bare; {analysis_s:.1f} s incl. tissue mask)")
    print(f"reading, one process, median of {args.repeats} interleaved rounds ({len(cells)} windows for the naive loops):")
    print(f"  naive, OpenSlide read_region per window: {rate['naive']:8.0f} windows/s  (the baseline)")
    print(f"  regions, OpenSlide read_region:          {rate['region_openslide']:8.0f} windows/s  "
          f"({rate['region_openslide'] / rate['naive']:.1f}x the naive loop)")
    print(f"  regions, JPEG tiles decoded directly:    {rate['region']:8.0f} windows/s  "
          f"({rate['region'] / rate['naive']:.1f}x the naive loop; {rate['region'] / rate['region_openslide']:.2f}x OpenSlide's regions)")
    print(f"  naive, JPEG tiles decoded directly:      {rate['naive_direct']:8.0f} windows/s  "
          f"({rate['naive_direct'] / rate['naive']:.1f}x the naive loop)")
    print("  every round: " + "; ".join(f"{k} " + ", ".join(f"{v:.0f}" for v in vs) for k, vs in rates.items()))


if __name__ == "__main__":
    main()
