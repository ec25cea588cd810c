"""The Runs page's trust sections: confidence intervals of the headline figures, the reliability diagram
before and after calibration, the conformal triage on the split judged, and the comparison with other
runs scored on the same patches. Each function draws one section from what `pcam_core` computed."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pcam_core.runs import RunDir
from pcam_core.stats import format_interval
from pcam_core.triage import DEFAULT_FPR
from pcam_core.workspace import trust

from . import caches, figures
from .components.chart import chart
from .components.table import sortable_table

INTERVAL_NAMES = {"roc_auc": "ROC-AUC", "pr_auc": "PR-AUC", "accuracy": "Accuracy", "recall": "Sensitivity",
                  "specificity": "Specificity", "precision": "Precision", "f1": "F1", "brier": "Brier score"}
TARGETS = [0.80, 0.85, 0.90, 0.95, 0.97, 0.98, 0.99, 0.995]
FPRS = [0.01, 0.02, 0.05, 0.10, 0.20]


def intervals_section(run: RunDir, split: str, threshold: float, patches: int) -> None:
    """The headline figures at `threshold` with their 95% intervals, as "0.951 (0.930-0.970)", and the method of each;
    `patches`: how many the figures were computed on, for the sentence on an interval of no width."""
    intervals = caches.metric_intervals(run, split, threshold)
    st.markdown("**95% confidence intervals** " + " · ".join(
        f"{INTERVAL_NAMES[name]} {format_interval(interval)}" for name, interval in intervals.items() if interval))
    methods = sorted({f"{INTERVAL_NAMES[n]}: {i['method']}" for n, i in intervals.items() if i})
    flat = [INTERVAL_NAMES[n] for n, i in intervals.items() if i and f"{i['low']:.3f}" == f"{i['high']:.3f}"]  # as shown
    st.caption("How much the figures could move on another sample of patches like these (" + "; ".join(methods) + "). "
               "They do not cover patches unlike these: another lab, scanner or tissue."
               + (f" An interval of no width ({', '.join(flat)}) means every resample of these {patches:,} patches scored "
                  f"alike, not that the figure is certain: a failure rarer than about 1 in {max(patches, 3) / 3:,.0f} can "
                  "go unseen in a sample this size (the rule of three)." if flat else ""))


def calibration_section(run: RunDir, split: str, predictions: pd.DataFrame) -> None:
    """The run's temperature and the reliability diagram of the split before and after it."""
    st.subheader("Calibration")
    try:
        calibration, report = trust.calibration_view(run, predictions)
    except ValueError as err:
        st.error(f"Cannot read the calibration of run {run.run_id}: {err}")
        return
    if calibration is None:
        st.info(f"Run {run.run_id} has no fitted temperature yet: it is fitted when training ends, or by "
                f"`pcam calibrate --run {run.path}`.", icon=":material/tune:")
        return
    if calibration.warning:
        st.warning(calibration.warning, icon=":material/warning:")
    left, right = st.columns([1, 2])
    with left:
        cells = st.columns(2)
        cells[0].metric("ECE raw", f"{report['before']['ece']:.3f}", help="Expected calibration error: the mean gap between "
                        "predicted probability and observed frequency, over 10 bins.")
        cells[1].metric("ECE calibrated", f"{report['after']['ece']:.3f}")
        cells = st.columns(2)
        cells[0].metric("Brier raw", f"{report['before']['brier']:.4f}", help="Mean squared error of the probabilities.")
        cells[1].metric("Brier calibrated", f"{report['after']['brier']:.4f}")
        fitted_on = "out-of-fold predictions" if run.oof_predictions_path.exists() else "validation patches"  # cross-validated
        st.caption(f"Calibration: {calibration.describe}, fitted on {calibration.n:,} {fitted_on} "
                   f"({calibration.fitted_on}, {calibration.fitted_at}). The **calibrated** probability is "
                   f"{calibration.formula}: the same ranking, so the same ROC curve and the same triage calls."
                   + (" The bias takes out the class-balanced loss's lean towards tumour, so a patch called tumour at "
                      "the model's threshold can have a calibrated probability under 0.5." if calibration.bias else "")
                   + (" Judged here on the patches it was fitted on." if split == "valid" else ""))
    chart(figures.reliability_figure(report), key="reliability", where=right)


def triage_section(run: RunDir, split: str, predictions: pd.DataFrame) -> None:
    """The split-conformal triage fitted on the validation split, judged on `split`, and its trade-off curve."""
    st.subheader("Triage: normal, refer, tumour")
    pick = st.columns(2)
    target = pick[0].select_slider("Target sensitivity", TARGETS, value=0.98, key="triage_target",
                                   help="At most 1 - target of tumour patches may be called normal, on average.")
    fpr = pick[1].select_slider("False-positive rate allowed for tumour calls", FPRS, value=DEFAULT_FPR, key="triage_fpr",
                                format_func=lambda v: f"{v:.0%}")
    try:
        view = caches.triage_view(run, split, target, fpr)
    except ValueError as err:
        st.error(f"Cannot fit the triage: {err}")
        return
    if view is None:
        st.info("The triage is fitted on the run's validation predictions, which need patches of both classes.",
                icon=":material/pending:")
        return
    t, outcome = view["thresholds"], view["outcome"]
    cells = st.columns(4)
    cells[0].metric("Target miss rate", f"{1 - target:.1%}", help="1 - target sensitivity: the share of tumour patches "
                    "the triage may call normal, on average.")
    cells[1].metric("Miss rate reached", f"{outcome['miss_rate']:.1%}" if outcome["miss_rate"] is not None else "-",
                    help=f"Tumour patches of the {split} split called normal, of all its tumour patches.")
    cells[2].metric("Referral rate", f"{outcome['referral_rate']:.1%}", help="Patches handed to a pathologist.")
    cells[3].metric("False-positive rate reached", f"{outcome['false_positive_rate']:.1%}"
                    if outcome["false_positive_rate"] is not None else "-")
    cut = (f"The two thresholds cross (tumour above {t.tumour_above:.4f} < normal below {t.normal_below:.4f}): one cut at "
           f"{t.tumour_above:.4f} keeps both promises, and no patch is referred." if t.crossed else
           f"Normal below {t.normal_below:.4f}, tumour above {t.tumour_above:.4f}, refer in between.")
    st.markdown(f"{cut} Fitted on {t.n_tumour:,} tumour and {t.n_normal:,} normal validation patches. "
                f"{view['guarantee']}")
    if t.k_tumour == 0:
        st.warning(f"The validation split has too few tumour patches ({t.n_tumour}) for a {target:.1%} target: no patch is "
                   "called normal.", icon=":material/warning:")
    if view["in_sample"]:
        st.caption("Judged on the validation patches the thresholds were fitted on: the figures are not a test of the "
                   "guarantee. Score another split to test it.")
    st.caption("The validation split is scored with one pass per patch; other splits with test-time augmentation. "
               "The guarantee assumes the scores are exchangeable, which a different scoring can bend.")
    chart(figures.triage_figure(view["curve"], target), key="triage_curve")


def compare_section(run: RunDir, runs: list[RunDir], split: str, threshold: float) -> None:
    """This run against others scored on the same patches: ROC curves, figures side by side, the paired DeLong test."""
    st.subheader("Compare with other runs")
    candidates = trust.comparable_runs(run, runs, split)
    if not candidates:
        st.caption(f"No other run has predictions of the same {split} patches; score the same split of the same data "
                   "with another run to compare them here (`pcam compare` scores runs on any split).")
        return
    names = {r.run_id: r for r in candidates}
    chosen = st.multiselect("Runs to compare with", list(names), default=list(names)[:1], key="compare_runs")
    if not chosen:
        return
    result = caches.compare_runs([run, *(names[n] for n in chosen)], split, threshold)
    aucs = {name: row["metrics"]["roc_auc"] for name, row in result["runs"].items()}
    left, right = st.columns([3, 2])
    chart(figures.roc_overlay_figure(result["roc"], aucs), key="compare_roc", where=left)
    rows = [{"run": name, **{INTERVAL_NAMES[k]: format_interval(row["intervals"].get(k)) for k in
                             ("roc_auc", "accuracy", "recall", "specificity", "precision", "f1")}}
            for name, row in result["runs"].items()]
    with right:
        sortable_table(pd.DataFrame(rows), key="compare_table", height=200,
                       caption=f"At threshold {threshold:.3f}, {result['n']:,} patches, 95% intervals")
        for name, test in result["paired_tests"].items():
            st.markdown(f"**{name}** − **{result['reference']}**: ROC-AUC difference {test['difference']:+.4f} "
                        f"(95% {test['low']:+.4f} to {test['high']:+.4f}), paired DeLong test p = {test['p_value']:.3g}")
        st.caption("The paired DeLong test uses that both runs scored the same patches: a p-value below 0.05 says the AUC "
                   "difference is unlikely to be chance on patches like these.")
