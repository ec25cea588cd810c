"""The sidebar every page shares (workspace, active dataset, selected run), and switching pages with
selections made through it."""

from __future__ import annotations

from typing import NoReturn

import streamlit as st

from pcam_core.bundled import BUNDLED_DIR, LABEL
from pcam_core.workspace.monitor import run_caption
from pcam_core.runs import RunDir
from pcam_core.workspace import Workspace

from .reviews import reviewer_input
from .shell import Context, fail

# The bundled model's entry in the run choice: not a valid run id, so no run folder can take its place.
BUNDLED_CHOICE = "@bundled"


def _apply_pending(key: str, options: list[str]) -> None:
    pending = st.session_state.pop(f"_select_{key}", None)
    if pending in options:
        st.session_state[key] = pending
    elif st.session_state.get(key) not in options:
        st.session_state.pop(key, None)


SIDEBAR_SELECTIONS = ("dataset", "run")  # widgets bound to the address (see `sidebar`)


def switch_page(page: str, query: dict[str, str]) -> NoReturn:
    """Open `page` in this session with `query` in its address, as a page link would. The sidebar's own
    selections among them are made through the sidebar: Streamlit refuses to set a query parameter that
    a widget is bound to."""
    for key in SIDEBAR_SELECTIONS:
        if key in query:
            st.session_state[f"_select_{key}"] = query[key]
    st.switch_page(page, query_params={k: v for k, v in query.items() if k not in SIDEBAR_SELECTIONS})


def select_run(run_id: str) -> None:
    """Make `run_id` the selected run from the next rerun on (the sidebar is drawn before pages)."""
    st.session_state["_select_run"] = run_id


def sidebar(workspace: Workspace) -> Context:
    """Draw the sidebar (workspace, active dataset, selected run) and return the selections."""
    try:
        sources = workspace.sources()
    except ValueError as err:
        fail(str(err))
    runs = workspace.runs()
    with st.sidebar:
        st.markdown(f"**Workspace**  \n`{workspace.root}`",
                    help="One folder for data sources and runs. Start the app with PCAM_WORKSPACE=/path to use another.")
        names = [s.name for s in reversed(sources)]  # the newest first: a source just added opens by default
        _apply_pending("dataset", names)
        by_name = {s.name: s for s in sources}
        chosen = st.selectbox("Active dataset", names, key="dataset", bind="query-params",
                              format_func=lambda n: by_name[n].label, placeholder="No data source",
                              help="The data the Overview, Dataset and Train pages use. Add sources on the Overview page.")
        source = by_name.get(chosen) if chosen else None
        if source is not None:
            if source.synthetic:
                st.badge("SYNTHETIC demo data", icon=":material/science:", color="orange")
            if not source.exists():
                st.badge("folder missing", icon=":material/error:", color="red")
        run_ids = [r.run_id for r in runs] + [BUNDLED_CHOICE]  # last: the default only while there are no runs
        _apply_pending("run", run_ids)
        by_id = {r.run_id: r for r in runs}
        picked = st.selectbox("Selected run", run_ids, key="run", bind="query-params", placeholder="No runs yet",
                              format_func=lambda i: LABEL if i == BUNDLED_CHOICE else i,
                              help="The run the Train, Runs and Predict pages show (newest first), or the "
                                   f"{LABEL} that ships with pcam_core (Predict and Explain).")
        run = None
        if picked == BUNDLED_CHOICE:
            run = RunDir(BUNDLED_DIR)
            st.caption("Shipped with pcam_core: trained on real PCam patches (Camelyon16 lymph nodes). "
                       "Research use, not a diagnosis; its model card is on the Predict and Explain pages.")
            st.badge("bundled model · real tissue", icon=":material/verified:", color="green")
        elif picked:
            summary = by_id[picked]
            run = RunDir(summary.path)
            st.caption(run_caption(summary))
            if run.raw_status().get("synthetic_data"):
                st.badge("trained on SYNTHETIC data", icon=":material/science:", color="orange")
        reviewer_input()
    context = Context(workspace, sources, source, runs, run)
    st.session_state["_context"] = context
    return context
