"""Benchmark: `pcam slide --mode window|dense|cascade` with the bundled model on a CAMELYON-shaped SYNTHETIC slide.

    python benchmarks/bench_slide_modes.py [--scale 0.1] [--workers 2] [--skip-window]
    python benchmarks/bench_slide_modes.py --precision --data /work/shared/data/pcam-real-dev
    python benchmarks/bench_slide_modes.py --ensemble 5 --data /work/shared/data/pcam-real-dev [--size 1536x1024]
    python benchmarks/bench_slide_modes.py --runs bundled,candidates/pcamscan --data /work/shared/data/pcam-real-dev

Slide: the demo generator (`pcam_core.slides.demo`) at `scale` x (100,000 x 220,000) level-0 pixels, 0.243 um/px
(CAMELYON16's size at --scale 1). Figures per mode, stride 32, one pass per window (no TTA), region reading in
`--workers` processes: wall seconds of the whole analysis (`analyse`: tissue mask, reads, inference, every
output), windows/s (cells scored / seconds), peak memory of the process tree (PSS, `common.PeakTreeRSS`), and
the map against the window mode's (max and mean |difference| of cell probabilities, cells at the threshold
missed or added, regions and size class). The bare forward pass (`predict_batch` over windows in RAM) is
the per-window reference speed. Minutes per CAMELYON slide are extrapolated from windows/s to the windows of
a 100,000 x 220,000 slide with 25 % tissue (335,693 cells at stride 32); the demo slide's own tissue share
is printed (it is higher than 25 %).

--precision: ROC-AUC on the bundled model's 600 held-out real patches (pcam_core/bundled/valid_predictions.csv,
read from `--data`, Kaggle layout) in float32 and with bfloat16 autocast, the largest |difference| of the
probabilities, and the dense pass's windows/s in both.

--ensemble K: an ensemble of K members against one of them, on a mosaic slide of `--size` pixels made of the bundled
model's held-out real patches (read from `--data`; a tumour block in the middle), each mode, stride 32, no TTA, no
reading workers: wall seconds of the whole analysis (with its outputs), scoring seconds (`summary.json`'s `seconds`:
tissue mask, reads, inference) and windows/s over them, the ratio to the single member's window mode, and the
ensemble's maps against its own window map; then the network alone: the dense pass over one 1,088 x 1,088 region and
the bare per-window forward pass (256 windows in RAM), one member against the ensemble. The members are K copies of
the bundled network (of its first member when it is an ensemble): their speed does not depend on their weights, but
the cascade's share of refined cells does (copies refine what one member refines).

--runs R1,R2,...: each run on the same mosaic of held-out real patches (`--size`), in its default mode (`pcam slide`
without --mode: the cascade for `pcamnet`, dense for `pcamscan`) and in window mode, stride 32, no TTA, no reading
workers: scoring windows/s, the cascade's refined share, the ratio to the first run's window mode, and each default
map against its own window map. Real tissue is where the cascade refines most cells, so this is the default modes'
speed where it matters, not on the synthetic slides.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakTreeRSS, machine  # noqa: E402
from pcam_core.bundled import BUNDLED, BUNDLED_DIR  # noqa: E402
from pcam_core.ensemble import create_ensemble, member_runs  # noqa: E402
from pcam_core.inference import predict_batch  # noqa: E402
from pcam_core.loading import load_run_model  # noqa: E402
from pcam_core.scoring_options import ScoringOptions  # noqa: E402
from pcam_core.slides.batch import analyse  # noqa: E402
from pcam_core.slides.demo import DemoSlideSpec, make_demo_slide  # noqa: E402
from pcam_core.slides.dense import dense_windows  # noqa: E402
from pcam_core.slides.mosaic import MARGIN, PATCH, write_mosaic_slide  # noqa: E402
from pcam_core.runs import RunDir  # noqa: E402
from pcam_core.transforms import eval_preset  # noqa: E402

FULL = (100_000, 220_000)
FULL_CELLS = 0.25 * FULL[0] * FULL[1] / (32 * 0.972 / 0.243) ** 2  # stride-32 cells of a CAMELYON slide, 25 % tissue


def bare_rate(model: torch.nn.Module, n: int = 1024, batch: int = 256) -> float:
    """Windows/s of the per-window forward pass over `n` random windows in RAM."""
    windows = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (n, 3, 96, 96), dtype=np.uint8))
    normalize = eval_preset()
    predict_batch(model, windows[:batch], normalize=normalize)
    t = time.perf_counter()
    for b in range(0, n, batch):
        predict_batch(model, windows[b:b + batch], normalize=normalize)
    return n / (time.perf_counter() - t)


def compare(ref: dict, ref_map: np.ndarray, summary: dict, heat: np.ndarray, in_scope: np.ndarray) -> str:
    """The map against the window mode's; cells at the threshold counted among the cells the window mode's guard keeps."""
    ok = np.isfinite(ref_map) & (ref_map >= 0)
    diff = np.abs(heat[ok] - ref_map[ok])
    t = summary["threshold"]
    ref_map, heat = np.where(in_scope, ref_map, 0.0), np.where(in_scope, heat, 0.0)
    missed, added = int(((ref_map >= t) & (heat < t)).sum()), int(((ref_map < t) & (heat >= t)).sum())
    same = ([r["cells"] for r in summary["region_list"]] == [r["cells"] for r in ref["region_list"]]
            and summary["size_class"] == ref["size_class"])
    return (f"|diff| max {diff.max():.4f} mean {diff.mean():.4f}; cells >= threshold missed {missed}, added {added} "
            f"(of {int((ref_map >= t).sum())} in scope); regions and size class identical: {same}")


def record_mode(maps: dict[str, tuple[dict, np.ndarray]], mode: str, summary: dict, heat: np.ndarray, line: str,
                window: Path, indent: str) -> None:
    """Print a mode's `line` (with the cascade's share of refined cells), keep its map in `maps`, and compare it with
    the window mode's (its analysis folder `window`) when that was run."""
    if summary.get("cascade"):
        line += f"  refined {summary['cascade']['refined_share']:.1%}"
    print(line)
    maps[mode] = (summary, heat)
    if mode != "window" and "window" in maps:
        guard = maps["window"][0]["scope"]["guard"]
        in_scope = np.load(window / "scope.npy") <= guard["threshold"] if guard else np.ones(heat.shape, bool)
        print(indent + compare(*maps["window"], summary, heat, in_scope))


def slide_modes(args: argparse.Namespace) -> None:
    width, height = round(FULL[0] * args.scale), round(FULL[1] * args.scale)
    model = load_run_model(BUNDLED, device="cpu").model.eval()
    bare = bare_rate(model)
    print(f"bare per-window forward pass (bundled pcamnet, batch 256): {bare:.0f} windows/s")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        make_demo_slide(tmp / "demo", DemoSlideSpec(width=width, height=height, seed=0))
        gen = time.perf_counter() - t
        print(f"demo slide {width} x {height}: written in {gen:.0f} s (x{1 / args.scale ** 2:.0f} the area at --scale 1: "
              f"about {gen / args.scale ** 2 / 60:.0f} min)")
        maps: dict[str, tuple[dict, np.ndarray]] = {}
        for mode in [m for m in ("window", "dense", "cascade") if not (args.skip_window and m == "window")]:
            t = time.perf_counter()
            with PeakTreeRSS() as peak:
                record = analyse(BUNDLED, tmp / "demo" / "slide.tif", tmp / mode,
                                 ScoringOptions(device="cpu", workers=args.workers, tta=False), stride=32, mode=mode)[0]
            seconds = time.perf_counter() - t
            summary = record["summary"]
            heat = np.load(tmp / mode / "heatmap.npy")
            cells = int(np.isfinite(heat).sum())
            rate = cells / seconds
            line = (f"{mode:8s} {seconds:7.1f} s  {cells} cells ({cells / heat.size:.0%} of the map)  {rate:6.0f} windows/s "
                    f"({rate / bare:.1f}x bare)  peak PSS {peak.peak_gb:.2f} GB  CAMELYON slide: {FULL_CELLS / rate / 60:.1f} min")
            record_mode(maps, mode, summary, heat, line, tmp / "window", "         ")


def held_out(data: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The bundled model's held-out patches (never trained on): their table (id, label) and pixels (N, 96, 96, 3)."""
    from PIL import Image

    table = pd.read_csv(BUNDLED_DIR / "valid_predictions.csv", dtype={"id": str})
    return table, np.stack([np.asarray(Image.open(Path(data) / "train" / f"{i}.tif").convert("RGB")) for i in table["id"]])


def held_out_mosaic(args: argparse.Namespace, slide: Path) -> str:
    """Write a mosaic slide of `--size` pixels made of the bundled model's held-out real patches, a tumour block in the
    middle; returns its description."""
    width, height = (int(v) for v in args.size.split("x"))
    table, pixels = held_out(args.data)
    labels = table["label"].to_numpy()
    rows, cols = (height - 2 * MARGIN) // PATCH, (width - 2 * MARGIN) // PATCH
    block = (rows // 3, rows - rows // 3, cols // 3, cols - cols // 3)
    write_mosaic_slide(slide, list(pixels[labels == 0]), list(pixels[labels == 1]), rows=rows, cols=cols, lesions=[block], size=(width, height))
    return f"mosaic of held-out real patches {width} x {height} px ({rows} x {cols} patches, tumour block {block})"


def ensemble_modes(args: argparse.Namespace) -> None:
    bundled = RunDir(BUNDLED_DIR)
    member = member_runs(bundled)[0].path if bundled.is_ensemble else BUNDLED
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        slide = tmp / "slide.tif"
        mosaic = held_out_mosaic(args, slide)
        runs = {"1 member": member, f"ensemble of {args.ensemble}": create_ensemble([member] * args.ensemble, tmp / "ensemble").path}
        print(f"{mosaic}, stride 32, no TTA, no reading workers")
        reference = None
        for name, run in runs.items():
            maps: dict[str, tuple[dict, np.ndarray]] = {}
            for mode in ("window", "dense", "cascade"):
                out = tmp / name.replace(" ", "-") / mode
                t = time.perf_counter()
                summary = analyse(run, slide, out, ScoringOptions(device="cpu", workers=0, tta=False), stride=32, mode=mode)[0]["summary"]
                wall = time.perf_counter() - t
                heat = np.load(out / "heatmap.npy")
                rate = int(np.isfinite(heat).sum()) / summary["seconds"]
                reference = reference or rate
                line = (f"{name:14s} {summary['mode']:8s} wall {wall:5.1f} s, scoring {summary['seconds']:5.1f} s: "
                        f"{rate:6.1f} windows/s ({rate / reference:.2f}x one member's window mode)")
                record_mode(maps, mode, summary, heat, line, out.parent / "window", "               ")
        network = {name: load_run_model(run, device="cpu").model.eval() for name, run in runs.items()}
    normalize = eval_preset()
    region = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 1088, 1088), dtype=np.uint8))
    for name, model in network.items():
        dense_windows(model, region, 32, normalize=normalize)  # exports each member to ONNX Runtime once
        t = time.perf_counter()
        for _ in range(3):
            grid, _ = dense_windows(model, region, 32, normalize=normalize)
        dense = 3 * grid.size / (time.perf_counter() - t)
        bare = bare_rate(model, n=256)
        print(f"{name:14s} network alone: dense {dense:6.0f} windows/s, per window {bare:5.1f} windows/s ({dense / bare:.1f}x)")


def real_runs(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        slide = tmp / "slide.tif"
        print(f"{held_out_mosaic(args, slide)}, stride 32, no TTA, no reading workers")
        reference = None
        for run in args.runs.split(","):
            maps: dict[str, tuple[dict, np.ndarray]] = {}
            for mode in ("window", None):
                out = tmp / Path(run).name / (mode or "default")
                summary = analyse(run, slide, out, ScoringOptions(device="cpu", workers=0, tta=False), stride=32, mode=mode)[0]["summary"]
                heat = np.load(out / "heatmap.npy")
                rate = int(np.isfinite(heat).sum()) / summary["seconds"]
                reference = reference or rate
                line = (f"{run:20s} {'default' if mode is None else 'window':7s} ({summary['mode']}): scoring {summary['seconds']:5.1f} s, "
                        f"{rate:6.1f} windows/s ({rate / reference:.2f}x the first run's window mode); call {summary.get('call')}, "
                        f"{summary['regions_reported']} region(s) reported")
                record_mode(maps, mode or "default", summary, heat, line, out.parent / "window", "    ")


def precision(args: argparse.Namespace) -> None:
    from sklearn.metrics import roc_auc_score

    table, pixels = held_out(args.data)
    model = load_run_model(BUNDLED, device="cpu").model.eval()
    normalize = eval_preset()
    batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    region = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 1088, 1088), dtype=np.uint8))
    probs = {}
    for name, amp in (("float32", None), ("bfloat16", torch.bfloat16)):
        probs[name] = np.concatenate([predict_batch(model, batch[b:b + 200], normalize=normalize, amp_dtype=amp).numpy()
                                      for b in range(0, len(batch), 200)])
        dense_windows(model, region, 32, normalize=normalize, amp_dtype=amp)
        t = time.perf_counter()
        for _ in range(3):
            grid, _ = dense_windows(model, region, 32, normalize=normalize, amp_dtype=amp)
        rate = 3 * grid.size / (time.perf_counter() - t)
        print(f"{name:9s} ROC-AUC {roc_auc_score(table['label'], probs[name]):.4f} on {len(table)} held-out real patches; "
              f"dense {rate:.0f} windows/s; bare {bare_rate(model):.0f} windows/s")
    print(f"bfloat16 against float32: max |difference| {np.abs(probs['bfloat16'] - probs['float32']).max():.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.1, help="slide side as a share of CAMELYON's 100,000 x 220,000")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-window", action="store_true", help="leave out the (slow) per-window reference")
    parser.add_argument("--precision", action="store_true", help="float32 against bfloat16 on real held-out patches")
    parser.add_argument("--data", default="/work/shared/data/pcam-real-dev",
                        help="Kaggle-layout real patches (--precision, --ensemble)")
    parser.add_argument("--ensemble", type=int, default=0, metavar="K",
                        help="an ensemble of K members against one member, each mode, on a mosaic of real patches")
    parser.add_argument("--size", default="1536x1024", help="the mosaic's width x height in pixels (--ensemble, --runs)")
    parser.add_argument("--runs", help="runs (comma-separated) to compare in their default mode on a mosaic of real patches")
    args = parser.parse_args()
    if args.ensemble == 1 or args.ensemble < 0:
        raise SystemExit(f"--ensemble must be at least 2 (members), not {args.ensemble}")
    print(machine())
    if args.runs:
        real_runs(args)
    elif args.ensemble:
        ensemble_modes(args)
    else:
        precision(args) if args.precision else slide_modes(args)


if __name__ == "__main__":
    main()
