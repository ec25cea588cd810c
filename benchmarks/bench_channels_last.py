"""What the channels-last memory format gives our convolutional networks on this CPU, training and scoring.

    python benchmarks/bench_channels_last.py [--models pcamnet pcamnet_wide ...] [--repeats 5] [--threads N]

`pcam_core.models.create_model` returns every network in the channels-last memory format (NHWC weights: oneDNN's
convolutions then run without converting every activation to and from its own blocked layout). Here each model is
built twice from the same seed, in the default NCHW layout and channels-last, and both are timed in this process,
interleaved, best of `--repeats`: a training step (batch 32, AdamW, the training loss) and a scoring pass (batch
256, no gradients), on patches already in memory; then the bundled ensemble's scoring pass, as `pcam predict` and
slide analysis run it. The logits of the two layouts are compared: they differ by rounding only.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import load_average, machine  # noqa: E402
from pcam_core.loading import load_run_model  # noqa: E402
from pcam_core.models import create_model  # noqa: E402

DEFAULT_MODELS = ("pcamnet", "pcamnet_wide", "pcamnet_p4m", "pcamresnet", "resnet18")


def layouts(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The same weights in both layouts."""
    return {"NCHW": copy.deepcopy(model).to(memory_format=torch.contiguous_format),
            "channels-last": copy.deepcopy(model).to(memory_format=torch.channels_last)}


def train_step_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 3) -> float:
    """Seconds per training step (after one warm-up step), the mean of `steps`."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        loss = F.binary_cross_entropy_with_logits(model(x).reshape(-1), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


@torch.no_grad()
def score_seconds(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    model.eval()
    model(x[:8])  # warm-up
    start = time.perf_counter()
    out = model(x)
    return time.perf_counter() - start, out


def compare(name: str, pair: dict[str, torch.nn.Module], repeats: int, train: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    x_train, y = torch.randn(32, 3, 96, 96, generator=gen), torch.randint(0, 2, (32,), generator=gen).float()
    x_score = torch.randn(256, 3, 96, 96, generator=gen)
    best = {layout: [float("inf"), float("inf")] for layout in pair}
    logits = {}
    for _ in range(repeats):  # interleaved: a drift of the machine's speed hits both layouts alike
        for layout, model in pair.items():
            if train:
                best[layout][0] = min(best[layout][0], train_step_seconds(copy.deepcopy(model), x_train, y))
            seconds, logits[layout] = score_seconds(model, x_score)
            best[layout][1] = min(best[layout][1], seconds)
    (tn, sn), (tc, sc) = best["NCHW"], best["channels-last"]
    diff = (logits["NCHW"] - logits["channels-last"]).abs().max().item()
    training = f"{32 / tn:7.0f} | {32 / tc:7.0f} | **{tn / tc:.2f}x**" if train else "- | - | -"
    print(f"| {name} | {training} | {256 / sn:7.0f} | {256 / sc:7.0f} | **{sn / sc:.2f}x** | {diff:.1e} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-bundled", action="store_true", help="leave out the bundled ensemble")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{machine()}; {args.threads} thread(s); {load_average()}; best of {args.repeats}, interleaved")
    print("| model | train NCHW patches/s | train channels-last | ratio | score NCHW patches/s | score channels-last | ratio | max logit difference |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        torch.manual_seed(0)
        compare(name, layouts(create_model(name)), args.repeats, train=True)
    if not args.no_bundled:
        compare("bundled ensemble (5 x pcamnet)", layouts(load_run_model("bundled", device="cpu").model), args.repeats, train=False)


if __name__ == "__main__":
    main()
