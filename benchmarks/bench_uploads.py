"""Seconds per uploaded patch on the Predict page's path, on the CPU: decoding the files, scoring them with
test-time augmentation (the page's default), the Grad-CAM heat maps and the overlay images.

    python benchmarks/bench_uploads.py [--run RUN_DIR] [--tifs FOLDER] [--sizes 1 5 20 64]

The dashboard issue asks for the probability of an uploaded patch within a second. Files are tif bytes
in memory, as Streamlit's uploader hands them over: patches from --tifs (for instance a Kaggle train/
folder) or random patches. The model is the run's best checkpoint, or an untrained default model
(timed the same). Medians over --repeats after one warm-up call.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench_gradcam import median_seconds
from pcam_core.explain import DEFAULT_METHOD, explain_batch, overlay, png_bytes, resolve_layer
from pcam_core.models import CPU_DEFAULT, create_model
from pcam_core.loading import load_run_model
from pcam_core.predict import score_uploads


def tif_files(n: int, folder: Path | None) -> list[tuple[str, bytes]]:
    if folder is not None:
        paths = sorted(folder.glob("*.tif"))[:n]
        if len(paths) < n:
            raise SystemExit(f"{folder} holds {len(paths)} tifs; --sizes asks for {n}")
        return [(p.name, p.read_bytes()) for p in paths]
    patches = np.random.default_rng(n).integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8)
    files = []
    for i, pixels in enumerate(patches):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="TIFF")
        files.append((f"patch{i:03d}.tif", buffer.getvalue()))
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a run folder (default: an untrained model of the default kind)")
    parser.add_argument("--tifs", type=Path, help="a folder of 96x96 tifs (default: random patches)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 5, 20, 64])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    if args.run:
        loaded = load_run_model(args.run, device="cpu")
        model, config = loaded.model, loaded.config
        name = config.model.name
    else:
        torch.manual_seed(0)
        name, model = CPU_DEFAULT, create_model(CPU_DEFAULT).eval()
    layer, size = resolve_layer(name, None)
    print(f"{name} ({'run ' + args.run if args.run else 'untrained weights'}), CPU, {torch.get_num_threads()} thread(s); "
          f"{'tifs from ' + str(args.tifs) if args.tifs else 'random patches as tifs'}; median of {args.repeats}")
    print(f"{'files':>6}{'score (TTA)':>14}{'+ heat maps':>14}{'per patch':>12}   goal: under 1 s a patch")
    for n in args.sizes:
        files = tif_files(n, args.tifs)

        def score():
            return score_uploads(model, files, tta=True)

        def page():
            result = score()
            pixels = np.stack([p.pixels for p in result.scored])
            maps = explain_batch(model, pixels, model_name=name, method=DEFAULT_METHOD, layer=layer).maps
            return [png_bytes(image) for image in overlay(pixels, maps)]

        scored, _ = median_seconds(score, repeats=args.repeats, warmup=1)
        total, _ = median_seconds(page, repeats=args.repeats, warmup=1)
        print(f"{n:>6}{scored:>12.3f} s{total:>12.3f} s{total / n:>10.3f} s   {'yes' if total / n < 1 else 'NO'}")
    print(f"(heat maps: {DEFAULT_METHOD} at {layer}, {size}x{size})")


if __name__ == "__main__":
    main()
