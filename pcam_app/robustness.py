"""The Runs page's robustness section: the report card and the charts of `pcam robustness` for a run and
a split, or a button that writes them in a background job."""

from __future__ import annotations

import time

import streamlit as st

from pcam_core.runs import RunDir
from pcam_core.runs.jobs import job_error
from pcam_core.workspace import robustness
from pcam_core.workspace.monitor import format_duration

from . import figures
from .components.chart import chart


def _job_panel(run: RunDir, split: str, polling: bool) -> None:
    status = robustness.robustness_status(run, split)
    if polling and not (status and status.active):
        st.rerun()  # the job ended: draw the section with its report
    if status is not None and status.active:
        last = status.log_tail.splitlines()[-1] if status.log_tail else "starting"
        st.info(f"Scoring the {split} split under graded shifts in the background (for "
                f"{format_duration(time.time() - status.started_at)}; last: {last}).", icon=":material/hourglass_top:")
        return
    if status is not None and status.state == "failed":
        st.error(f"The robustness report failed: {job_error(status)}", icon=":material/error:")
    st.info(f"No robustness report of the {split} split with this run's best checkpoint yet.", icon=":material/pending:")
    if st.button(f"Write the robustness report ({robustness.PAGE_SAMPLE:,} patches of {split})", icon=":material/play_arrow:",
                 key="robustness_start"):
        try:
            robustness.start_robustness(run, split)
        except (OSError, ValueError, RuntimeError) as err:
            st.error(f"Could not start the robustness report: {err}")
        else:
            st.rerun()


def section(run: RunDir, split: str) -> None:
    """The robustness section of the Runs page for `run` judged on `split`."""
    st.subheader("Robustness")
    st.caption("How the model holds up when the patches look different from these: weaker or stronger stains, another "
               "lab's stain look, blur, JPEG compression, brightness and contrast, each in graded strengths "
               "(`pcam robustness`; docs/robustness.md).")
    try:
        report = robustness.robustness_report(run, split)
    except (OSError, ValueError) as err:
        st.error(str(err), icon=":material/error:")
        return
    if report is None:
        job = robustness.robustness_status(run, split)
        polling = bool(job and job.active)
        st.fragment(_job_panel, run_every=2 if polling else None)(run, split, polling)
        return
    card, table = report["card"], report["frame"]
    st.caption(f"{report['n']:,} patches of the {split} split ({'a seeded sample' if report.get('limit') else 'all of them'}), "
               f"{'with' if report['tta'] else 'without'} test-time augmentation; accuracy at the threshold "
               f"{report['threshold']:.3f}. Trusted while the ROC-AUC stays within {card['auc_drop']} of the unshifted one"
               + (f" and the calibration error at most {card['ece_limit']}." if card["judges_ece"] else "."))
    for note in card["notes"]:
        st.warning(note, icon=":material/warning:")
    st.markdown("\n".join(f"- **{entry['title']}**: {entry['sentence']}" for entry in card["entries"]))
    base = table[table["strength"] == 0].iloc[0]
    left, right = st.columns(2)
    if base["roc_auc"] is not None and base["roc_auc"] == base["roc_auc"]:
        chart(figures.robustness_figure(table, "roc_auc", float(base["roc_auc"]) - card["auc_drop"]), key="robustness_auc",
              where=left)
    chart(figures.robustness_figure(table, "ece", card["ece_limit"]), key="robustness_ece", where=right)
    with st.expander("The table"):
        st.dataframe(table.drop(columns=["title"]), hide_index=True)
