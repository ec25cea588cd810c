"""Benchmark: peak memory and time of a whole analysis of a slide of 100,000 x 80,000 level-0 pixels.

    python benchmarks/bench_slide_memory.py [--size 100000x80000] [--stride 96] [--workers 2] [--blocks 3]

The slide is a SYNTHETIC JPEG-tiled pyramidal TIFF at 0.243 um/px (levels 1, 2, 4, 8), written in
seconds: glass everywhere (one pre-encoded white tile repeated) except `blocks` x `blocks` copies of a
4,096 x 4,096 demo slide's tiles, spread over the slide. The analysis (`analyse_slide`: tissue mask, region
reads in workers, a pcamnet with its initial weights, every output) runs in this process; the figure is
the peak resident memory of this process and, separately, of its largest worker (ru_maxrss).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402
from pcam_core.models import create_model  # noqa: E402
from pcam_core.slides.batch import analyse_slide  # noqa: E402
from pcam_core.slides.demo import DemoSlideSpec, make_demo_slide  # noqa: E402
from pcam_core.slides.folder import AnalysisFolder  # noqa: E402

TILE = 256
SOURCE = 4096  # side of the demo slide whose tiles are copied in


def _source_tiles(path: Path) -> dict[int, dict[tuple[int, int], bytes]]:
    """Encoded tiles of each level of the demo slide: {downsample: {(row, col): bytes}}."""
    import tifffile

    out: dict[int, dict[tuple[int, int], bytes]] = {}
    with tifffile.TiffFile(path) as tif, open(path, "rb") as fh:
        for page in tif.pages:
            d = round(tif.pages[0].shape[1] / page.shape[1])
            across = -(-page.shape[1] // TILE)
            tiles = {}
            for k, (offset, count) in enumerate(zip(page.dataoffsets, page.databytecounts)):
                fh.seek(offset)
                tiles[(k // across, k % across)] = fh.read(count)
            out[d] = tiles
    return out


def write_sparse_slide(path: Path, width: int, height: int, blocks: int, source: Path) -> None:
    import imagecodecs
    import tifffile

    white = imagecodecs.jpeg_encode(np.full((TILE, TILE, 3), 255, np.uint8), level=80)
    src = _source_tiles(source)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for index, d in enumerate((1, 2, 4, 8)):  # the levels of the source slide: the overview reads level 8
            lw, lh = -(-width // d), -(-height // d)
            rows, cols = -(-lh // TILE), -(-lw // TILE)
            placed: dict[tuple[int, int], bytes] = {}
            if d in src:
                n = SOURCE // d // TILE  # source tiles per side at this level
                for a in range(blocks):
                    for b in range(blocks):
                        # block origins on multiples of 256 x 32 level-0 pixels: tile-aligned at every level
                        y0, x0 = ((a + 1) * height // (blocks + 1)) // 8192 * 8192, ((b + 1) * width // (blocks + 1)) // 8192 * 8192
                        r0, c0 = y0 // d // TILE, x0 // d // TILE
                        placed.update({(r0 + r, c0 + c): t for (r, c), t in src[d].items() if r < n and c < n})

            def tiles(rows: int = rows, cols: int = cols, placed: dict = placed):
                for r in range(rows):
                    for c in range(cols):
                        yield placed.get((r, c), white)

            res = 1e4 / (0.243 * d)
            tif.write(tiles(), shape=(lh, lw, 3), dtype=np.uint8, tile=(TILE, TILE), photometric="rgb", compression="jpeg",
                      resolution=(res, res), resolutionunit="CENTIMETER", subfiletype=1 if index else 0, metadata=None,
                      description="SYNTHETIC sparse slide for bench_slide_memory.py" if index == 0 else None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="100000x80000")
    parser.add_argument("--stride", type=int, default=96)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=3, help="tissue blocks per side (each 4,096 x 4,096 level-0 pixels)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        make_demo_slide(tmp / "src", DemoSlideSpec(width=SOURCE, height=SOURCE, seed=0))
        write_sparse_slide(tmp / "big.tif", width, height, args.blocks, tmp / "src" / "slide.tif")
        print(f"slide {width}x{height} ({(tmp / 'big.tif').stat().st_size / 1e6:.0f} MB on disk) written in {time.perf_counter() - t:.1f} s")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        model = create_model("pcamnet").eval()
        t = time.perf_counter()
        summary = analyse_slide(model, tmp / "big.tif", AnalysisFolder(tmp / "out"), run="-", checkpoint="initial weights",
                                checkpoint_epoch=None, model_name="pcamnet", stride=args.stride, num_workers=args.workers,
                                device=torch.device("cpu"))
        seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"analysis: stride {args.stride}, map {summary['map_shape']}, {summary['windows_scored']} windows, {seconds:.1f} s")
    print(f"peak RSS: this process {peak:.0f} MB (before the analysis {before:.0f} MB); largest worker {workers:.0f} MB")


if __name__ == "__main__":
    main()
