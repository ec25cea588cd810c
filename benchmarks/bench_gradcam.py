"""Seconds per class activation map on the CPU: one patch at a time (the interactive case) and per batch.

    python benchmarks/bench_gradcam.py                      # untrained pcamnet, gradcam, default threads
    python benchmarks/bench_gradcam.py --run RUN_DIR --threads 1 --method gradcam++

Timings are medians over --repeats after --warmup calls; random patches (the cost does not depend on
the pixels). The target for the default model and method is under 0.3 s for one patch.

On a CPU that other work keeps busy (a training run beside the dashboard), OpenMP threads that
spin-wait for each other make every small op slow: compare the default with `--threads 1`, or run
with OMP_WAIT_POLICY=PASSIVE in the environment.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np
import torch

from pcam_core.explain import DEFAULT_METHOD, explain_batch, overlay, png_bytes, resolve_layer
from pcam_core.inference import predict_batch
from pcam_core.models import CPU_DEFAULT, create_model
from pcam_core.loading import load_run_model


def median_seconds(fn: Callable[[], object], *, repeats: int, warmup: int) -> tuple[float, float]:
    """(median, min) wall-clock seconds of `fn()` over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a run folder (default: an untrained model, which times the same)")
    parser.add_argument("--model", default=CPU_DEFAULT, help="registered model when no --run is given")
    parser.add_argument("--method", default=DEFAULT_METHOD)
    parser.add_argument("--layer", help="default: the model's default Grad-CAM layer")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run:
        loaded = load_run_model(args.run, device="cpu")
        model, config = loaded.model, loaded.config
        name = config.model.name
    else:
        torch.manual_seed(0)
        name = args.model
        model = create_model(name).eval()
    layer, size = resolve_layer(name, args.layer)
    patches = np.random.default_rng(0).integers(0, 256, size=(args.batch, 96, 96, 3), dtype=np.uint8)
    one = patches[:1]

    def explain(x: np.ndarray):
        return explain_batch(model, x, model_name=name, method=args.method, layer=layer)

    def interactive() -> bytes:
        result = explain(one)
        return png_bytes(overlay(one[0], result.maps[0]))

    print(f"{args.method} on {name} ({'run ' + args.run if args.run else 'untrained weights'}), layer {layer} ({size}x{size}), "
          f"CPU, {torch.get_num_threads()} thread(s), torch {torch.__version__}; median (min) of {args.repeats} after {args.warmup} warm-up")
    fwd, fwd_min = median_seconds(lambda: predict_batch(model, torch.from_numpy(one).permute(0, 3, 1, 2)), repeats=args.repeats, warmup=args.warmup)
    print(f"  prediction only, 1 patch:          {fwd:.4f} s ({fwd_min:.4f})")
    single, single_min = median_seconds(lambda: explain(one), repeats=args.repeats, warmup=args.warmup)
    print(f"  explain 1 patch:                   {single:.4f} s ({single_min:.4f})")
    full, full_min = median_seconds(interactive, repeats=args.repeats, warmup=args.warmup)
    print(f"  explain + overlay + PNG, 1 patch:  {full:.4f} s ({full_min:.4f})")
    batch, batch_min = median_seconds(lambda: explain(patches), repeats=args.repeats, warmup=min(args.warmup, 1))
    print(f"  explain {args.batch} patches:                {batch:.4f} s ({batch_min:.4f}), {batch / args.batch:.4f} s per patch")
    print(f"  single patch under 0.3 s: {'yes' if single < 0.3 else 'NO'}")


if __name__ == "__main__":
    main()
