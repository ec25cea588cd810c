"""Benchmark: `pcam slide` on a SYNTHETIC slide of CAMELYON16's size, measured whole, as a user runs it.

    python benchmarks/bench_camelyon_size.py                          # the full size: 100,000 x 220,000 px (4.5 GB on disk)
    python benchmarks/bench_camelyon_size.py --scale 0.1 --crop 0.3   # a tenth of each side, to try it
    python benchmarks/bench_camelyon_size.py --write-only             # only write the slide (timed)
    python benchmarks/bench_camelyon_size.py --work W --run candidates/pcamscan   # another run; W's slide reused

1. Writes the slide with `pcam demo-slide --pooled` (timed): `--scale` x (100,000 x 220,000) level-0 pixels at
   0.243 um/px, tissue as a few large pieces covering 25 % of it, a macrometastasis, a micrometastasis, a small one
   and isolated tumour cells where they fit (`pcam_core.slides.demo_pooled`).
2. Analyses it with `pcam slide --run bundled --input slide.tif --out ... --stride 32` (`--run`: another run) and nothing else: the default
   mode, device, workers and batch size, one pass per window, exactly the command a user types. Figures: wall
   minutes of the command (start-up, tissue mask, reading, inference, every output), windows/s (map cells with a
   value / wall seconds: the windows a per-window analysis would score), the cells the cascade refined, the peak
   memory of the command's process tree (PSS summed, `common.PeakTreeRSS`; RSS summed as an upper bound).
3. With `--crop F` (a share of each side, 0 to skip): a crop of the same slide's level 0 around its largest tumour
   region, written as a pyramid of its own, analysed by the default mode and by `--mode window` (the per-window
   reference): their windows/s and its ratio. Also the bare per-window forward pass of the bundled model (batch 256
   over random windows in RAM, in this process) for the "x bare" ratio.

Prints the figures and writes them to `--json`. On a shared machine the rates are noisy: the load average at the
start and the end is printed and saved with them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakTreeRSS, machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FULL = (100_000, 220_000)
PCAM = [sys.executable, "-m", "pcam_core"]


def run(cmd: list[str], label: str) -> dict[str, Any]:
    """Run a command to completion: wall seconds and peak memory of its process tree."""
    t = time.perf_counter()
    with PeakTreeRSS(every=0.2) as peak:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds = time.perf_counter() - t
    if done.returncode:
        raise SystemExit(f"{label} failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    print(f"  {label}: {seconds:.1f} s, peak PSS {peak.peak_gb:.2f} GB (RSS summed {peak.peak_rss_gb:.2f} GB)", flush=True)
    return {"command": " ".join(cmd[2:]), "seconds": round(seconds, 2), "peak_pss_gb": round(peak.peak_gb, 3),
            "peak_rss_gb": round(peak.peak_rss_gb, 3), "stdout": done.stdout.strip()[-500:]}


def analysis(slide: Path, out: Path, label: str, *extra: str, run_arg: str = "bundled") -> dict[str, Any]:
    """`pcam slide` as a user types it (plus `extra`), with the figures of its summary.json; a finished analysis left in
    `out` by an earlier run is removed first (it would be reused, not measured)."""
    shutil.rmtree(out, ignore_errors=True)
    result = run([*PCAM, "slide", "--run", run_arg, "--input", str(slide), "--out", str(out), "--stride", "32", *extra], label)
    summary = json.loads((out / "summary.json").read_text())
    heat = np.load(out / "heatmap.npy")
    cells = int(np.isfinite(heat).sum())
    cascade = summary.get("cascade") or {}
    result.update(mode=summary["mode"], cells=cells, map_shape=list(heat.shape), windows_per_s=round(cells / result["seconds"], 1),
                  scoring_seconds=summary["seconds"], scoring_windows_per_s=round(cells / max(summary["seconds"], 1e-9), 1),
                  minutes=round(result["seconds"] / 60, 2),
                  cells_refined=cascade.get("cells_refined"), refined_share=cascade.get("refined_share"),
                  call=summary.get("call"), size_class=summary.get("size_class"), in_scope=(summary.get("scope") or {}).get("in_scope"))
    print(f"  {label}: mode {result['mode']}, {cells:,} cells, {result['windows_per_s']:.0f} windows/s "
          f"({result['scoring_windows_per_s']:.0f} in the scoring loop alone, {summary['seconds']:.1f} s)"
          + (f", {result['cells_refined']:,} cells refined ({result['refined_share']:.1%})" if cascade else ""), flush=True)
    return result


def write_crop(slide: Path, out: Path, share: float) -> dict[str, Any]:
    """A crop of `share` of each side of the slide's level 0, centred on its largest tumour region (else its middle),
    written as a pyramid as the demo slide is; returns where it came from."""
    import openslide
    import tifffile

    from pcam_core.slides.demo import DemoSlideSpec, _levels, level_tags

    truth = json.loads((slide.parent / "truth.json").read_text())
    w, h = max(512, round(truth["width"] * share)), max(512, round(truth["height"] * share))
    regions = sorted(truth["regions"], key=lambda r: -r["diameter_mm"])
    cx, cy = (regions[0]["cx"], regions[0]["cy"]) if regions else (truth["width"] / 2, truth["height"] / 2)
    x0 = int(min(max(0, cx - w / 2), truth["width"] - w))
    y0 = int(min(max(0, cy - h / 2), truth["height"] - h))
    with openslide.OpenSlide(str(slide)) as osr:
        pixels = np.asarray(osr.read_region((x0, y0), 0, (w, h)).convert("RGB"))
    spec = DemoSlideSpec(width=w, height=h, mpp=truth["mpp"])
    out.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    with tifffile.TiffWriter(out / "slide.tif", bigtiff=w * h > 2**31) as tif:
        for index, d in enumerate(_levels(w, h)):
            level = pixels if d == 1 else np.asarray(Image.fromarray(pixels).reduce(d))
            tif.write(level, **level_tags(spec, index, d))
    return {"x": x0, "y": y0, "width": w, "height": h, "around": regions[0]["name"] if regions else "middle"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="slide side as a share of CAMELYON's 100,000 x 220,000")
    parser.add_argument("--crop", type=float, default=0.05, help="crop (share of each side) for the window mode; 0: skip")
    parser.add_argument("--write-workers", type=int, default=2, help="`pcam demo-slide --pooled --draw-workers`")
    parser.add_argument("--write-only", action="store_true", help="write the slide (timed) and stop")
    parser.add_argument("--work", help="folder for the slide and the analyses, kept (default: a temporary one, removed); a "
                        "slide of the same size already there is reused (not timed again)")
    parser.add_argument("--run", default="bundled", help="the run to analyse with (default: the bundled model)")
    parser.add_argument("--json", default=str(Path(tempfile.gettempdir()) / "bench_camelyon_size.json"))
    args = parser.parse_args()
    if not 0 < args.scale <= 1 or not 0 <= args.crop < 1:
        raise SystemExit("--scale must be in (0, 1] and --crop in [0, 1)")
    width, height = round(FULL[0] * args.scale), round(FULL[1] * args.scale)
    report: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), "scale": args.scale,
                              "size": [width, height], "load_average_start": os.getloadavg()}
    print(report["machine"])
    print(f"load average {os.getloadavg()[0]:.1f}; slide {width:,} x {height:,} px at 0.243 um/px", flush=True)
    with contextlib.nullcontext(args.work) if args.work else tempfile.TemporaryDirectory() as work:
        work = Path(work)
        slide = work / "slide" / "slide.tif"
        truth_path = slide.parent / "truth.json"
        if truth_path.exists() and [json.loads(truth_path.read_text())[k] for k in ("width", "height")] == [width, height]:
            report["write"] = {"reused": str(slide), "seconds": None}
            print(f"  reusing {slide}", flush=True)
        else:
            report["write"] = run([*PCAM, "demo-slide", "--out", str(slide.parent), "--size", f"{width}x{height}", "--pooled",
                                   "--draw-workers", str(args.write_workers)], "write the slide (pcam demo-slide --pooled)")
        truth = json.loads(truth_path.read_text())
        report["slide"] = {"bytes": slide.stat().st_size, "levels": truth["levels"], "layout": truth["layout"],
                           "regions": [(r["name"], round(r["diameter_mm"], 2)) for r in truth["regions"]]}
        print(f"  {slide.stat().st_size / 2**30:.2f} GiB, tissue {truth['layout']['tissue_share']:.1%}, blocks "
              f"{truth['layout']['blocks']}, regions {report['slide']['regions']}", flush=True)

        if args.write_only:
            report["load_average_end"] = os.getloadavg()
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
            print(f"written; {args.json}")
            return
        report["run"] = args.run
        report["slide_analysis"] = analysis(slide, work / f"analysis-{Path(args.run).name}", f"pcam slide --run {args.run} --stride 32 "
                                            "(default mode)", run_arg=args.run)
        if args.scale < 1:
            minutes = report["slide_analysis"]["minutes"] / args.scale**2
            report["slide_analysis"]["full_size_minutes_extrapolated"] = round(minutes, 1)
            print(f"  extrapolated by area to the full size: {minutes:.1f} min (fixed costs make it pessimistic)")

        if args.crop:
            report["crop"] = write_crop(slide, work / "crop", args.crop)
            print(f"crop {report['crop']}", flush=True)
            tag = Path(args.run).name
            default = analysis(work / "crop" / "slide.tif", work / f"crop-default-{tag}", "crop, default mode", run_arg=args.run)
            window = analysis(work / "crop" / "slide.tif", work / f"crop-window-{tag}", "crop, --mode window", "--mode", "window",
                              run_arg=args.run)
            report["crop"].update(default=default, window=window,
                                  ratio_default_to_window=round(default["windows_per_s"] / window["windows_per_s"], 2))
            print(f"  default mode against the window mode on the crop: {report['crop']['ratio_default_to_window']:.1f}x")

        from bench_slide_modes import bare_rate
        from pcam_core.loading import load_run_model

        bare = bare_rate(load_run_model(args.run, device="cpu").model.eval())
        report["bare_windows_per_s"] = round(bare, 1)
        report["slide_analysis"]["x_bare"] = round(report["slide_analysis"]["windows_per_s"] / bare, 2)
        print(f"bare per-window forward pass ({args.run}, batch 256): {bare:.0f} windows/s; the whole command "
              f"{report['slide_analysis']['x_bare']:.1f}x that")
    report["load_average_end"] = os.getloadavg()
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    a = report["slide_analysis"]
    written = "reused" if report["write"]["seconds"] is None else f"written in {report['write']['seconds'] / 60:.1f} min"
    print(f"\n{width:,} x {height:,}: {written}; analysed in {a['minutes']:.1f} min "
          f"({a['mode']}, {a['cells']:,} cells, {a['windows_per_s']:.0f} windows/s, peak PSS {a['peak_pss_gb']:.2f} GB); "
          f"load average {report['load_average_start'][0]:.1f} -> {report['load_average_end'][0]:.1f}; {args.json}")


if __name__ == "__main__":
    main()
