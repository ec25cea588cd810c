"""A run's robustness report on a split, for the dashboard: reading it, and writing it in a background job.

`pcam robustness` writes `robustness/<split>.csv` and `.json` into the run folder (the paths are
`RunDir.robustness_files`); the report card is in the JSON, computed by the engine
(`pcam_core.robustness`), so nothing here imports model code. A report older than the run's best
checkpoint is stale (the run trained on) and is not used, as with scored splits.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..fileio import read_json
from ..runs import RunDir
from ..runs.jobs import JobStatus, job_status, start_job
from .scoring import _fresh, scorable_splits

# The dashboard scores a seeded, label-stratified sample of this many patches (the CLI takes any --limit):
# 39 conditions of 2,000 patches are 78,000 forward passes, minutes on a CPU; the ROC-AUC of 2,000
# patches is known to about ±0.01.
PAGE_SAMPLE = 2000


def _job_name(split: str) -> str:
    return f"robustness-{split}"


def robustness_report(run: RunDir, split: str) -> dict[str, Any] | None:
    """The report `pcam robustness` wrote for `split` (with its table as a DataFrame under "frame"),
    or None when there is none or it is older than the run's best checkpoint."""
    _, json_path = run.robustness_files(split)
    if not _fresh(json_path, run):
        return None
    report = read_json(json_path, default=None)
    if not isinstance(report, dict) or "table" not in report or "card" not in report:
        raise ValueError(f"{json_path} is not a robustness report written by pcam_core (no table or card)")
    return {**report, "frame": pd.DataFrame(report["table"])}


def start_robustness(run: RunDir, split: str, *, limit: int | None = PAGE_SAMPLE) -> JobStatus:
    """Write the robustness report of `split` in the background (`pcam robustness`), on a seeded sample
    of `limit` patches (None: all)."""
    if split not in scorable_splits(run):
        raise ValueError(f"run {run.run_id} has no labelled split {split!r}; labelled splits: {', '.join(scorable_splits(run))}")
    run.checkpoint("best")  # fails clearly before a process is started for nothing
    csv_path, json_path = run.robustness_files(split)
    args = ["robustness", "--run", str(run.path), "--data", run.config().data.path, "--split", split, "--no-tta"]
    if limit is not None:
        args += ["--limit", str(limit)]
    return start_job(run.robustness, _job_name(split), args, outputs=[csv_path, json_path])


def robustness_status(run: RunDir, split: str) -> JobStatus | None:
    return job_status(run.robustness, _job_name(split))
