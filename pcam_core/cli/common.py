"""What several commands share: their options, declared once (argparse `parents=`) from the defaults of
`pcam_core.scoring_options`, the progress display, and small formatters."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..config import DEVICES
from ..scoring_options import AUTO_WORKERS, CHECKPOINTS, DEFAULT_BATCH_SIZE, DEFAULT_SLIDE_TTA, DEFAULT_TTA, ScoringOptions

EXIT_ERROR = 2
RUN_HELP = ("training run folder (its best checkpoint, else its last), or `bundled`: the model trained on real "
            "patches that ships with pcam_core (pcam_core/bundled/MODEL_CARD.md)")
WORKERS_HELP = "worker processes that read and decode the input (0: read in this process; -1: automatic)"


# -- shared options ----------------------------------------------------------------------------------

def _parent(*arguments: tuple[tuple[str, ...], dict[str, Any]]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    for flags, kwargs in arguments:
        parser.add_argument(*flags, **kwargs)
    return parser


_SHARED: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "device": (("--device",), {"choices": DEVICES, "default": "auto", "help": "auto: CUDA when there is a GPU (default: auto)"}),
    "batch_size": (("--batch-size",), {"type": int, "default": DEFAULT_BATCH_SIZE,
                                       "help": f"patches per forward pass (default: {DEFAULT_BATCH_SIZE})"}),
    "checkpoint": (("--checkpoint",), {"choices": CHECKPOINTS, "default": "best",
                                       "help": "which checkpoint of the run; best falls back to last (default: best)"}),
    "tta": (("--tta",), {"action": argparse.BooleanOptionalAction, "default": DEFAULT_TTA,
                         "help": "average the 8 symmetries of the square (default: on; --no-tta for one pass, 8x faster)"
                         if DEFAULT_TTA else "average the 8 symmetries of the square, 8x slower (default: off)"}),
    "slide_tta": (("--tta",), {"action": argparse.BooleanOptionalAction, "default": DEFAULT_SLIDE_TTA,
                               "help": "average the 8 symmetries of each window, 8x slower (default: off for slides: "
                               "at stride 32 every pixel is already seen in nine windows)"}),
    "workers": (("--workers",), {"type": int, "default": AUTO_WORKERS, "help": f"{WORKERS_HELP} (default: {AUTO_WORKERS})"}),
    "threshold": (("--threshold",), {"type": float, "default": None, "metavar": "P",
                                     "help": "decision threshold, a probability in [0, 1] (default: the run's own threshold, "
                                             "recorded in its checkpoint, else 0.5)"}),
}
_PARENTS = {name: _parent(spec) for name, spec in _SHARED.items()}


def shared(*names: str) -> list[argparse.ArgumentParser]:
    """The parent parsers of the shared options `names` (keys of `_SHARED`), for `add_parser(parents=...)`."""
    return [_PARENTS[name] for name in names]


SCORING = ("checkpoint", "device", "tta", "batch_size", "workers", "threshold")  # every option of `ScoringOptions`


def scoring_options(args: argparse.Namespace) -> ScoringOptions:
    """The `ScoringOptions` of the shared options a command declared (the others keep their defaults)."""
    return ScoringOptions(**{name: getattr(args, name) for name in SCORING if hasattr(args, name)})


# -- progress --------------------------------------------------------------------------------------

PROGRESS_EVERY = 30.0  # seconds between progress lines when stderr is not a terminal (a log file, a job)


class ProgressLines:
    """tqdm's interface (update, n, total, set_description, set_postfix_str, refresh, close) for output that
    is not a terminal: one line on stderr at most every `PROGRESS_EVERY` seconds, with the rate and an
    estimate of the time left, so a log shows that work goes on and when it will end."""

    def __init__(self, total: int | None, desc: str, unit: str = "img", initial: int = 0) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.postfix = ""
        self._start, self._initial = time.monotonic(), initial
        self._last = self._start

    def update(self, n: int = 1) -> None:
        self.n += n
        self.refresh()

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self._last < PROGRESS_EVERY:
            return
        self._last = now
        print(self.line(now), file=sys.stderr, flush=True)

    def line(self, now: float | None = None) -> str:
        from tqdm import tqdm

        elapsed = max((now or time.monotonic()) - self._start, 1e-9)
        rate = (self.n - self._initial) / elapsed
        parts = [f"{self.desc}: {self.n:,}" + (f"/{self.total:,} {self.unit} ({self.n / self.total:.0%})" if self.total else f" {self.unit}")]
        parts.append(f"{rate:,.1f} {self.unit}/s")
        if self.total and rate > 0:
            parts.append(f"about {tqdm.format_interval(max(self.total - self.n, 0) / rate)} left")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def close(self) -> None:
        pass

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(total: int | None, desc: str, unit: str = "img", initial: int = 0) -> Any:
    """A tqdm bar on stderr (time spent < time left) when it is a terminal, else `ProgressLines`."""
    if not sys.stderr.isatty():
        return ProgressLines(total, desc, unit, initial)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, initial=initial, leave=True, mininterval=0.5)


# -- formatting ------------------------------------------------------------------------------------

def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def fmt(value: Any, digits: int = 4) -> str:
    return "-" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def default(value: Any, note: str = "") -> str:
    """'(default: VALUE)' for a help text, VALUE taken from the config dataclasses (never typed twice)."""
    if note:
        return f"(default: {note})"
    return f"(default: {'none' if value is None else value})"
