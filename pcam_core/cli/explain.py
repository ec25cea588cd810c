"""`pcam explain`: class activation map overlays and centre focus per patch."""

from __future__ import annotations

import argparse

from ..scoring_options import EXPLAIN_BATCH_SIZE
from .common import RUN_HELP, progress_bar, scoring_options, shared


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", parents=shared("checkpoint", "device", "workers"),
                       help="class activation map overlays and centre focus per patch", description=(
        "Explain a run's predictions: one overlay PNG per patch (<id>.png: heat map over the patch, central "
        "32x32 region outlined) and explanations.csv (id, probability, centre_focus, method, layer, target) "
        "in --out. Centre focus is the share of the map inside the central region (1/9 for a uniform map). "
        f"A map keeps every activation and its gradient, so --batch-size defaults to {EXPLAIN_BATCH_SIZE} here."))
    p.add_argument("--run", required=True, help=RUN_HELP)
    p.add_argument("--input", required=True, help="an image file, a folder of images, a Kaggle folder or PCam HDF5 data")
    p.add_argument("--out", required=True, help="folder for the PNGs and explanations.csv")
    p.add_argument("--method", default="gradcam",
                   help="gradcam (default), gradcam++, hirescam, xgradcam, layercam, eigencam or scorecam (slow)")
    p.add_argument("--layer", help="Grad-CAM layer (default: the model's first; `pcam models` lists them with resolutions)")
    p.add_argument("--target", choices=("tumour", "normal"), default="tumour", help="the class to explain")
    p.add_argument("--opacity", type=float, default=0.5, help="heat map opacity over the patch, 0 to 1")
    p.add_argument("--colormap", default="jet", help="matplotlib colormap of the heat map")
    p.add_argument("--scale", type=int, default=1, help="enlarge the PNGs this many times (nearest neighbour)")
    p.add_argument("--split", help="split of an HDF5 or Kaggle folder (default: test; for Kaggle data, valid is the run's own validation split)")
    p.add_argument("--limit", type=int, help="explain only the first N patches")
    # its own --batch-size: setting a default on the shared one would change every command's (argparse shares the action)
    p.add_argument("--batch-size", type=int, default=EXPLAIN_BATCH_SIZE,
                   help=f"patches per forward and backward pass (default: {EXPLAIN_BATCH_SIZE})")
    p.set_defaults(func=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    from ..explain import write_explanations

    bar = None

    def start(total: int) -> None:
        nonlocal bar
        bar = progress_bar(total, "explain")

    try:
        result = write_explanations(args.run, args.input, args.out, scoring_options(args), split=args.split, method=args.method,
                                    layer=args.layer, target=args.target, opacity=args.opacity, cmap=args.colormap,
                                    scale=args.scale, limit=args.limit, on_start=start,
                                    progress=lambda n: bar.update(n) if bar else None)
    finally:
        if bar is not None:
            bar.close()
    print(f"wrote {result['rows']} overlays and {result['csv']} ({result['method']} at {result['layer']} "
          f"({result['resolution']}), target {result['target']}, model {result['model']})")
    return 0
