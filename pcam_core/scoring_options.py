"""How a run scores patches: one frozen object that the scoring engines take (`predict.predict_submission`,
`predict.evaluate_run`, `robustness.run_robustness`, `explain.write_explanations`, `slides.batch.analyse`)
instead of a dozen repeated keyword parameters, and whose defaults are the CLI's (`pcam_core.cli.common`
declares each shared option once from these).

Test-time augmentation (the mean probability over the 8 symmetries of the square) is part of the recipe:
on by default for patches (`--no-tta` for one pass, 8x faster). Whole slides are scored with one pass by default
(`DEFAULT_SLIDE_TTA`): at stride 32 every pixel already lies in nine overlapping windows, a slide holds
hundreds of thousands of them, and 8 passes would make an analysis 8x slower (`pcam slide --tta` asks for them). Imports nothing of ours but the ground.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .config import DEVICES
from .decision import check_threshold

CHECKPOINTS = ("best", "last")
DEFAULT_TTA = True
DEFAULT_SLIDE_TTA = False
# How a slide's windows are scored (`slides/dense.py`, docs/slides.md): "cascade" (a dense pass, then each window near
# a cell that could be tumour scored alone), "dense" (one pass per region) or "window" (each window alone, the reference).
SLIDE_MODES = ("cascade", "dense", "window")
DEFAULT_SLIDE_MODE = "cascade"  # for models whose dense pass is approximate; one that scans exactly: "dense" (`dense.effective_mode`)
DEFAULT_BATCH_SIZE = 256
EXPLAIN_BATCH_SIZE = 32  # class activation maps keep every activation and its gradient: smaller batches
AUTO_WORKERS = -1  # --workers -1: a count chosen from the CPUs and the data (`data.loader.default_workers`)


@dataclass(frozen=True)
class ScoringOptions:
    """What decides how patches are scored, and with which checkpoint.

    `workers`: worker processes that read and decode the input (0: read in this process; -1: chosen
    automatically). `threshold`: the decision threshold, None for the run's own (`loading.RunModel.threshold`).
    """

    checkpoint: str = "best"
    device: str = "auto"
    tta: bool = DEFAULT_TTA
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int = AUTO_WORKERS
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.checkpoint not in CHECKPOINTS:
            raise ValueError(f"checkpoint {self.checkpoint!r}: valid checkpoints are {', '.join(CHECKPOINTS)}")
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; valid: {', '.join(DEVICES)}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch size must be a whole number of at least 1, not {self.batch_size!r}")
        if not isinstance(self.workers, int) or self.workers < AUTO_WORKERS:
            raise ValueError(f"workers must be 0 or more (or -1: automatic), not {self.workers!r}")
        if self.threshold is not None:
            object.__setattr__(self, "threshold", check_threshold(self.threshold))

    def replace(self, **changes: Any) -> ScoringOptions:
        """A copy with `changes` (validated again)."""
        return replace(self, **changes)

    def threshold_or(self, run_threshold: float) -> float:
        """The threshold to call with: this one when given, else the run's own."""
        return run_threshold if self.threshold is None else self.threshold


__all__ = ["AUTO_WORKERS", "CHECKPOINTS", "DEFAULT_BATCH_SIZE", "DEFAULT_SLIDE_MODE", "DEFAULT_SLIDE_TTA", "DEFAULT_TTA", "EXPLAIN_BATCH_SIZE", "SLIDE_MODES", "ScoringOptions"]
