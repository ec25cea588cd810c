"""Review: a pathologist walks the review queue of a scored split of the selected run, one patch at a time,
the patches the model is least sure about first (`pcam_core.workspace.reviews.review_queue`), and gives
each a verdict saved at once. Progress by verdict, and the reviews exported as CSV (the file
`pcam train --label-overrides` and the Train page read). With the bundled model the queue is its held-out
patches ("valid") that the active dataset holds: their predictions ship with it, their pixels do not."""

import streamlit as st

from pcam_app import caches, notes, patches, reviews, shell, thresholds
from pcam_core import decision
from pcam_core.bundled import held_out_words
from pcam_core.workspace.gallery import outline_centre
from pcam_core.workspace.reviews import ModelCall, ReviewTarget, review_queue

ctx = shell.context()
st.title("Review")
run = shell.require_run(ctx, checkpoint=True)
notes.synthetic_banner(ctx.run_synthetic(run), "This run was trained on SYNTHETIC demo data: reviewing its patches is practice only.")
st.caption("The patches the model is least sure about come first: those nearest the decision threshold and, when the "
           "split was scored with test-time augmentation, those whose 8 views disagree most. An hour of review goes "
           "where it changes most. Each verdict is saved at once; patches you reviewed leave your queue.")
splits = shell.require_scored_splits(run)
top = st.columns([2, 3], vertical_alignment="bottom")
split = top[0].segmented_control("Patches of the split", splits, default=splits[0], required=True, key="review_split",
                                 help="Score other splits on the Runs page to review them.")
threshold = thresholds.slider(top[1], run, key="review_threshold",
                              help="The call shown with each patch, and what 'near the threshold' means for the queue.")
dataset, predictions = caches.patches_of(run, split, ctx.source)
if ctx.bundled and (predictions is None or predictions.empty):
    st.info(f"None of the bundled model's {held_out_words()} patches is in the active dataset: their predictions ship with it, "
            "their pixels do not. They are patches of Kaggle's 'Histopathologic Cancer Detection' training folder (ids in "
            "pcam_core/bundled/valid_predictions.csv): register that folder on the Overview page and make it the active "
            "dataset to review them.", icon=":material/database:")
    st.stop()
if predictions is None or predictions.empty:
    shell.fail(f"The {split} predictions of run {run.run_id} are missing or out of date; score the split again on the Runs page.")
name = reviews.reviewer()
if not name:
    st.info("Type your name under **Reviewer** in the sidebar to start: reviews are saved under it.", icon=":material/badge:")
    st.stop()

store = ctx.workspace.reviews()
source = reviews.data_name(ctx, run)
skipped_key = f"_review_skipped_{run.run_id}_{source}_{split}"
skipped: set[str] = st.session_state.setdefault(skipped_key, set())
try:
    done = store.reviewed_items(name, source)
    counts = store.counts(reviewer=name, source=source)
except (OSError, ValueError) as err:
    shell.fail(f"Cannot read the review database {store.path}: {err}")
queue = review_queue(predictions, threshold, reviewed=done | skipped)
reviewed_here = int(predictions["id"].astype(str).isin(done).sum())

st.progress(reviewed_here / len(predictions),
            text=f"{reviewed_here:,} of {len(predictions):,} patches of {split} reviewed by {name}; {len(queue):,} in the queue"
                 + (f" ({len(skipped)} skipped this session)" if skipped else ""))
with st.container(horizontal=True, gap="medium"):
    for verdict, label in reviews.VERDICT_LABELS.items():
        st.metric(label, f"{counts[verdict]:,}", width="content", help=f"Your current reviews of {source} with this verdict.")

if queue.empty:
    st.success("Nothing left in your queue for this split." + (" Skipped patches come back in a new session." if skipped else ""),
               icon=":material/task_alt:")
else:
    row = queue.iloc[0]
    index, label, probability = int(row["index"]), int(row["label"]), float(row["probability"])
    call = decision.call(probability, threshold)
    pixels = dataset.read_pixels([index])
    image_col, facts = st.columns([1, 1.4], gap="large")
    image_col.image(outline_centre(pixels[0], scale=4, width=3), width=384,
                    caption=f"Patch #{index} of {reviews.data_split(run, split)} (4× enlarged); the box is the central 32×32 region the label describes")
    with facts:
        numbers = st.columns(3)
        numbers[0].metric("Tumour probability", f"{probability:.3f}", help=notes.PROBABILITY_NOTE)
        numbers[1].metric(f"Call at {thresholds.text(threshold)}", call)
        has_spread = "uncertainty" in row and row["uncertainty"] == row["uncertainty"]
        numbers[2].metric("Uncertainty", f"{row['uncertainty']:.3f}" if has_spread else "-",
                          help="The spread of the model over the 8 flips and rotations of the patch (scored with "
                               "test-time augmentation); '-' when the split was scored without it.")
        st.markdown(f"**Label:** {patches.label_name(label)} · **queue priority** {row['priority']:.3f} "
                    f"(closeness to the threshold {row['closeness']:.3f})")
        target = ReviewTarget(source, patch_id=str(row["id"]), split=reviews.data_split(run, split), index=index)
        saved = reviews.review_widget(store, target, ModelCall(probability, call, threshold, run.run_id), key="queue")
        if st.button("Skip to the next", icon=":material/skip_next:", help="Leave this patch unreviewed for now."):
            skipped.add(str(row["id"]))
            st.rerun()
        st.caption(f"Id `{row['id']}`")
    if saved is not None:
        st.rerun()  # the next patch of the queue

st.divider()
st.subheader("Export")
try:
    export = store.export_frame(source=source)
except (OSError, ValueError) as err:
    shell.fail(f"Cannot read the review database {store.path}: {err}")
st.caption(f"{len(export):,} current reviews of {source} by every reviewer (the latest of each reviewer on each patch; the "
           "history stays in the database). `pcam train --label-overrides FILE` trains with them: Label wrong flips a "
           "training patch's label, Artefact drops it; the Train page can pass them for you.")
st.download_button("Download reviews (CSV)", export.to_csv(index=False), file_name=f"reviews-{source.replace('/', '_')}.csv",
                   mime="text/csv", icon=":material/download:", on_click="ignore", disabled=export.empty)
