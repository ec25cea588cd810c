"""What a run argument means: a run folder written by `pcam train`, or `bundled` (the model that ships
with pcam_core). Every command, page and the API turn a run argument into a `RunRef` here, and nowhere
else asks whether a run is the bundled model. Imports no torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from ..bundled import BUNDLED, BUNDLED_DIR, LABEL, bundled_checkpoint, is_bundled
from .folder import CHECKPOINTS, RunDir


@dataclass(frozen=True)
class RunRef:
    """A resolved run: its folder (the bundled model's package folder for `bundled`) and which it is."""

    path: Path
    bundled: bool

    @property
    def name(self) -> str:
        """`bundled`, or the run folder's name (its run id)."""
        return BUNDLED if self.bundled else self.path.name

    @property
    def arg(self) -> str:
        """The run as a `--run` argument for another process: `bundled`, or the folder's absolute path."""
        return BUNDLED if self.bundled else str(self.path)

    @property
    def label(self) -> str:
        """How a person is shown the run."""
        return LABEL if self.bundled else self.path.name

    @property
    def folder(self) -> RunDir:
        """The run folder (for the bundled model its package folder: predictions and calibration it ships)."""
        return RunDir(self.path)

    def checkpoint(self, which: str = "best") -> Path:
        """The checkpoint file: best (else last when no epoch was validated) or last; the bundled model's
        one file is both."""
        if which not in CHECKPOINTS:
            raise ValueError(f"checkpoint must be 'best' or 'last', not {which!r}")
        if self.bundled and not self.folder.is_ensemble:
            return bundled_checkpoint()
        return self.folder.checkpoint(which)


RunArg = Union[str, os.PathLike, RunRef, RunDir]


def resolve_run(run: RunArg, *, must_exist: bool = True) -> RunRef:
    """`run` as a `RunRef`: "bundled" (or the bundled model's folder), or a run folder, which must exist
    unless `must_exist` is False (a run about to be written)."""
    if isinstance(run, RunRef):
        return run
    if isinstance(run, RunDir):
        run = run.path
    if is_bundled(run):
        return RunRef(BUNDLED_DIR, True)
    if not isinstance(run, (str, os.PathLike)) or not str(run):
        raise ValueError(f"run must be a run folder or {BUNDLED!r}, not {run!r}")
    path = Path(run).expanduser().resolve()
    if must_exist and not path.is_dir():
        raise FileNotFoundError(f"run folder not found: {run} (give a folder written by `pcam train`, or {BUNDLED!r})")
    return RunRef(path, False)


def checkpoint_path(run: RunArg, which: str = "best") -> Path:
    """The checkpoint a run argument names (`resolve_run(run).checkpoint(which)`)."""
    return resolve_run(run).checkpoint(which)


__all__ = ["RunArg", "RunRef", "checkpoint_path", "resolve_run"]
