"""The decision threshold this session chose for each run: set on the Runs page (with its slider, or
from a threshold the engine suggested), and the one the Explain, Predict and Review pages start from.
Until one is chosen it is the run's own (`pcam_core.loading.run_threshold`), the threshold `pcam predict`
and `pcam serve` call with, so a page's call for a patch is theirs. A threshold is kept as chosen, never
rounded: one chosen for a sensitivity must give that sensitivity on the data it was chosen on."""

from __future__ import annotations

from typing import Any

import streamlit as st

from pcam_core.decision import check_threshold
from pcam_core.runs import RunDir

from . import caches

STEP = 0.005  # a slider's step; a suggested threshold between two steps is kept as it is


def text(value: float) -> str:
    """A threshold as shown: three decimals, or five when it has more (0.500, but 0.14757 for 0.1475712)."""
    return f"{value:.3f}" if abs(value - round(value, 3)) < 1e-9 else f"{value:.5f}"


def _key(run: RunDir) -> str:
    return f"_threshold_{run.path}"


def chosen(run: RunDir) -> float:
    """The threshold chosen for `run` in this session (the run's own until one is chosen)."""
    value = st.session_state.get(_key(run))
    return caches.own_threshold(run) if value is None else float(value)


def choose(run: RunDir, value: float) -> None:
    """Make `value` the threshold of `run` for every page of this session."""
    st.session_state[_key(run)] = check_threshold(value)


def slider(where: Any, run: RunDir, *, key: str, help: str, disabled: bool = False) -> float:
    """A "Decision threshold" slider that shows the run's chosen threshold and, when moved, chooses another."""
    value = chosen(run)
    start: dict[str, float] = {}
    if st.session_state.get(key) != value:
        # set only when it differs (another page chose, or the widget is new): a widget's state set by the script
        # is sent back to the browser, and resending it on every rerun undid key presses still on their way
        st.session_state[key] = value
    else:
        # and its default the same value: a slider the browser drew again after a run that did not draw it (the Runs
        # page stops before its slider while a split is being scored) started from its default, the minimum, and
        # showed 0.000 while the page used the chosen value
        start["value"] = value
    return where.slider("Decision threshold", 0.0, 1.0, step=STEP, key=key, format="%.3f" if len(text(value)) == 5 else "%.5f",
                        help=help, disabled=disabled, on_change=lambda: choose(run, st.session_state[key]), **start)
