"""A table of plain HTML sorted by a click on a column header (table.js)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st


_TABLE_CSS = """
.pcam-table { overflow: auto; border: 1px solid rgba(49, 51, 63, 0.15); border-radius: 0.5rem;
  scrollbar-width: thin; scrollbar-color: rgba(49, 51, 63, 0.35) transparent; }
.pcam-table table { border-collapse: collapse; width: 100%; font-size: 0.875rem; }
.pcam-table th, .pcam-table td { padding: 0.3rem 0.6rem; text-align: left; white-space: nowrap;
  border-bottom: 1px solid rgba(49, 51, 63, 0.1); }
.pcam-table th { white-space: normal; }  /* two-word headers ("synthetic data") may take two lines */
.pcam-table td:not(.pcam-num) { white-space: normal; overflow-wrap: normal; min-width: 4rem; }  /* wraps between words (table.js) */
.pcam-table th { position: sticky; top: 0; background: var(--st-secondary-background-color, #f6f1f7); }
.pcam-table th button { all: unset; cursor: pointer; font-weight: 600; }
.pcam-table th button:focus-visible { outline: 2px solid var(--st-primary-color); outline-offset: 2px; }
.pcam-table .pcam-num { text-align: right; font-variant-numeric: tabular-nums; }
.pcam-table tbody tr:hover { background: rgba(49, 51, 63, 0.04); }
"""
_table_component = st.components.v2.component(
    "pcam_table", js=(Path(__file__).parent / "table.js").read_text(encoding="utf-8"), css=_TABLE_CSS, isolate_styles=False)


def _cell(value: Any, fmt: Any) -> tuple[str, Any]:
    """(text shown, sort key) of one table cell; empty cells show a dash and sort last."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "–", None
    if isinstance(value, (bool, np.bool_)):
        return ("yes" if value else "no"), int(value)
    if isinstance(value, pd.Timestamp):
        return (fmt(value) if callable(fmt) else value.strftime("%Y-%m-%d %H:%M")), value.timestamp()
    if isinstance(value, (int, float, np.integer, np.floating)):
        return (fmt(value) if callable(fmt) else (fmt or "{}").format(value)), float(value)
    text = fmt(value) if callable(fmt) else str(value)
    return text, text


def sortable_table(frame: pd.DataFrame, formats: dict[str, Any] | None = None, *, key: str, height: int = 420,
                   caption: str | None = None) -> None:
    """A table that sorts by any column with a click on its header (numbers largest first, then the
    other way), scrolling beyond `height` pixels; each column formatted by a format string or a function.
    One element of plain HTML (table.js): Streamlit's data grid cost a new tab 0.2 s."""
    formats = formats or {}
    cells = [[_cell(value, formats.get(column)) for column, value in zip(frame.columns, row)]
             for row in frame.itertuples(index=False)]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
               or pd.api.types.is_datetime64_any_dtype(frame[c]) for c in frame.columns]
    _table_component(key=key, data={"columns": [str(c) for c in frame.columns], "numeric": numeric,
                                    "rows": [[text for text, _ in row] for row in cells],
                                    "keys": [[sort for _, sort in row] for row in cells],
                                    "height": height, "caption": caption})
