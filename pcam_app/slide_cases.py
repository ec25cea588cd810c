"""The Slides page's case view: a patient's lymph-node slides, each with its call and size class, and the pN stage
by the CAMELYON17 rules with the slides that decide it (provisional while a slide is not assessed or not analysed).
The cases and their stages come from `pcam_core.workspace.slide_cases`, each case's printable report from
`pcam_core.workspace.case_report`; this only draws them, the report's download and the form that groups slides
into a case."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from pcam_core.workspace.case_report import case_report_html
from pcam_core.workspace.reviews import ReviewStore
from pcam_core.workspace.slide_cases import cases_path, library_cases, load_cases, save_case
from pcam_core.workspace.slide_library import SlideEntry, SlideLibrary


def case_view(library: SlideLibrary, entries: list[SlideEntry], run: str | Path, *, stride: int,
              reviews: ReviewStore | None = None) -> None:
    """An expander with the library's cases (stages from the analyses with `run` at `stride`), each with its printable
    report (the reviews from `reviews`), and a form to make one."""
    cases = library_cases(library, run, stride=stride)
    title = f"Cases: {len(cases)} patient(s), pN stage by the CAMELYON17 rules" if cases else "Cases: group slides by patient"
    with st.expander(title, icon=":material/folder_shared:"):
        if cases:
            rows = [{"patient": c.patient, "pN stage": c.stage + (" (provisional)" if c.provisional else ""),
                     "decided by": ", ".join(c.deciding) or "—",
                     "slides (size class)": "; ".join(f"{slide}: {name}" for slide, name in c.classes.items())} for c in cases]
            st.dataframe(pd.DataFrame(rows), hide_index=True)
            st.caption("A slide not assessed (out of the model's scope) or not analysed counts as negative, so the stage is "
                       "provisional until it is read. Stages: pN0 none; pN0(i+) only ITC; pN1mi micrometastases; pN1 "
                       "metastases in 1-3 nodes, one a macrometastasis; pN2 in 4-9 (docs/evaluation.md).")
            for case in cases:
                left, right = st.columns([3, 1], vertical_alignment="center")
                left.markdown(f"**{case.patient}**: pN stage **{case.stage}**"
                              + (" (provisional: " + ", ".join(f"{slide} {case.classes[slide]}" for slide in case.unread) + ")"
                                 if case.provisional else "")
                              + (f", decided by {', '.join(case.deciding)}" if case.deciding else ""))
                right.download_button(
                    "Case report (HTML, printable)", key=f"case-report-{case.patient}", on_click="ignore",
                    data=lambda patient=case.patient: case_report_html(library, patient, run, stride=stride,
                                                                       reviews=reviews).encode("utf-8"),
                    file_name=f"case-{case.patient}.html", mime="text/html", icon=":material/download:",
                    help="The case on its first page (pN stage, provisional or not and why, the deciding slides, the "
                         "reviews, a pathologist's sign-off), then each slide's report.")
        by_id = {entry.id: entry for entry in entries}
        with st.form("slide-case", clear_on_submit=True):
            patient = st.text_input("Patient", placeholder="patient_004")
            known = load_cases(library.root)
            slides = st.multiselect("Their lymph-node slides (none: remove the case)", list(by_id),
                                    format_func=lambda i: by_id[i].label)
            if st.form_submit_button("Save case"):
                try:
                    save_case(library.root, patient, slides)
                except ValueError as err:
                    st.error(str(err))
                else:
                    st.rerun()
        if known:
            st.caption(f"{len(known)} case(s) saved in {cases_path(library.root)}.")
