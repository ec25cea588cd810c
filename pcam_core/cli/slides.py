"""`pcam slide`, `slide-report`, `slide-queue` and `demo-slide`: whole-slide images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..scoring_options import DEFAULT_SLIDE_MODE, SLIDE_MODES
from .common import RUN_HELP, progress_bar, scoring_options, shared


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("slide", parents=shared("checkpoint", "device", "slide_tta", "batch_size", "workers", "threshold"), help="tumour map, regions and report of whole-slide images", description=(
        "Score whole-slide images on PCam's definition: a 96-px window at 0.972 um/px per 32x32 cell (stride 32) or "
        "per 96x96 cell (stride 96), tissue only. A slide file writes into --out; a folder of slides writes "
        "--out/<slide name>/ per slide: heatmap.npy, heatmap.png, heatmap.tif, tissue.png, tumour_regions.geojson, "
        "tiles.csv and summary.json. --shard i/n splits the work across machines: a folder of at least n slides by "
        "slide, one slide (or fewer slides than shards) by its region tiles, each shard into OUT/shards/, the outputs "
        "written by the shard that completes the set (or by --merge). Under torchrun each process takes shard "
        "RANK/WORLD_SIZE on its own GPU (cuda:LOCAL_RANK) or the CPU: torchrun --standalone --nproc-per-node 4 -m pcam_core -- slide "
        "... --workers are the processes that read the slide's regions (-1: two). A cell counts as tumour at --threshold "
        "(with --merge: the --run's own threshold unless --threshold gives one). See docs/slides.md."))
    p.add_argument("--run", help=RUN_HELP + " (not needed with --merge)")
    p.add_argument("--input", required=True, help="a slide file (SVS, NDPI, MRXS, tiled TIFF, ...) or a folder of them")
    p.add_argument("--out", required=True)
    p.add_argument("--stride", type=int, choices=(32, 96), default=32, help="cell size in PCam-scale pixels (96: 9x cheaper)")
    p.add_argument("--mode", choices=SLIDE_MODES, help="cascade: a dense pass, then each window near a cell that "
                   "could be tumour scored alone (the same regions as window, on the test slides); dense: one pass over each "
                   "region, windows read off its output (exact for a model without padding, pcamscan; approximate at window borders "
                   "for pcamnet); window: each window alone (the reference; what models that cannot scan fall back to). See "
                   f"docs/slides.md (default: the fastest exact one: dense for pcamscan, else {DEFAULT_SLIDE_MODE}; at stride 96, "
                   "and for a shard of one slide but with pcamscan: window)")
    p.add_argument("--mpp", type=float, help="microns per level-0 pixel, for slides whose metadata lacks it")
    p.add_argument("--min-tissue", type=float, default=0.25, help="tissue share a cell needs to be scored")
    p.add_argument("--shard", help="i/n: the i-th of n parts: of the sorted slide list when the folder has at least n slides, "
                   "else of each slide's region tiles (written to OUT/shards/, merged when all n are complete)")
    p.add_argument("--merge", action="store_true", help="write the outputs of sharded slides whose shards are all complete "
                   "(names the missing shards otherwise); scores nothing")
    p.add_argument("--resume", action="store_true", help="continue unfinished analyses in --out where they stopped")
    p.set_defaults(func=cmd_slide)

    p = sub.add_parser("slide-report", help="the printable HTML report of a slide analysis", description=(
        "Write the report of a finished `pcam slide` analysis: one self-contained HTML file (images embedded, print CSS "
        "for A4) with the map, the figures, the regions with crops, the model and its card. `pcam slide` writes it as "
        "report.html beside summary.json already; this writes it again (e.g. after the slide moved). See docs/slides.md."))
    p.add_argument("--analysis", required=True, help="an analysis folder (holding summary.json)")
    p.add_argument("--out", help="the HTML file to write (default: report.html in the analysis folder)")
    p.set_defaults(func=cmd_slide_report)

    p = sub.add_parser("slide-queue", help="run the dashboard's queue of slide analyses (the dashboard starts it)", description=(
        "Run the queued slide analyses of a workspace one at a time until the queue is empty, each as its own "
        "background job; leave at once when another runner is running. See docs/slides.md, 'The slide library'."))
    p.add_argument("--workspace", required=True, help="the workspace folder")
    p.set_defaults(func=cmd_slide_queue)

    p = sub.add_parser("demo-slide", help="write a SYNTHETIC pyramidal whole-slide TIFF with known tumour regions")
    p.add_argument("--out", required=True, help="folder for slide.tif, truth.png, truth.npy and truth.json")
    p.add_argument("--size", default="20000x16000", help="level-0 WIDTHxHEIGHT in pixels (at 0.243 um/px)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pooled", action="store_true", help="tissue as a few large pieces covering --tissue-share of the "
                   "glass, written from a pool of blocks drawn once: CAMELYON16's size (--size 100000x220000) in minutes, "
                   "not an hour (see docs/slides.md, 'The demo slide')")
    p.add_argument("--tissue-share", type=float, default=0.25, help="share of the slide that is tissue (--pooled)")
    p.add_argument("--pool", type=int, default=32, help="distinct tissue blocks in the pool (--pooled)")
    p.add_argument("--draw-workers", type=int, default=2, help="processes drawing the blocks at tissue edges and tumour (--pooled)")
    p.set_defaults(func=cmd_demo_slide)


def cmd_slide(args: argparse.Namespace) -> int:
    from ..decision import DEFAULT_THRESHOLD
    from ..loading import run_threshold
    from ..sharding import parse_shard
    from ..slides.batch import analyse, merge

    if args.merge:
        threshold = args.threshold if args.threshold is not None else run_threshold(args.run) if args.run else DEFAULT_THRESHOLD
        return _report_slides(merge(args.input, args.out, threshold=threshold))
    if not args.run:
        raise ValueError("--run is required (a run folder, or 'bundled'), except with --merge")
    from ..devices import limit_malloc_arenas

    limit_malloc_arenas()  # before the model's threads start (score_slide calls it again for other callers)

    bars: list[Any] = []

    def progress_factory(name: str):
        def start(total: int, done: int) -> None:
            bars.append(progress_bar(total, name, unit="win", initial=done))

        return start, lambda n: bars[-1].update(n) if bars else None

    try:
        records = analyse(args.run, args.input, args.out, scoring_options(args), shard=parse_shard(args.shard),
                          resume=args.resume, progress_factory=progress_factory, stride=args.stride, mpp=args.mpp,
                          min_tissue=args.min_tissue, mode=args.mode)
    finally:
        for bar in bars:
            bar.close()
    return _report_slides(records)


def _report_slides(records: list[dict[str, Any]]) -> int:
    failed = [r for r in records if r["status"] == "failed"]
    for r in records:
        if r["status"] == "failed":
            error = str(r["error"]).removeprefix(f"{r['slide']}: ")  # most errors name their file already
            print(f"failed: {r['slide']}: {error}", file=sys.stderr)
            continue
        if r["status"] == "shard done":
            print(f"shard {r['shard']} done: {r['slide']} -> {r['folder']}/shards; outputs when the other shards are complete "
                  f"(not yet: {', '.join(r['missing'])})")
            continue
        s = r["summary"]
        scope = s.get("scope") or {}
        if scope and not scope.get("in_scope", True):
            print(f"{r['status']}: {r['slide']} -> {r['folder']}: NOT ASSESSED: {scope['reason']} No call, no size class "
                  f"({s['windows_scored']} windows in {s['seconds']:.1f} s)")
            continue
        # an analysis made before the slide decision reported every region, its slide score the highest cell
        print(f"{r['status']}: {r['slide']} -> {r['folder']}: {s['call']} (slide score {s['slide_score']:.3f}, called at "
              f"{s.get('slide_threshold', s['threshold']):g}; highest cell {s.get('slide_max_cell', s['slide_score']):.3f}), "
              f"{s.get('regions_reported', s['regions'])} reported region(s) "
              f"({s.get('regions_below_threshold', 0)} below the reporting threshold), {s['tumour_area_mm2']:.3f} mm2, largest "
              f"{s['largest_diameter_mm']:.2f} mm ({s['size_class']}), {s['windows_scored']} windows in {s['seconds']:.1f} s"
              + (f", {len(s['skipped_regions'])} unreadable region(s) skipped" if s["skipped_regions"] else "")
              + (f"; {scope['out_of_scope_fraction']:.1%} of the tissue out of the model's scope" if scope.get("checked") else ""))
    if failed:
        print(f"{len(failed)} of {len(records)} slide(s) failed", file=sys.stderr)
        return 1
    return 0


def cmd_slide_report(args: argparse.Namespace) -> int:
    from ..slides.report import write_report

    print(f"wrote {write_report(args.analysis, out=args.out)}")
    return 0


def cmd_slide_queue(args: argparse.Namespace) -> int:
    from ..workspace.slides import SlideLibrary

    started = SlideLibrary(args.workspace).run_queue()
    print(f"queue empty: {started} analysis(es) started")
    return 0


def cmd_demo_slide(args: argparse.Namespace) -> int:
    from ..slides.demo import DemoSlideSpec, make_demo_slide

    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must look like WIDTHxHEIGHT (e.g. 20000x16000), not {args.size!r}") from None
    spec = DemoSlideSpec(width=width, height=height, seed=args.seed)
    if args.pooled:
        from ..slides.demo_pooled import make_pooled_demo_slide

        truth = make_pooled_demo_slide(args.out, spec, tissue_share=args.tissue_share, pool=args.pool, workers=args.draw_workers)
    else:
        truth = make_demo_slide(args.out, spec)
    tissue = f", {truth['layout']['tissue_share']:.0%} tissue" if "layout" in truth else ""
    print(f"wrote a SYNTHETIC slide {Path(args.out) / truth['slide']} ({width}x{height} at {truth['mpp']} um/px, levels "
          f"{truth['levels']}{tissue}) with {len(truth['regions'])} tumour region(s): "
          + ", ".join(f"{r['name']} {r['diameter_mm']:.2f} mm ({r['size_class']})" for r in truth["regions"]))
    return 0

