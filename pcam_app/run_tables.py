"""Tables of runs in a short form, shared by the Train and Overview pages."""

from __future__ import annotations

from typing import Sequence

import streamlit as st

from pcam_core.workspace.monitor import runs_table
from pcam_core.runs import RunSummary

from .components.table import sortable_table

RECENT_RUNS = 5  # the runs the Overview page lists; the Runs page has them all, sortable


def runs_summary_table(runs: Sequence[RunSummary], source_names: dict[str, str], *, key: str, caption: str,
                       height: int = 420) -> None:
    """Runs in a short form (run, state, model, data, epochs, best ROC-AUC, created), sortable."""
    frame = runs_table(runs, source_names)
    sortable_table(frame[["run", "state", "model", "data", "epochs", "ROC-AUC", "created"]], {"ROC-AUC": "{:.3f}"},
                   key=key, caption=caption, height=height)


def recent_runs_table(runs: Sequence[RunSummary], source_names: dict[str, str]) -> None:
    """The newest runs (a table), and where the others are."""
    runs_summary_table(runs[:RECENT_RUNS], source_names, key="recent_runs", caption="The newest runs")
    if len(runs) > RECENT_RUNS:
        st.caption(f"The {RECENT_RUNS} newest of {len(runs)} runs; all of them, sortable, are on the Runs page.")
