"""Benchmark 1: our loader against torchvision's PCAM on the same HDF5 files.

    python benchmarks/bench_data.py [--n 32768] [--workers 2] [--stream-full]

Both sides read the same official-layout files (page cache warmed for both), shuffled, batch 256,
the same worker count, and produce the same output: float32 tensors (B, 3, 96, 96) normalised with
the same mean and std. Prints images per second for each and the ratio. `--stream-full` also streams
a 262,144-patch split (7.2 GB, written once into --dir) and prints the peak memory of the process
tree (main process plus workers) while doing so.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torchvision.transforms as T
from torch.utils.data import DataLoader
from torchvision.datasets import PCAM

from common import PeakTreeRSS, machine, warm_page_cache, write_official_split
from pcam_core.data import PCamH5, make_loader
from pcam_core.transforms import PCAM_MEAN, PCAM_STD, eval_preset


def ours(root: Path, batch: int, workers: int, limit: int) -> float:
    """Normalisation runs in the workers (`batch_transform`), as torchvision's transform does; ids are
    left out (`ids=False`, as the trainer does): both sides deliver images and labels."""
    loader = make_loader(PCamH5(root, "train"), batch, shuffle=True, num_workers=workers, seed=0,
                         ids=False, batch_transform=eval_preset())
    return _rate((b["image"] for b in loader), limit)


def torchvision_pcam(root: Path, batch: int, workers: int, limit: int) -> float:
    transform = T.Compose([T.ToTensor(), T.Normalize(PCAM_MEAN, PCAM_STD)])
    dataset = PCAM(str(root.parent), split="train", transform=transform)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers)
    return _rate((images for images, _ in loader), limit)


def _rate(batches, limit: int) -> float:
    """Images per second after the first batch (worker start-up excluded)."""
    seen = 0
    start = None
    for x in batches:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 96, 96)
        if start is None:
            start = time.perf_counter()
            continue
        seen += x.shape[0]
        if seen >= limit:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=32_768, help="patches in the benchmark split")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tv-limit", type=int, default=8_192, help="images to time for torchvision (it is slow)")
    parser.add_argument("--stream-full", action="store_true", help="also stream a 262,144-patch split and report peak memory")
    parser.add_argument("--dir", type=Path, help="where to write the files (default: a temporary folder)")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        base = args.dir or Path(tmp)
        root = base / "bench" / "pcam"  # torchvision's PCAM wants <root>/pcam/<files>
        if not (root / "camelyonpatch_level_2_split_train_x.h5").exists():
            write_official_split(root, "train", args.n)
        warm_page_cache(*root.glob("*.h5"))
        rate_ours = ours(root, args.batch, args.workers, args.n)
        rate_tv = torchvision_pcam(root, args.batch, args.workers, args.tv_limit)
        print(f"loader, {args.n} patches, batch {args.batch}, {args.workers} workers, shuffled, normalised float output")
        print(f"  pcam_core make_loader(PCamH5): {rate_ours:10.0f} images/s")
        print(f"  torchvision PCAM + DataLoader: {rate_tv:10.0f} images/s")
        print(f"  ratio: {rate_ours / rate_tv:.1f}x (goal: at least 10x)")
        if args.stream_full:
            full = base / "full"
            if not (full / "camelyonpatch_level_2_split_train_x.h5").exists():
                print("writing a 262,144-patch split (7.2 GB) ...")
                write_official_split(full, "train", 262_144)
            loader = make_loader(PCamH5(full, "train"), args.batch, shuffle=True, num_workers=args.workers,
                                 ids=False, batch_transform=eval_preset())
            start = time.perf_counter()
            with PeakTreeRSS() as peak:
                n = sum(b["image"].shape[0] for b in loader)
            secs = time.perf_counter() - start
            print(f"streamed {n} patches once in {secs:.0f} s ({n / secs:.0f} images/s): "
                  f"peak memory of the process tree {peak.peak_gb:.2f} GB PSS, {peak.peak_rss_gb:.2f} GB summed RSS "
                  f"(goal: under 2 GB)")


if __name__ == "__main__":
    main()
