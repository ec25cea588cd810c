"""The sidebar every page shares (workspace, active dataset, selected run), and switching pages with
selections made through it.

The selected run is the user's choice, kept for the session: across reruns, pages, and runs that appear
(a run started elsewhere never takes its place). Until a choice is made (in the sidebar, by an address
naming a run, or by starting a run on the Train page) it is the newest finished run, else the bundled model:
never a run still training."""

from __future__ import annotations

from typing import Any, NoReturn

import streamlit as st

from pcam_core.bundled import BUNDLED, LABEL
from pcam_core.workspace.monitor import run_caption
from pcam_core.runs import RunSummary, resolve_run
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


SIDEBAR_SELECTIONS = ("dataset", "run")  # selections kept in the address (see `_follow_address`)
RUN_CHOICE = "_run_choice"  # the run chosen in this session, kept apart from the widget's own state


def default_run(runs: list[RunSummary]) -> str:
    """The run selected until the user chooses one: the newest finished run, else the bundled model."""
    return next((r.run_id for r in runs if r.state == "finished"), BUNDLED_CHOICE)


def _follow_address(key: str, options: dict[str, str]) -> None:
    """Take `?key=` from the address as a choice to make, when it names one of `options` (value -> label; the
    value or, for links made before, the label) and differs from what is shown. Every script run writes the
    choice back (`_write_address`), so the address differs only where a link was opened or the address edited.
    Kept by hand: Streamlit's own binding matches an address against the options' labels, not their values, so a
    link naming a synthetic source or the bundled model by its name was dropped. An action's own pending
    choice (`_select_<key>`) wins over the address."""
    asked = st.query_params.get(key)
    if asked is None:
        return
    value = asked if asked in options else next((v for v, label in options.items() if label == asked), None)
    if value is None:  # a link to a run or source this workspace does not hold (deleted, or another workspace's)
        st.session_state[f"_unknown_{key}"] = asked
    elif value != st.session_state.get(key):
        st.session_state.setdefault(f"_select_{key}", value)


def _unknown_warning(key: str, what: str, shown: str | None) -> None:
    """Under a selection: the link named a `what` this workspace does not hold, and what is shown instead. Said until
    the user chooses (`_forget_unknown`): a shared link must not show another model's figures without a word."""
    asked = st.session_state.get(f"_unknown_{key}")
    if asked is not None and asked != shown:
        st.warning(f"The link named {what} `{asked}`, which this workspace does not hold; shown instead: "
                   f"{shown or 'nothing'}.", icon=":material/link_off:")


def _forget_unknown(key: str) -> None:
    st.session_state.pop(f"_unknown_{key}", None)


def _write_address(key: str, value: str | None) -> None:
    """Keep `?key=` on what is shown (nothing when nothing is)."""
    if value is None:
        st.query_params.pop(key, None)
    elif st.query_params.get(key) != value:
        st.query_params[key] = value


def _choose_run(run_ids: list[str], runs: list[RunSummary]) -> str:
    """The run to select in this script run: one asked for (`select_run`, `switch_page`, a link naming it), else
    the session's choice while it exists, else `default_run`. Sets the widget's state only where it has one that
    differs (state set by the script is sent back to the browser)."""
    pending = st.session_state.pop("_select_run", None)
    if pending in run_ids:
        choice = pending
    elif st.session_state.get(RUN_CHOICE) in run_ids:
        choice = st.session_state[RUN_CHOICE]
    else:
        choice = default_run(runs)
    shown = st.session_state.get("run")
    if shown is not None and shown != choice:
        st.session_state["run"] = choice
    return choice


def switch_page(page: str, query: dict[str, str]) -> NoReturn:
    """Open `page` in this session with `query` in its address, as a page link would. The sidebar's own
    selections among them are made through the sidebar, which then writes them into the new page's address."""
    for key in SIDEBAR_SELECTIONS:
        if key in query:
            st.session_state[f"_select_{key}"] = query[key]
    st.switch_page(page, query_params={k: v for k, v in query.items() if k not in SIDEBAR_SELECTIONS})


def select_run(run_id: str) -> None:
    """Make `run_id` the selected run from the next rerun on (the sidebar is drawn before pages)."""
    st.session_state["_select_run"] = run_id


def _run_chosen() -> None:
    """The user chose a run in the sidebar (a callback: it runs before the script)."""
    st.session_state[RUN_CHOICE] = st.session_state.get("run")
    _forget_unknown("run")
    _write_address("run", st.session_state.get("run"))


def _dataset_chosen() -> None:
    """The user chose a data source in the sidebar (a callback)."""
    _forget_unknown("dataset")
    _write_address("dataset", st.session_state.get("dataset"))


# pages that do not use the active dataset: its SYNTHETIC badge would stand over a real slide or a real upload there
PAGES_WITHOUT_DATASET = ("slides", "predict")


def sidebar(workspace: Workspace, page: Any = None) -> Context:
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
        by_name = {s.name: s for s in sources}
        _follow_address("dataset", {n: by_name[n].label for n in names})
        _apply_pending("dataset", names)
        chosen = st.selectbox("Active dataset", names, key="dataset", format_func=lambda n: by_name[n].label,
                              placeholder="No data source", on_change=_dataset_chosen,
                              help="The data the Overview, Dataset and Train pages use. Add sources on the Overview page.")
        _unknown_warning("dataset", "the data source", by_name[chosen].label if chosen in by_name else None)
        _write_address("dataset", chosen)
        source = by_name.get(chosen) if chosen else None
        if source is not None:
            if source.synthetic and getattr(page, "url_path", "") not in PAGES_WITHOUT_DATASET:
                st.badge("SYNTHETIC demo data", icon=":material/science:", color="orange")
            if not source.exists():
                st.badge("folder missing", icon=":material/error:", color="red")
        run_ids = [r.run_id for r in runs] + [BUNDLED_CHOICE]  # newest first, the bundled model last
        _follow_address("run", {i: LABEL if i == BUNDLED_CHOICE else i for i in run_ids})
        choice = _choose_run(run_ids, runs)
        by_id = {r.run_id: r for r in runs}
        # `index` too: a browser that falls back to the widget's default shows the choice, not the newest run
        picked = st.selectbox("Selected run", run_ids, index=run_ids.index(choice), key="run", on_change=_run_chosen, format_func=lambda i: LABEL if i == BUNDLED_CHOICE else i,
                              help="The run the pages show (your runs newest first), or the "
                                   f"{LABEL} that ships with pcam_core. It stays selected until you choose another.")
        st.session_state[RUN_CHOICE] = picked
        _unknown_warning("run", "the run", LABEL if picked == BUNDLED_CHOICE else picked)
        _write_address("run", picked)
        run = None
        if picked == BUNDLED_CHOICE:
            run = resolve_run(BUNDLED).folder
            st.caption("Shipped with pcam_core: trained on real PCam patches (Camelyon16 lymph nodes). "
                       "Research use, not a diagnosis; its model card is on the Predict and Explain pages.")
            st.badge("bundled model · real tissue", icon=":material/verified:", color="green")
        elif picked:
            summary = by_id[picked]
            run = resolve_run(summary.path).folder
            st.caption(run_caption(summary))
            if run.raw_status().get("synthetic_data"):
                st.badge("trained on SYNTHETIC data", icon=":material/science:", color="orange")
        reviewer_input()
    context = Context(workspace, sources, source, runs, run)
    st.session_state["_context"] = context
    return context
