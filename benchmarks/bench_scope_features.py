"""What ending each forward pass at the scope layers saves when the out-of-scope guard is fitted.

    python benchmarks/bench_scope_features.py [--data tests/data/pcam-real-kaggle] [--n 1024] [--repeats 3]

`pcam_core.scope.scope_features` (the trainer's guard fit when a run ends, `pcam scope`, the dashboard's check of
the patches it shows) reads the channel statistics of early layers (`ModelSpec.scope_layers`: pcamnet's stage1 and
stage2). It now stops each forward pass once those layers have run (`FeatureTap(stop=True)`); before, every pass ran
the whole network, and for an ensemble every member, though the guard reads the first member alone. Both ways are
timed here in the same process on the same real patches (repeated up to `--n`), best of `--repeats`, and their
features compared: they must be equal.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import load_average, machine  # noqa: E402
from pcam_core.data import open_dataset  # noqa: E402
from pcam_core.loading import load_run_model  # noqa: E402
from pcam_core.models import create_model  # noqa: E402
from pcam_core.scope import scope_features, tap_for  # noqa: E402
from pcam_core.transforms import eval_preset  # noqa: E402


@torch.no_grad()
def whole_passes(model: torch.nn.Module, name: str, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The features as they were taken before: a whole forward pass per batch, the tap reading the scope layers."""
    normalize = eval_preset()
    parts = []
    with tap_for(model, name) as tap:
        for start in range(0, len(pixels), batch_size):
            model(normalize(torch.from_numpy(np.ascontiguousarray(pixels[start : start + batch_size])).permute(0, 3, 1, 2)))
            parts.append(tap.take())
    return np.concatenate(parts)


def best_of(repeats: int, fn) -> tuple[float, np.ndarray]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO / "tests" / "data" / "pcam-real-kaggle"))
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dataset = open_dataset(args.data, "train")
    pixels = dataset.read_pixels(np.arange(len(dataset)))
    pixels = np.concatenate([pixels] * -(-args.n // len(pixels)))[: args.n]
    print(f"{machine()}; {load_average()}; {len(pixels)} real patches of {args.data}, torch threads {torch.get_num_threads()}")
    torch.manual_seed(0)
    models = {"pcamnet (one network)": (create_model("pcamnet").eval(), "pcamnet")}
    bundled = load_run_model("bundled", device="cpu")
    models[f"bundled ({bundled.model_name}, the guard reads its first member)"] = (bundled.model, bundled.model_name)
    print(f"{'model':<60} {'whole passes':>13} {'stopped':>9} {'ratio':>6}  features equal")
    for label, (model, name) in models.items():
        whole_s, whole = best_of(args.repeats, lambda: whole_passes(model, name, pixels))
        stopped_s, stopped = best_of(args.repeats, lambda: scope_features(model, name, pixels))
        equal = np.array_equal(whole, stopped)
        print(f"{label:<60} {whole_s:>12.2f}s {stopped_s:>8.2f}s {whole_s / stopped_s:>5.1f}x  {equal}")


if __name__ == "__main__":
    main()
