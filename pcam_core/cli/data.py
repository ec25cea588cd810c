"""`pcam verify`, `convert`, `demo-data`, `download` and `models`: data and the model registry."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from .common import print_json, progress_bar


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check every image of a dataset, file by file")
    p.add_argument("path", help="Kaggle folder, image folder, PCam HDF5 folder or one _x.h5 file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("convert", help="Kaggle layout -> PCam HDF5 layout (the fast path)")
    p.add_argument("--input", required=True, help="Kaggle folder (train/ and train_labels.csv)")
    p.add_argument("--out", required=True)
    p.add_argument("--valid-frac", type=float, default=0.1)
    p.add_argument("--test-frac", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("demo-data", help="generate the SYNTHETIC demo dataset (PCam HDF5 layout)")
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=4096)
    p.add_argument("--valid", type=int, default=1024)
    p.add_argument("--test", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("download", help="download PCam from Zenodo (record 2546921)")
    p.add_argument("--dest", required=True)
    p.add_argument("--splits", default="train,valid,test", help="comma-separated")
    p.add_argument("--base-url", default=None, help="where the files are served (default: Zenodo)")
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("models", help="list the registered models")
    p.set_defaults(func=cmd_models)


def cmd_verify(args: argparse.Namespace) -> int:
    from ..data.verify import verify_path

    bar = progress_bar(None, "verify")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        report = verify_path(args.path, progress=progress)
    finally:
        bar.close()
    if args.json:
        print_json({"target": report.target, "checked": report.checked, "ok": report.ok,
                     "problems": [{"file": f, "problem": p} for f, p in report.problems]})
    else:
        for where, what in report.problems:
            print(f"{where}: {what}")
        print(f"checked {report.checked} image(s) in {report.target}: "
              + ("all good" if report.ok else f"{len(report.problems)} problem(s)"))
    return 0 if report.ok else 1


def cmd_convert(args: argparse.Namespace) -> int:
    from ..data.convert import convert_kaggle

    with progress_bar(None, "convert") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        counts = convert_kaggle(args.input, args.out, valid_frac=args.valid_frac, test_frac=args.test_frac,
                                seed=args.seed, progress=progress)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..data.demo import DemoSpec, make_demo_dataset

    for name in ("train", "valid", "test"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1")
    spec = DemoSpec(sizes=(("train", args.train), ("valid", args.valid), ("test", args.test)), seed=args.seed)
    with progress_bar(100, "demo-data", unit="%") as bar:
        counts = make_demo_dataset(args.out, spec, progress=lambda f, _msg: bar.update(round(f * 100) - bar.n))
    print(f"wrote SYNTHETIC demo data to {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from ..data.download import DEFAULT_BASE_URL, download_pcam

    bars: list[Any] = []

    def factory(name: str, total: int | None, initial: int) -> Callable[[int], None]:
        bar = progress_bar(total, name, unit="B", initial=initial)
        bars.append(bar)
        return bar.update

    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    try:
        paths = download_pcam(args.dest, splits=splits, base_url=args.base_url or DEFAULT_BASE_URL,
                              progress_factory=factory, timeout=args.timeout)
    finally:
        for bar in bars:
            bar.close()
    print(f"{len(paths)} file(s) ready in {args.dest}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ..models import MODELS

    for spec in MODELS.values():
        layers = ", ".join(f"{name} ({size}x{size})" for name, size in spec.target_layers.items())
        print(f"{spec.name:14} {spec.description}\n{'':14} Grad-CAM layers: {layers}")
    return 0

