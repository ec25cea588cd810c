"""Runs and metrics: every run with its key figures, learning curves of several runs overlaid, and for
the selected run and a split: the metrics, ROC and PR curves and the confusion matrix at a threshold
chosen with one slider with their 95% intervals, the calibration, the conformal triage and the comparison with
other runs on the same patches (`pcam_app.trust`), and the most confident (or most uncertain) false positives
and false negatives. The bundled model is judged on its "valid" split: the held-out patches whose predictions
ship with it (their pixels do not: its errors are drawn when the active dataset is a Kaggle folder holding them)."""

import time

import streamlit as st

from pcam_app import caches, figures, notes, patches, reviews, robustness, shell, thresholds, trust
from pcam_app.components.chart import chart
from pcam_app.components.patch_links import patch_cards
from pcam_app.components.table import sortable_table
from pcam_core.bundled import held_out_words
from pcam_core.decision import DEFAULT_THRESHOLD
from pcam_core.runs import RunDir
from pcam_core.workspace.gallery import ORDERS, confident_errors
from pcam_core.workspace.trust import has_uncertainty
from pcam_core.runs.jobs import job_error
from pcam_core.workspace.monitor import (CURVE_METRICS, FIGURE_COLUMNS, epoch_frame, format_duration, learning_curves,
                                         runs_table)
from pcam_core.workspace import scoring
from pcam_core.workspace.reviews import ModelCall, ReviewTarget

HELD_OUT_NOTE = ("They are patches of Kaggle's 'Histopathologic Cancer Detection' training folder (ids in "
                 "pcam_core/bundled/valid_predictions.csv): register that folder on the Overview page and make it the "
                 "active dataset to see them.")

ctx = shell.context()
st.title("Runs and metrics")

# -- all runs ---------------------------------------------------------------------------------------------
if ctx.runs:
    table = runs_table(ctx.runs, ctx.source_names())
    sortable_table(table, {name: "{:.3f}" for name in FIGURE_COLUMNS}, key="runs_table", caption="All runs")
    st.caption(f"Figures of each run's best epoch on its validation split; accuracy and F1 at the threshold "
               f"{DEFAULT_THRESHOLD}. Runs on different data are not comparable."
               + (" A cross-validation's row holds its out-of-fold figures over every patch of its pool (one pass), each "
                  "fold at its last epoch: it has no best epoch and no single validation loss (each fold's is on its "
                  "learning curves, on the Train page)." if any((s.best or {}).get("cross_validated") for s in ctx.runs) else ""))
else:
    st.info("No training run of yours yet: start one on the Train page. The bundled model is judged below.",
            icon=":material/model_training:")

with_epochs = {r.run_id: r for r in ctx.runs if r.epochs_done}  # a cross-validation's epochs are its folds'
if with_epochs:
    st.subheader("Learning curves")
    pick, metric_col = st.columns([3, 1])
    chosen = pick.multiselect("Runs", list(with_epochs), default=list(with_epochs)[:4], key="curve_runs",
                              help="A cross-validation is drawn as one curve per fold.")
    metric = metric_col.selectbox("Metric", list(CURVE_METRICS), format_func=lambda m: CURVE_METRICS[m], key="curve_metric")
    if chosen:
        curves = {name: epochs for rid in chosen for name, epochs in learning_curves(with_epochs[rid]).items()}
        chart(figures.curves_figure(epoch_frame(curves), metric), key="curves")

# -- the selected run -------------------------------------------------------------------------------------
st.divider()
run = shell.require_run(ctx, checkpoint=True)
bundled = ctx.bundled
st.subheader(f"Judging the {shell.run_label(run)}" if bundled else f"Judging run `{run.run_id}`")
notes.synthetic_banner(ctx.run_synthetic(run), "This run was trained on SYNTHETIC demo data.")
notes.run_warnings(run)
try:
    splits = scoring.scorable_splits(run)
except (OSError, ValueError) as err:
    shell.fail(f"Cannot read the data of run {run.run_id}: {err}")
KIND = held_out_words()  # the bundled model's shipped predictions: held-out (one model) or out-of-fold (the ensemble)
cross_validation = not bundled and run.is_cross_validation
TRAINER_SPLIT_NAME = (f"{KIND}, shipped with the model" if bundled else
                      "out-of-fold, every patch" if cross_validation else "scored in training")
split = st.segmented_control("Split", splits, default=scoring.TRAINER_SPLIT, required=True, key="judge_split",
                             format_func=lambda s: f"{s} ({TRAINER_SPLIT_NAME})" if s == scoring.TRAINER_SPLIT else s)
if bundled:
    st.caption("The bundled model's out-of-fold patches: every real PCam patch its members were trained on, each scored "
               "with one pass by the one member that never saw it in training (its model card says how). Its other "
               "figures are on the card." if KIND == "out-of-fold" else
               "The bundled model's held-out patches: real PCam patches it never saw in training, scored with one pass "
               "when it was made (its model card says how). Its other figures are on the card.")
elif split == scoring.TRAINER_SPLIT and cross_validation:
    st.caption("A cross-validation's out-of-fold patches: every patch of its data's pool, each scored with one pass by "
               "the one fold run that did not train on it. The run's model is the ensemble of the folds, which trained on "
               "every one of these patches: scored by it, they would flatter it. Other splits are scored with "
               "test-time augmentation, as `pcam evaluate` does.")
elif split == scoring.TRAINER_SPLIT:
    st.caption("Scored by the trainer at the best epoch, one pass per patch. Other splits are scored with "
               "test-time augmentation (the mean over the 8 flips and rotations of each patch), as `pcam evaluate` does.")
elif split == "train":
    st.caption("The training split includes the patches the model learnt from: its figures flatter the model.")

try:
    predictions = caches.split_predictions(run, split)
except (OSError, ValueError) as err:
    shell.fail(str(err))


def scoring_panel(polling: bool) -> None:
    status = scoring.scoring_status(run, split)
    if polling and not (status and status.active):
        st.rerun()  # scoring ended: draw the page with its results
    if status is not None and status.active:
        st.info(f"Scoring the {split} split in the background (for {format_duration(time.time() - status.started_at)}); "
                "the figures appear here when it is done.", icon=":material/hourglass_top:")
        return
    if status is not None and status.state == "failed":
        st.error(f"Scoring failed: {job_error(status)}", icon=":material/error:")
    st.info(f"The {split} split has not been scored with this run's best checkpoint yet.", icon=":material/pending:")
    if st.button(f"Score the {split} split", icon=":material/play_arrow:", type="primary"):
        try:
            scoring.start_scoring(run, split)
        except (OSError, ValueError, RuntimeError) as err:
            st.error(f"Could not start scoring: {err}")
        else:
            st.rerun()


if predictions is None:
    if split == scoring.TRAINER_SPLIT:
        shell.fail(f"Run {run.run_id} has no validation predictions yet; they are written when an epoch ends.")
    job = scoring.scoring_status(run, split)
    polling = bool(job and job.active)
    st.fragment(scoring_panel, run_every=2 if polling else None)(polling)
    st.stop()
if not set(predictions["label"].unique()) <= {0, 1}:
    shell.fail(f"The {split} predictions have no labels to judge them by.")

# -- figures at a threshold -------------------------------------------------------------------------------
suggestions = caches.suggested_thresholds(run)
CUSTOM = "custom"


def use_suggestion() -> None:
    preset = st.session_state["threshold_preset"]
    if preset in suggestions:  # the engine's value as it is: rounded, a threshold for 95% sensitivity gave less
        thresholds.choose(run, suggestions[preset])


slider_col, preset_col = st.columns([3, 1], vertical_alignment="bottom")
# "Set from" names the suggestion the threshold equals, or "custom" once the slider has moved away from it
current = thresholds.chosen(run)
st.session_state["threshold_preset"] = next((name for name, value in suggestions.items() if value == current), CUSTOM)
preset_col.selectbox("Set from", [*suggestions, CUSTOM], key="threshold_preset", on_change=use_suggestion,
                     help="Thresholds chosen on this run's validation predictions, never on the split judged here; "
                          "custom: set with the slider.")
threshold = thresholds.slider(slider_col, run, key="threshold",
                              help="A patch is called tumour when its probability is at or above this value. "
                                   "The Explain and Predict pages start from the threshold chosen here.")
st.caption(notes.PROBABILITY_NOTE)
report = caches.threshold_report(run, split, threshold)
m = report.metrics
cells = st.columns(7)
for column, (label, value, help_text) in zip(cells, [
    ("Accuracy", m["accuracy"], "Share of patches called correctly."),
    ("Sensitivity", m["recall"], "Recall: of the tumour patches, the share called tumour."),
    ("Specificity", m["specificity"], "Of the normal patches, the share called normal."),
    ("Precision", m["precision"], "Positive predictive value: of the patches called tumour, the share that truly are."),
    ("F1", m["f1"], "Harmonic mean of precision and recall."),
    ("ROC-AUC", m["roc_auc"], "Threshold-free: the chance that a random tumour patch scores above a random normal one."),
    ("PR-AUC", m["pr_auc"], "Threshold-free: average precision over all recalls."),
]):
    column.metric(label, f"{value:.3f}" if value is not None else "-", help=help_text)
st.caption(f"{m['n']:,} patches of the {split} split, {m['prevalence']:.1%} tumour.")
trust.intervals_section(run, split, threshold, m["n"])

row1 = st.columns(2)
chart(figures.roc_figure(report), key="roc", where=row1[0])
chart(figures.pr_figure(report), key="pr", where=row1[1])
row2 = st.columns(2)
chart(figures.confusion_figure(report), key="confusion", where=row2[0])
chart(figures.probability_figure(predictions, threshold), key="histogram", where=row2[1])

# -- trust: calibration, triage, comparison (pcam_app.trust) -----------------------------------------------
trust.calibration_section(run, split, predictions)
trust.triage_section(run, split, predictions)
trust.compare_section(run, [RunDir(r.path) for r in ctx.runs], split, threshold)

# -- error gallery ----------------------------------------------------------------------------------------
heading = st.empty()
order = "confidence"
if has_uncertainty(predictions):
    order = st.segmented_control("Sort errors", list(ORDERS), format_func=ORDERS.get, default="confidence", required=True,
                                 key="error_order")
heading.subheader("Most confident errors" if order == "confidence" else "Most uncertain errors")
st.caption("The mistakes the model was surest of at this threshold (or, sorted by uncertainty, those whose 8 flipped and "
           "rotated views disagreed most): worth a pathologist's look (label noise, artefacts, or a blind spot of the "
           "model). **Explain** opens a patch with the heat map of the model's evidence. " + notes.CENTRE_NOTE)
false_pos, false_neg = confident_errors(predictions, threshold, k=8, order=order)
dataset, located = caches.patches_of(run, split, ctx.source)
if bundled:  # only the errors whose pixels the active dataset holds can be drawn
    false_pos, false_neg = (confident_errors(located, threshold, k=8, order=order) if len(located)
                            else (false_pos.iloc[:0], false_neg.iloc[:0]))
    st.caption(f"The pixels of the bundled model's {len(predictions):,} {KIND} patches do not ship with it: "
               f"the active dataset holds {len(located):,} of them. " + HELD_OUT_NOTE)
left, right = st.columns(2, gap="large")
for column, frame, title, empty in (
    (left, false_pos, "False positives: normal patches called tumour", "No false positive at this threshold."),
    (right, false_neg, "False negatives: tumour patches called normal", "No false negative at this threshold."),
):
    with column:
        st.markdown(f"**{title}**")
        if frame.empty:
            st.caption(empty)
            continue
        indices = frame["index"].to_numpy()
        spread = frame["uncertainty"] if "uncertainty" in frame.columns else [float("nan")] * len(frame)
        captions = [f"#{i} · p={p:.3f}" + (f" · ±{u:.3f}" if u == u else "") for i, p, u in zip(indices, frame["probability"], spread)]
        if bundled:  # Explain takes the bundled model's patches as uploads: no link
            patches.patch_tiles(dataset.read_pixels(indices), captions, width=120)
        else:
            patch_cards(dataset.read_pixels(indices), captions,
                        "pages/explain.py", [{**st.query_params.to_dict(), "run": run.run_id, "split": split, "patch": str(i)}
                                             for i in indices],
                        label="Explain", key=f"errors_{title.split(':')[0]}", width=120)
        kind = title.split(":")[0]
        pick_col, review_col = st.columns([2, 1], vertical_alignment="bottom")
        scores = dict(zip(indices.tolist(), frame["probability"]))
        chosen = pick_col.selectbox(f"Review one of the {kind.lower()}", list(scores), key=f"review_pick_{kind}",
                                    format_func=lambda i, scores=scores: f"#{i} · p={scores[i]:.3f}")
        picked = frame[frame["index"] == chosen].iloc[0]
        with review_col:
            probability = float(picked["probability"])
            reviews.review_widget(ctx.workspace.reviews(), ReviewTarget(reviews.data_name(ctx, run), patch_id=str(picked["id"]),
                                                                        split=reviews.data_split(run, split),
                                                                        index=int(picked["index"])),
                                  ModelCall.at(probability, threshold, run.run_id),
                                  key=f"errors_{kind}", compact=True)

st.divider()
if bundled:
    st.caption("The robustness report scores a run's own data under shifts: `pcam robustness --run bundled --data D` "
               "writes one for the bundled model on data of yours.")
else:
    robustness.section(run, split)
