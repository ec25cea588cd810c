"""The review widget every page shares (Explain, Predict, the Runs page's error galleries, the Review page,
and slide regions): a verdict, a note and the reviewer's name, saved at once in the workspace's review
database (`pcam_core.workspace.reviews`). The name is typed once in the sidebar and kept for the session."""

from __future__ import annotations

import datetime as _dt

import streamlit as st

from pcam_core.data.overrides import DROP, FLIP
from pcam_core.bundled import BUNDLED
from pcam_core.runs import RunDir, resolve_run
from pcam_core.workspace import Workspace
from pcam_core.workspace.reviews import VERDICTS, ModelCall, ReviewStore, ReviewTarget

from .shell import Context

REVIEWER_KEY = "reviewer"
UPLOADS_SOURCE = "uploads"  # the data name of patches uploaded on the Predict page
VERDICT_LABELS = {
    "agree": "Both right",
    "disagree_label_wrong": "Label wrong",
    "disagree_model_wrong": "Model wrong",
    "artefact": "Artefact",
    "unsure": "Unsure",
}
VERDICT_HELP = ("Both right: the label is right, and so is the model's call. Label wrong: the label is wrong (training with reviewed labels flips it). "
                "Model wrong: the label is right and the model's call is not. Artefact: unusable tissue, folds, blur, "
                "pen (training with reviewed labels drops it). Unsure: cannot tell from the patch.")


def reviewer_input() -> None:
    """The sidebar's "Reviewer" field: the name every review of this session is saved under."""
    st.text_input("Reviewer", key=REVIEWER_KEY, placeholder="your name, to review patches",
                  help="Reviews (Explain, Predict, Runs, Review pages) are saved under this name, one current review "
                       "per patch and reviewer; earlier ones are kept as history.")


def reviewer() -> str:
    """The reviewer's name typed in the sidebar, or "" when none was."""
    return str(st.session_state.get(REVIEWER_KEY) or "").strip()


def data_name(ctx: Context, run: RunDir) -> str:
    """The name reviews of a run's patches are filed under: the data source registered at the run's data
    folder, else that folder. The bundled model's held-out patches are reviewed where their pixels are: in
    the active dataset (`caches.patches_of`)."""
    if resolve_run(run).bundled:
        return ctx.source.name if ctx.source else BUNDLED
    path = run.config().data.path
    return ctx.source_names().get(path, path)


def data_split(run: RunDir, split: str) -> str:
    """The split of the data source a scored split's patch indices point into: the split itself, or for the
    bundled model's held-out patches the active Kaggle folder's `train` split (`caches.patches_of`)."""
    return "train" if resolve_run(run).bundled else split


def review_widget(store: ReviewStore, target: ReviewTarget, model: ModelCall, *, key: str, compact: bool = False) -> int | None:
    """A verdict, a note and a Save button for `target` (a patch, or a slide region:
    `ReviewTarget.slide_region(source, slide_id, x=..., y=...)`), saved at once under the sidebar's
    reviewer name with the model's call. `compact` puts it in a popover. Returns the id of a review
    saved in this run, else None."""
    name = reviewer()
    where = st.popover("Review", icon=":material/rate_review:") if compact else st.container()
    with where:
        if not name:
            st.caption("Type your name under **Reviewer** in the sidebar to review.")
            return None
        try:
            latest = store.latest(target, name)
        except (OSError, ValueError) as err:
            st.error(f"Cannot read the reviews: {err}", icon=":material/error:")
            return None
        if latest:
            st.caption(f"Your current review: **{VERDICT_LABELS[latest['verdict']]}**"
                       + (f", “{latest['note']}”" if latest["note"] else "") + f" ({latest['created_at'][:16].replace('T', ' ')} UTC)."
                       " A new one replaces it; the old one is kept.")
        with st.form(f"review_{key}", clear_on_submit=True, border=not compact):
            verdict = st.segmented_control("Verdict", list(VERDICTS), format_func=VERDICT_LABELS.get, key=f"verdict_{key}",
                                           help=VERDICT_HELP)
            note = st.text_input("Note (optional)", key=f"note_{key}", max_chars=500)
            saved = st.form_submit_button("Save review", icon=":material/save:", type="primary")
        if not saved:
            return None
        if verdict is None:
            st.warning("Choose a verdict first.", icon=":material/warning:")
            return None
        try:
            review_id = store.add_review(target, verdict, name, note=note, model=model)
        except (OSError, ValueError) as err:
            st.error(f"The review was not saved: {err}", icon=":material/error:")
            return None
        st.success(f"Review saved: {VERDICT_LABELS[verdict]}" + (f", “{note.strip()}”" if note.strip() else "") + ".",
                   icon=":material/check:")
        return review_id


def override_counts(store: ReviewStore, sources: list[str]) -> dict[str, int]:
    """Per data source, the current reviews that change a training label (Label wrong, Artefact)."""
    try:
        frame = store.current_reviews(source=sources, verdict=[FLIP, DROP])
    except (OSError, ValueError):
        return dict.fromkeys(sources, 0)
    return {name: int((frame["source"] == name).sum()) for name in sources}


def override_text(counts: dict[str, int]) -> str:
    if len(counts) == 1:
        return f"{next(iter(counts.values()))} overrides"
    return ", ".join(f"{name}: {n}" for name, n in counts.items()) + " overrides"


def export_for_training(workspace: Workspace, source: str) -> str:
    """Export the current reviews of `source` to a new file under the workspace's exports/ (a run started
    later never finds it replaced) and return its path, for `DataConfig.label_overrides`."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    path = workspace.exports_root / f"reviews-{source}-{stamp}.csv"
    workspace.reviews().export_csv(path, source=source)
    return str(path)
