"""Benchmark 2: training images per second of `pcam train` against a plain PyTorch loop.

    python benchmarks/bench_train.py [--model pcamnet] [--batch 64] [--steps 60] [--device auto] [--compile]

Both sides train the same model from `create_model`, at the same batch size, with the same optimiser
(AdamW, lr 2e-3), on the same patches held in memory. The plain loop is the textbook one:
normalise, forward, BCE-with-logits, backward, step, over tensors already in RAM (on the GPU when
there is one), in the channels-last memory format the engine also uses (and NCHW for reference).
`pcam train` is timed from its own steps.jsonl (images/s per 10-step window, first window dropped),
once with augmentation and weight averaging off (the engine's own overhead: goal >= 0.95 of the
plain loop) and once with the default recipe (what augmentation and EMA cost on top).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import machine
from pcam_core.data import PCamH5
from pcam_core.data.demo import DemoSpec, make_demo_dataset
from pcam_core.fileio import read_jsonl
from pcam_core.models import create_model
from pcam_core.transforms import eval_preset

REPO = Path(__file__).resolve().parents[1]


def forward_gflop(model_name: str) -> float:
    """Forward FLOPs of one 96x96 patch (torch's FLOP counter: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model(model_name).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 96, 96))
    return counter.get_total_flops() / 1e9


def plain_loop(root: Path, model_name: str, batch: int, steps: int, device: torch.device, *, channels_last: bool,
               compile: bool = False) -> float:
    ds = PCamH5(root, "train")
    x_all = torch.from_numpy(ds.read_pixels(range(len(ds)))).permute(0, 3, 1, 2).contiguous().to(device)
    y_all = torch.from_numpy(ds.labels).float().to(device)
    model = create_model(model_name).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    forward = torch.compile(model) if compile else model
    # the engine's default on CUDA: bf16 autocast (off on the CPU)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    normalize = eval_preset().to(device)
    model.train()
    g = torch.Generator().manual_seed(0)
    times = []
    for step in range(steps + 5):
        idx = torch.randint(0, len(ds), (batch,), generator=g).to(device)
        start = time.perf_counter()
        x = normalize(x_all[idx])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp:
            logits = forward(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()  # the engine reads the loss every step too
        if step >= 5:
            times.append(time.perf_counter() - start)
    return batch * len(times) / sum(times)


def engine(root: Path, model_name: str, batch: int, steps: int, device: str, extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "pcam_core", "train", "--data", str(root), "--out", str(out), "--model", model_name,
               "--batch-size", str(batch), "--max-steps", str(steps + 10), "--epochs", "1", "--device", device,
               "--workers", "0", "--cache", "yes", *extra]
        subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
        records = read_jsonl(out / "steps.jsonl")
        rates = [r["images_per_s"] for r in records[1:]]  # the first window holds warm-up
        return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pcamnet")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--data", type=Path, help="a PCam HDF5 folder (default: 4,096 synthetic patches)")
    parser.add_argument("--compile", action="store_true", help="torch.compile on both sides")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or Path(tmp) / "demo"
        if args.data is None:
            make_demo_dataset(root, DemoSpec(sizes=(("train", 4096), ("valid", 512))))
        plain_cl = plain_loop(root, args.model, args.batch, args.steps, device, channels_last=True, compile=args.compile)
        plain_nchw = plain_loop(root, args.model, args.batch, args.steps, device, channels_last=False, compile=args.compile)
        extra = ["--compile"] if args.compile else []
        bare = engine(root, args.model, args.batch, args.steps, device.type, ["--no-augment", "--ema", "0", *extra])
        full = engine(root, args.model, args.batch, args.steps, device.type, extra)
    best_plain = max(plain_cl, plain_nchw)
    print(f"training {args.model}, batch {args.batch}, {device.type}, images/s (median over {args.steps} steps)")
    print(f"  plain loop, channels-last:            {plain_cl:8.0f}")
    print(f"  plain loop, NCHW:                     {plain_nchw:8.0f}")
    print(f"  pcam train, no augmentation, no EMA:  {bare:8.0f}   ratio to the best plain loop: {bare / best_plain:.3f} (goal >= 0.95)")
    print(f"  pcam train, default recipe:           {full:8.0f}   ratio: {full / best_plain:.3f} (augmentation + EMA included)")
    gflop = forward_gflop(args.model)
    print(f"  {args.model}: {gflop:.3f} GFLOP forward per patch, about {3 * gflop:.2f} forward and backward; "
          f"the engine's rate is {bare * 3 * gflop / 1e3:.2f} TFLOP/s")


if __name__ == "__main__":
    main()
