"""The `pcam` command line (also `python -m pcam_core`). argparse lives in this package and nowhere else:
one module per command group (as WSInfer and MLflow lay theirs out), each with an `add(sub)` that declares
its commands and the `cmd_*` functions that parse, call one engine function and format the answer.
Options that several commands share are declared once in `common` (argparse `parents=`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from typing import Sequence

from .. import __version__
from . import data, evaluate, explain, export, robustness, runs, slides, slides_eval, train
from .common import EXIT_ERROR
from .export import SERVE_DEFAULTS, SERVE_TOKEN_ENV
from .train import build_config

GROUPS = (data, train, evaluate, robustness, explain, runs, slides, slides_eval, export)  # in the order of `pcam --help`


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pcam", description="Metastatic-tissue detection on PatchCamelyon patches.")
    parser.add_argument("--version", action="version", version=f"pcam_core {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more, and show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add(sub)
    return parser


def clean_message(err: BaseException) -> str:
    """One readable line for an error, also when it was re-raised from a DataLoader worker (whose
    message then carries the worker's traceback)."""
    text = str(err).strip()
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # every failure a user can cause ends as one clear line, not a traceback
        if args.verbose or os.environ.get("PCAM_DEBUG"):
            traceback.print_exc()
        print(f"error: {clean_message(err)}", file=sys.stderr)
        return EXIT_ERROR


__all__ = ["EXIT_ERROR", "SERVE_DEFAULTS", "SERVE_TOKEN_ENV", "build_config", "clean_message", "main", "make_parser"]
