"""Predict: upload patches (tif, png, jpg) and get each one's tumour probability and the call at a chosen
threshold from the selected run's model (or the bundled model trained on real tissue), each beside the heat map of its evidence (Grad-CAM) with its
centre focus; a batch gives a results CSV (probability, calibrated probability when the run has a temperature,
TTA uncertainty, and the call at the threshold or by conformal triage, with what made it; a refused file as a
row with the call "refused" and its reason) and a Kaggle submission CSV. The threshold starts at the run's own,
so a patch gets the call `pcam predict --results` and `pcam serve` give it with the same run. A file that is not
a 96x96 RGB patch is converted with a notice or refused with the reason, never silently."""

import hashlib

import numpy as np
import streamlit as st

from pcam_app import caches, heatmaps, notes, patches, reviews, shell, thresholds
from pcam_core.calibration import run_triage
from pcam_core.data.common import patch_id
from pcam_core.predict import REFUSED, UploadResult, results_table, score_uploads
from pcam_core.scope import no_guard_warning
from pcam_core.workspace.reviews import ModelCall, ReviewTarget

SHOWN = 96  # patches drawn; the table and the CSV hold every one
RESULT_ORDER = ["file", "call", "probability", "probability_calibrated", "uncertainty", "in_scope", "ood_score", "notes", "id"]

ctx = shell.context()
st.title("Predict")
run = shell.require_run(ctx, checkpoint=True)
loaded = caches.load_model(run)
model, config, info = loaded.model, loaded.config, loaded.info
epoch = info.get("epoch")
if ctx.bundled:
    shell.bundled_note()
else:
    st.caption(f"Model of run `{run.run_id}`: {config.model.name}, best checkpoint"
               + (f" (after epoch {epoch})" if epoch is not None else "") + f", trained on `{config.data.path}`.")
notes.synthetic_banner(bool(info.get("synthetic_data")),
                      "This model was trained on SYNTHETIC demo data: its probabilities mean nothing for real tissue.")

settings = st.columns([3, 2], vertical_alignment="bottom")
threshold = thresholds.slider(settings[0], run, key="predict_threshold",
                              help="A patch is called tumour when its probability is at or above this value.")
toggles = settings[1].container(horizontal=True, gap="medium")
tta = toggles.toggle("Test-time augmentation", value=True, key="predict_tta",
                         help="Average the model over the 8 flips and rotations of each patch (as `pcam predict` does): "
                              "steadier, 8 times the work. Off: one pass.")
heat_maps = toggles.toggle("Heat maps", value=True, key="predict_heatmaps",
                               help="Show each patch beside the heat map of the model's evidence for tumour (Grad-CAM), "
                                    "with its centre focus.")
calibration = loaded.calibration_for(tta=tta)  # the temperature of the scoring mode (cross-validated runs have both)
triage = None
if run.valid_predictions_path.exists():  # a run's validation predictions; the bundled model's held-out ones
    triage_cols = st.columns([1, 2], vertical_alignment="bottom")
    if triage_cols[0].toggle("Triage", value=False, key="predict_triage",
                             help="Calls by the split-conformal triage fitted on the run's validation predictions (the "
                                  "bundled model's: the held-out or out-of-fold predictions it ships): normal, refer (to a pathologist) or tumour, "
                                  "instead of the threshold, as `pcam predict --triage` calls them."):
        target = triage_cols[1].select_slider("Target sensitivity", [0.90, 0.95, 0.97, 0.98, 0.99], value=0.98,
                                              key="predict_triage_target")
        try:
            triage = run_triage(run.path, target, tta=tta)
        except (OSError, ValueError) as err:
            st.error(f"Cannot fit the triage: {err}")
        else:
            st.caption(triage.guarantee())
fitted_on = "out-of-fold" if run.oof_predictions_path.exists() else "validation"  # a cross-validated run's: every patch's
st.caption(notes.PROBABILITY_NOTE + (f" The **calibrated** probability is {calibration.formula}, with "
                                     f"{calibration.describe} fitted on the run's {calibration.n:,} {fitted_on} "
                                     f"predictions{' (TTA)' if calibration is loaded.calibration_tta else ''}."
                                     if calibration else ""))
if calibration and calibration.warning:
    st.warning(calibration.warning, icon=":material/warning:")

files = st.file_uploader("Patches (96×96 pixel RGB tif, png or jpg; Kaggle's `<id>.tif` files as they are)",
                         type=["tif", "tiff", "png", "jpg", "jpeg"], accept_multiple_files=True, key="uploads")
if not files:
    st.info("Drop one or many patches above. Each is scored on its own; files are kept in memory only, never saved.",
            icon=":material/upload_file:")
    st.stop()


@st.cache_data(max_entries=8, show_spinner="Scoring...")
def _score(checkpoint_key: str, digest: str, tta: bool, _files: list[tuple[str, bytes]]) -> UploadResult:
    # keyed on the checkpoint and the files' digest; the bytes themselves are not hashed again
    return score_uploads(model, _files, tta=tta, scope=loaded.scope)


pairs = [(f.name, f.getvalue()) for f in files]
digest = hashlib.sha1(b"".join(hashlib.sha1(name.encode() + data).digest() for name, data in pairs)).hexdigest()
result = _score(f"{run.path}:{info.get('epoch')}:{info.get('global_step')}", digest, tta, pairs)

for name, reason in result.refused:
    st.error(f"**{name}** was not scored: {reason}", icon=":material/block:")
converted = [p for p in result.scored if p.notes]
for patch in converted:
    st.warning(f"**{patch.name}**: {'; '.join(patch.notes)}. Scored after conversion; check it is a PCam-like patch.",
               icon=":material/transform:")
if not result.scored:
    st.stop()
outside = [p for p in result.scored if p.in_scope is False]
if outside:
    st.warning(f"{len(outside)} patch(es) unlike the lymph-node H&E the model was trained on (out of its scope): called "
               f"**refer**, whatever their probability — {', '.join(p.name for p in outside[:5])}"
               f"{' …' if len(outside) > 5 else ''}. See docs/scope.md.", icon=":material/block:")
elif loaded.scope is None:
    st.warning(f"Run {no_guard_warning(run.run_id)}.", icon=":material/warning:")

# one table for the page and the results file: every file, a refused one with the call "refused" and its reason
table = results_table(result, threshold, model=config.model.name, run=run.run_id, triage=triage, calibration=calibration)
scored = len(result.scored)
called = int((table["call"] == "tumour").sum())
refused = f", {len(result.refused)} refused" if result.refused else ""
if triage is not None:
    referred = int((table["call"] == "refer").sum())
    st.subheader(f"{scored} patch{'es' if scored != 1 else ''} scored: {called} called tumour, {referred} referred "
                 f"({referred / scored:.0%}), by triage at target sensitivity {triage.target_sensitivity}{refused}")
else:  # every call counted: out of scope, a patch is referred whatever its probability
    referred = int((table["call"] == "refer").sum())
    st.subheader(f"{scored} patch{'es' if scored != 1 else ''} scored: {called} called tumour at {thresholds.text(threshold)}, "
                 f"{scored - called - referred} normal" + (f", {referred} referred (out of scope)" if referred else "") + refused)
# the call first after the file, so that it is in sight at any width; the long id last
st.dataframe(table, hide_index=True, column_order=[c for c in RESULT_ORDER if c in table.columns], column_config={
    "file": st.column_config.TextColumn("file", width="medium"),
    "call": st.column_config.TextColumn("call", width="small"),
    "probability": st.column_config.ProgressColumn("tumour probability", format="%.3f", min_value=0.0, max_value=1.0,
                                                   width="medium"),
    "probability_calibrated": st.column_config.NumberColumn("calibrated probability", format="%.3f", width="small"),
    "uncertainty": st.column_config.NumberColumn("uncertainty (TTA spread)", format="%.3f", width="small",
                                                 help="Standard deviation of the probabilities of the 8 flipped and rotated "
                                                      "views; empty with test-time augmentation off."),
    "in_scope": st.column_config.CheckboxColumn("in scope", width="small",
                                                help="False: unlike the tissue the model was trained on; its call is refer."),
    "ood_score": st.column_config.NumberColumn("out-of-scope score", format="%.1f", width="small",
                                               help=f"Distance from the training patches; above "
                                                    f"{loaded.scope.threshold if loaded.scope else float('nan'):.1f} is out of scope."),
    "notes": st.column_config.TextColumn("notes", width="medium"),
    "id": st.column_config.TextColumn("id", width="small"),
})


def score_text(patch) -> str:
    """"p=0.912 ±0.031": the probability and, with TTA, its uncertainty (the spread of the 8 views); "out of scope"
    before it when the guard flagged the patch."""
    spread = patch.uncertainty
    text = patches.probability_text(patch.probability)
    if spread == spread:  # NaN without TTA
        text += " ±<0.001" if spread < 0.0005 else f" ±{spread:.3f}"
    return f"OUT OF SCOPE · {text}" if patch.in_scope is False else text


shown = result.scored[:SHOWN]
pixels = np.stack([p.pixels for p in shown])
if heat_maps:
    explanation = heatmaps.explain(run, pixels)
    patches.image_cards(list(heatmaps.side_by_side(pixels, explanation)), width=2 * 192 + 4, captions=[
        f"{p.name[:28]} · {score_text(p)} · centre focus {heatmaps.focus_text(focus)}"
        for p, focus in zip(shown, explanation.centre_focus)])
    heatmaps.colour_legend("tumour", width=520)
    st.caption(f"Each patch beside its heat map: {explanation.method} at {explanation.layer} "
               f"({explanation.resolution}×{explanation.resolution}), evidence for tumour. "
               + heatmaps.CENTRE_FOCUS_NOTE + " The Explain page offers other methods and layers for patches of a dataset.")
else:
    patches.patch_tiles(pixels, [f"{p.name[:18]} · {score_text(p)}" for p in shown], width=150)
if len(result.scored) > SHOWN:
    st.caption(f"The first {SHOWN} of {len(result.scored)} patches are shown; the table and the CSV hold them all.")
st.caption(notes.CENTRE_NOTE)
pick_col, review_col = st.columns([3, 1], vertical_alignment="bottom")
by_name = {p.name: p for p in result.scored}
picked = by_name[pick_col.selectbox("Review a patch", list(by_name), key="review_upload",
                                    help=f"Reviews of uploaded patches are filed under the data name '{reviews.UPLOADS_SOURCE}', "
                                         "by the SHA-1 of their pixels (Kaggle's file name for the same patch).")]
with review_col:
    reviews.review_widget(ctx.workspace.reviews(), ReviewTarget(reviews.UPLOADS_SOURCE, patch_id=patch_id(picked.pixels)),
                          ModelCall.at(picked.probability, threshold, None if ctx.bundled else run.run_id), key="predict", compact=True)
downloads = st.container(horizontal=True)
downloads.download_button("Download results (CSV)", table.to_csv(index=False), file_name=f"results-{run.run_id}.csv",
                          mime="text/csv", icon=":material/download:", type="primary", on_click="ignore", key="results_csv",
                          help="Every scored file: id, tumour probability (and the calibrated one), uncertainty, the call "
                               "at the threshold or by triage, and the threshold(s), model and run that made it; every "
                               f"refused file as a row with the call '{REFUSED}' and the reason in its notes.")
downloads.download_button("Download Kaggle submission (CSV)", result.submission, file_name="submission.csv", mime="text/csv",
                          icon=":material/download:", on_click="ignore", key="submission_csv",
                          help="Kaggle's format: id (the file name without extension) and label (the tumour probability).")
