"""`pcam export` and `pcam serve`: a run's model as a file, or over HTTP."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from pathlib import Path

from .common import RUN_HELP, default, shared


def add(sub: argparse._SubParsersAction) -> None:
    _add_export(sub)
    _add_serve(sub)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", parents=shared("checkpoint"), help="export a run's model to TorchScript or ONNX (with WSInfer's config)", description=(
        "Export a run's model: it takes float32 RGB in [0, 1], shape (N, 3, 96, 96), with the normalisation inside, "
        "and returns the tumour probability (N,). The export is reloaded and compared with PyTorch at once; the "
        "report goes to FILE.json. TorchScript also writes STEM-wsinfer/ (torchscript_model.pt, config.json) for "
        "WSInfer and QuPath's WSInfer extension. See docs/export.md."))
    p.add_argument("--run", required=True, help=RUN_HELP)
    p.add_argument("--format", required=True, choices=("torchscript", "onnx"))
    p.add_argument("--out", required=True, help="the model file to write (its folder must exist)")
    p.add_argument("--check-data", help="patches for the parity check: a Kaggle, HDF5 or image folder "
                                        "(default: 72 patches of seeded random pixels, one batch each of 1, 7 and 64)")
    p.add_argument("--check-split", help="split of --check-data (default: train)")
    p.add_argument("--check-limit", type=int, default=256, help="use at most this many patches of --check-data, in batches of "
                   "1, 7, then 64 at a time (default: 256)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ..export import export_run

    check, source = None, None
    if args.check_data:
        from ..data.loader import open_dataset

        if args.check_limit < 1:
            raise ValueError(f"--check-limit must be at least 1, not {args.check_limit}")
        dataset = open_dataset(args.check_data, args.check_split)
        n = min(len(dataset), args.check_limit)
        if n == 0:
            raise ValueError(f"--check-data {args.check_data}: no patches to check with")
        check = dataset.read_pixels(range(n))
        source = f"{args.check_data}" + (f" ({args.check_split})" if args.check_split else "") + f", first {n}"
    report = export_run(args.run, args.format, args.out, which=args.checkpoint, check=check, check_source=source)
    par = report["parity"]
    print(f"wrote {report['file']} ({report['format']}, model {report['model']}, epoch {report['epoch']}, from {report['checkpoint']})")
    print(f"parity with PyTorch on {par['n']} patches ({par['source']}), "
          f"batch sizes {', '.join(map(str, par['batch_sizes']))}: max |diff| {par['max_abs_diff']:.2e}, "
          f"mean {par['mean_abs_diff']:.2e} ({par['runtime']})")
    if "wsinfer" in report:
        w = report["wsinfer"]
        print(f"wrote {w['folder']}/ for WSInfer and QuPath (two-class logits; max |diff| of softmax {w['parity']['max_abs_diff']:.2e})")
    print(f"report: {report['file']}.json")
    return 0


# -- serve -----------------------------------------------------------------------------------------

# what `pcam_core.serve.Limits` defaults to, for --help (importing serve loads torch and FastAPI; tests check they agree)
SERVE_DEFAULTS = {"max_file_mb": 2.0, "max_request_mb": 64.0, "max_batch": 256, "batch_wait_ms": 2.0}
SERVE_TOKEN_ENV = "PCAM_API_TOKEN"


def _add_serve(sub: argparse._SubParsersAction) -> None:
    L = SERVE_DEFAULTS
    p = sub.add_parser("serve", parents=shared("device"), help="an HTTP API that scores patches and slides with a run (FastAPI)", description=(
        "Serve a run's model over HTTP: POST /v1/predict (image files), POST /v1/slides and GET /v1/slides/ID "
        "(whole-slide analyses of files in --slides-dir), GET /v1/health; OpenAPI docs at /docs. See docs/serve.md."))
    p.add_argument("--run", required=True, help=RUN_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help=default(8000))
    p.add_argument("--token", help=f"bearer token every route but /v1/health requires (default: ${SERVE_TOKEN_ENV}; unset: no token)")
    p.add_argument("--slides-dir", help="the only folder whose slides POST /v1/slides may analyse (default: slide analysis off)")
    p.add_argument("--work-dir", default=str(Path(os.environ.get("PCAM_WORKSPACE", "workspace")) / "serve"),
                   help="where slide analyses are written (default: $PCAM_WORKSPACE/serve or ./workspace/serve)")
    p.add_argument("--max-file-mb", type=float, default=L["max_file_mb"], help="largest image file accepted " + default(L["max_file_mb"]))
    p.add_argument("--max-request-mb", type=float, default=L["max_request_mb"], help="largest request body " + default(L["max_request_mb"]))
    p.add_argument("--max-batch", type=int, default=L["max_batch"], help="most patches in one forward pass " + default(L["max_batch"]))
    p.add_argument("--batch-wait-ms", type=float, default=L["batch_wait_ms"],
                   help="how long a forward pass waits for other requests to join it " + default(L["batch_wait_ms"]))
    p.set_defaults(func=cmd_serve)


def check_port_free(host: str, port: int) -> None:
    """A clear error when `port` on `host` cannot be listened on (another server has it), checked as uvicorn
    binds (with SO_REUSEADDR, so a port in TIME_WAIT counts as free)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ValueError(f"--host {host!r} is not an address of this machine ({err.strerror})") from err
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ValueError(f"port {port} on {host} is already in use (another `pcam serve`, or another server); "
                                 f"stop it or choose another port with --port") from err
            raise ValueError(f"cannot listen on {host}:{port}: {err.strerror or err}") from err


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serve import Limits, create_app, serve

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, not {args.port}")
    check_port_free(args.host, args.port)  # before the model is loaded and "serving" is said
    limits = Limits(**{name: getattr(args, name) for name in SERVE_DEFAULTS})
    token = args.token or os.environ.get(SERVE_TOKEN_ENV) or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        print(f"warning: listening on {args.host} without a token: anyone who can reach it can use it", file=sys.stderr)
    app = create_app(args.run, token=token, slides_dir=args.slides_dir, work_dir=args.work_dir, device=args.device, limits=limits)
    print(f"serving {args.run} on http://{args.host}:{args.port} (docs at /docs)" + (", token required" if token else ""), file=sys.stderr)
    serve(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning")
    return 0

