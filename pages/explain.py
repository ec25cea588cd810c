"""Explain: where the evidence for the model's call lies in a patch, as a heat map (Grad-CAM and its
relatives, `pcam_core.explain`) over the patch, with its centre focus. One patch at a time (chosen by
outcome, by number or id, or at random) beside its overlay, or a gallery sorted by centre focus, the
predictions resting most on tissue outside the labelled centre first. The patches come from a scored
split of the selected run: its validation split (scored by the trainer), or another one scored on
the Runs page. The bundled model has no split of its own here: its patches are uploaded."""

from pathlib import Path

import numpy as np
import streamlit as st

from pcam_app import caches, heatmaps, notes, patches, reviews, shell, thresholds
from pcam_core import decision
from pcam_core.calibration import load_calibration
from pcam_core.uploads import read_uploads
from pcam_core.workspace.reviews import ModelCall, ReviewTarget
from pcam_core.explain import (
    CLASS_AGNOSTIC,
    METHOD_NOTES,
    METHODS,
    SCALE_NOTES,
    SCALES,
    TARGETS,
    layer_choices,
    layer_note,
    map_meaning,
    overlay,
    png_bytes,
    rank_by_focus,
    scaled_maps,
)
from pcam_core.workspace.gallery import (
    ORDERS,
    OUTCOMES,
    find_patch,
    outcome_counts,
    outcome_examples,
    outcome_of,
    outline_centre,
    random_examples,
)

VIEWS = {"patch": "One patch", "gallery": "Gallery"}
SCALE_BUTTONS = {"patch": "Per patch", "fixed": "Fixed"}  # short: two buttons in a quarter of the page at 1400 px
PICKS = {"outcome": "By outcome", "number": "By number or id", "random": "At random"}
GALLERY_SOURCES = {"random": "patches drawn at random", **OUTCOMES}
LAYER_HELP = "Deeper layers see more context in coarser cells; the caption below says what this one can show."
REFERENCE_PATCHES = 24  # a single patch on the fixed scale is compared with this many patches of its split
UPLOADS_SHOWN = 48  # uploaded patches explained at once (a few hundredths of a second each)

ctx = shell.context()
st.title("Explain")
run = shell.require_run(ctx, checkpoint=True)
notes.synthetic_banner(ctx.run_synthetic(run), "This run was trained on SYNTHETIC demo data: its heat maps say nothing about real tissue.")
if ctx.bundled:
    shell.bundled_note()
st.caption("The heat map shows which parts of the patch drove the model's score, computed from the model's own layers "
           "(a class activation map). It shows what the model used, not where the tumour is. The box marks the central "
           "32×32 pixels, the region the label describes (green on the patch, white on the heat map).")

if ctx.bundled:
    view = "upload"
else:
    splits = shell.require_scored_splits(run)

    # A link from another page names a patch (?patch=123): open it. The gallery's "Open it" sets these too.
    st.session_state.setdefault("view", "patch")
    st.session_state.setdefault("pick", "number" if st.query_params.get("patch") else "outcome")
    top = st.columns([1.2, 1.6, 2.2], vertical_alignment="bottom")
    view = top[0].segmented_control("Show", list(VIEWS), format_func=VIEWS.get, required=True, key="view")
    split = top[1].segmented_control("Patches of the split", splits, default=splits[0], required=True, key="split",
                                     bind="query-params",
                                     help="The validation split is scored by the trainer; score others on the Runs page to explain them.")
    try:
        predictions = caches.split_predictions(run, split)
    except (OSError, ValueError) as err:
        shell.fail(str(err))
    if predictions is None or predictions.empty:
        shell.fail(f"The {split} predictions of run {run.run_id} are missing or out of date; score the split again on the Runs page.")
    dataset = caches.run_split(run, split)

model_name = heatmaps.model_name(run)
layers = layer_choices(model_name)
if st.session_state.get("layer") not in layers:  # another run's model has other layers
    st.session_state.pop("layer", None)
settings = st.columns([1.2, 1.2, 1.1, 1.3], vertical_alignment="top")
method = settings[0].selectbox("Method", list(METHODS), key="method", bind="query-params")
settings[0].caption(METHOD_NOTES[method])
layer = settings[1].selectbox("Layer", list(layers), format_func=lambda path: layers[path] + (" (default)" if path == next(iter(layers)) else ""),
                              key="layer", help=LAYER_HELP)
settings[1].caption(layer_note(model_name, layer))
target = settings[2].segmented_control("Evidence for", list(TARGETS), default="tumour", required=True, key="target",
                                       bind="query-params", disabled=method in CLASS_AGNOSTIC,
                                       help="Explain the score for tumour, or for normal tissue."
                                            + (f" {method} ignores it: its map is class-agnostic." if method in CLASS_AGNOSTIC else ""))
opacity = settings[3].slider("Heat map opacity", 0.0, 1.0, 0.5, 0.05, key="opacity",
                             help="0 shows the tissue alone, 1 the heat map alone.")
scale = settings[3].segmented_control("Scale", list(SCALES), format_func=SCALE_BUTTONS.get, default="patch", required=True,
                                      key="map_scale", help=f"Per patch: {SCALE_NOTES['patch']}\n\nFixed ({SCALES['fixed']}): "
                                                             f"{SCALE_NOTES['fixed']}")
meaning = map_meaning(method, target)
if method == "scorecam":
    st.warning("Score-CAM runs the model once per channel of the layer: a gallery can take a while on a CPU.",
               icon=":material/hourglass_top:")
st.divider()


def open_patch(index: int) -> None:
    """From the gallery to one patch (a callback: it runs before the widgets it sets are drawn)."""
    st.session_state.update(view="patch", pick="number", patch=str(index))


def patch_view() -> None:
    pick_col, threshold_col = st.columns([3, 1.3], vertical_alignment="bottom")
    pick = pick_col.segmented_control("Choose a patch", list(PICKS), format_func=PICKS.get, required=True, key="pick")
    threshold = thresholds.slider(threshold_col, run, key="explain_threshold",
                                  help="Sorts patches into true and false positives and negatives.")
    if pick == "outcome":
        counts = outcome_counts(predictions, threshold)
        left, right = st.columns(2)
        first = next((i for i, name in enumerate(OUTCOMES) if counts[name]), 0)  # errors first, when there are any
        outcome = left.selectbox("Outcome", list(OUTCOMES), index=first, key="outcome",
                                 format_func=lambda o: f"{OUTCOMES[o][0].upper()}{OUTCOMES[o][1:]}: {counts[o]:,}")
        rows = outcome_examples(predictions, threshold, outcome, k=200)
        if rows.empty:
            st.info(f"No {OUTCOMES[outcome].split(' (')[0]} at the threshold {thresholds.text(threshold)}.", icon=":material/filter_alt_off:")
            return
        scores = dict(zip(rows["index"], rows["probability"]))
        chosen = right.selectbox("Patch (the most confident first)", list(scores), key="outcome_patch",
                                 format_func=lambda i: f"#{i} · {patches.probability_text(scores[i])}")
        row = rows[rows["index"] == chosen].iloc[0]
    elif pick == "number":
        query = st.text_input("Patch number or id", key="patch", bind="query-params",
                              placeholder=f"a number from 0 to {len(dataset) - 1}, or the first characters of an id")
        if not query.strip():
            st.info("Type a patch number (as captioned on the Dataset and Runs pages) or a patch id.", icon=":material/search:")
            return
        try:
            row = find_patch(predictions, query)
        except ValueError as err:
            shell.fail(f"Patch {query!r}: {err}")
    else:
        if st.button("Another random patch", icon=":material/shuffle:"):
            st.session_state["explain_seed"] = st.session_state.get("explain_seed", 0) + 1
        row = random_examples(predictions, 1, seed=st.session_state.get("explain_seed", 0)).iloc[0]

    index, label = int(row["index"]), int(row["label"])
    pixels = dataset.read_pixels(np.array([index]))
    result = heatmaps.explain(run, pixels, method=method, layer=layer, target=target)
    # the probability of the split's scores (the one the Runs page, its outcomes and the gallery show): one figure
    probability, focus = float(row["probability"]), float(result.centre_focus[0])
    scale_note = SCALE_NOTES[scale]
    if scale == "fixed":  # one patch: on the scale of patches of its split drawn at random
        sample = dataset.read_pixels(np.sort(random_examples(predictions, REFERENCE_PATCHES, seed=0)["index"].to_numpy()))
        reference = heatmaps.explain(run, sample, method=method, layer=layer, target=target)
        maps = scaled_maps(result, "fixed", peak=float(reference.peaks.max()))
        scale_note = (f"One scale for this patch and {len(sample)} patches of the {split} split drawn at random, from 0 "
                      "to the strongest point among them: a patch with little evidence stays blue.")
    else:
        maps = scaled_maps(result, "patch")
    picture = overlay(pixels[0], maps[0], opacity=opacity, scale=4, box_width=3)
    images, facts = st.columns([2, 1.1], gap="medium")
    with images:
        plain, heat = st.columns(2)
        plain.image(outline_centre(pixels[0], scale=4, width=3), width="stretch",
                    caption=f"Patch #{index} of {split}, label {patches.label_name(label)} (4× enlarged)")
        heat.image(picture, width="stretch", caption=f"{method} at {layers[layer]}, {meaning}, scale {SCALES[scale]}")
        heatmaps.colour_legend(target, method=method, note=scale_note)
    with facts:
        inside = caches.in_scope(run, pixels)
        call = decision.call(probability, threshold) if inside is None or inside[0] else decision.REFER
        if inside is not None and not inside[0]:
            st.error("Out of scope: this patch is unlike the lymph-node H&E the model was trained on, so its call is "
                     "**refer**, whatever its probability (docs/scope.md).", icon=":material/block:")
        outcome_name = (outcome_of(label, probability, threshold) or "unlabelled").replace("_", " ")
        numbers = st.columns(2)
        numbers[0].metric("Tumour probability", patches.probability_value(probability),
                          help=f"As the {split} split was scored. " + notes.PROBABILITY_NOTE)
        empty_map = focus != focus  # NaN: the map has no evidence anywhere
        numbers[1].metric("Centre focus", "none" if empty_map else heatmaps.focus_text(focus), help=heatmaps.CENTRE_FOCUS_NOTE)
        if empty_map:
            st.caption(f"Centre focus none: the heat map is empty (no evidence for {target} at this layer).")
        if run.is_cross_validation and split == "valid":  # the pool: out-of-fold scores, a map of members that trained on it
            st.caption("Out-of-fold: the probability is that of the one fold run that did not train on this patch; the "
                       "heat map is the ensemble's (the mean of every fold's map), and all the other folds trained on it.")
        st.markdown(f"**Label:** {patches.label_name(label)} · **call at {thresholds.text(threshold)}:** {call} ({outcome_name})")
        trust_facts(row)
        st.caption(heatmaps.CENTRE_FOCUS_NOTE)
        st.download_button("Download the overlay (PNG)", lambda: png_bytes(picture), icon=":material/download:",
                           file_name=f"patch-{index}-{method}-{layer}-{target}.png", mime="image/png", on_click="ignore")
        st.caption(f"Id `{row['id']}`")
        reviews.review_widget(ctx.workspace.reviews(), ReviewTarget(reviews.data_name(ctx, run), patch_id=str(row["id"]), split=split,
                                                                    index=index),
                              ModelCall(probability, call, threshold, run.run_id), key="explain")


def trust_facts(row) -> None:
    """The calibrated probability and the TTA uncertainty of a patch of the scored split, when known."""
    facts = []
    calibration = load_calibration(run.path)
    if calibration is not None:
        calibrated = float(calibration.apply(np.array([row["probability"]]))[0])
        facts.append(f"**calibrated probability** {patches.probability_value(calibrated)} ({calibration.describe})")
    uncertainty = row.get("uncertainty")
    if uncertainty is not None and uncertainty == uncertainty:
        facts.append(f"**uncertainty** ±{float(uncertainty):.3f} (spread of the 8 flipped and rotated views)")
    if facts:
        st.markdown(" · ".join(facts))
    if calibration is not None and calibration.warning:
        st.warning(calibration.warning, icon=":material/warning:")


def gallery_view() -> None:
    source_col, threshold_col, count_col = st.columns([2, 1.3, 1], vertical_alignment="bottom")
    source = source_col.selectbox("Patches", list(GALLERY_SOURCES), key="gallery_source",
                                  format_func=lambda s: f"{GALLERY_SOURCES[s][0].upper()}{GALLERY_SOURCES[s][1:]}")
    threshold = thresholds.slider(threshold_col, run, key="gallery_threshold", disabled=source == "random",
                                  help="Sorts patches into true and false positives and negatives.")
    count = count_col.selectbox("How many", [12, 24, 48], index=1, key="gallery_count",
                                help="The most confident of the outcome; computing a map takes a few hundredths of a second each.")
    order = "confidence"
    if source != "random" and "uncertainty" in predictions.columns and predictions["uncertainty"].notna().any():
        order = st.segmented_control("Choose", list(ORDERS), format_func=ORDERS.get, default="confidence", required=True,
                                     key="gallery_order")
    if source == "random":
        rows = random_examples(predictions, count, seed=st.session_state.get("explain_seed", 0))
    else:
        rows = outcome_examples(predictions, threshold, source, k=count, order=order)
    if rows.empty:
        st.info(f"No {GALLERY_SOURCES[source].split(' (')[0]} at the threshold {thresholds.text(threshold)}.", icon=":material/filter_alt_off:")
        return
    rows = rows.sort_values("index")  # the file reads sorted indices fastest
    indices = rows["index"].to_numpy()
    pixels = dataset.read_pixels(indices)
    result = heatmaps.explain(run, pixels, method=method, layer=layer, target=target)
    order = rank_by_focus(result.centre_focus)
    tiles = overlay(pixels[order], scaled_maps(result, scale)[order], opacity=opacity, scale=2, box_width=2)
    labels = rows["label"].to_numpy()
    probabilities = rows["probability"].to_numpy()  # the scores that sorted the patches into outcomes, not the map's pass
    st.caption(f"{len(rows)} {GALLERY_SOURCES[source]}, sorted by centre focus, **lowest first**: the first calls rest most "
               f"on tissue outside the labelled centre. Caption: patch number, label, tumour probability, centre focus.")
    if run.is_cross_validation and split == "valid":  # the pool: out-of-fold scores, maps of members that trained on it
        st.caption("Out-of-fold: each probability is that of the one fold run that did not train on the patch; the heat "
                   "maps are the ensemble's (the mean of every fold's map), and all the other folds trained on them.")
    patches.image_cards(list(tiles), width=176, captions=[
        f"#{indices[i]} · {patches.label_name(labels[i])} · {patches.probability_text(probabilities[i])} · focus {heatmaps.focus_text(result.centre_focus[i])}"
        for i in order])
    heatmaps.colour_legend(target, width=520, method=method, note=SCALE_NOTES[scale])
    st.caption(heatmaps.CENTRE_FOCUS_NOTE)
    pick_col, button_col = st.columns([2, 1], vertical_alignment="bottom")
    chosen = pick_col.selectbox("Look at one closely", [int(indices[i]) for i in order], format_func=lambda i: f"#{i}",
                                key="gallery_pick")
    button_col.button("Open it", icon=":material/zoom_in:", on_click=open_patch, args=(chosen,))


def explained_cards(pixels: np.ndarray, names: list[str]) -> None:
    """Patches beside their heat maps with the settings above, captioned with name, probability and centre focus."""
    result = heatmaps.explain(run, pixels, method=method, layer=layer, target=target)
    tiles = overlay(pixels, scaled_maps(result, scale), opacity=opacity, scale=2, box_width=2)
    inside = caches.in_scope(run, pixels)
    patches.image_cards(list(tiles), width=176, captions=[
        f"{name} · {'OUT OF SCOPE · ' if inside is not None and not inside[i] else ''}{patches.probability_text(result.probabilities[i])} · "
        f"focus {heatmaps.focus_text(result.centre_focus[i])}" for i, name in enumerate(names)])
    if inside is not None and not inside.all():
        st.caption("OUT OF SCOPE: unlike the lymph-node H&E the model was trained on; such a patch is referred, "
                   "whatever its probability (docs/scope.md).")
    heatmaps.colour_legend(target, width=520, method=method, note=SCALE_NOTES[scale])


def upload_view() -> None:
    """Uploaded patches beside their heat maps (the bundled model has no split of its own here)."""
    files = st.file_uploader("Patches to explain (96×96 pixel RGB tif, png or jpg)", type=["tif", "tiff", "png", "jpg", "jpeg"],
                             accept_multiple_files=True, key="explain_uploads")
    if not files:
        st.info("Drop one or many patches above to see where the model's evidence lies. Files are kept in memory only.",
                icon=":material/upload_file:")
        return
    accepted, refused = read_uploads([(f.name, f.getvalue()) for f in files])
    for name, reason in refused:
        st.error(f"**{name}** was not explained: {reason}", icon=":material/block:")
    for patch in accepted:
        if patch.notes:
            st.warning(f"**{patch.name}**: {'; '.join(patch.notes)}. Explained after conversion.", icon=":material/transform:")
    shown = accepted[:UPLOADS_SHOWN]
    if not shown:
        return
    explained_cards(np.stack([p.pixels for p in shown]), [p.name[:24] for p in shown])
    if len(accepted) > UPLOADS_SHOWN:
        st.caption(f"The first {UPLOADS_SHOWN} of {len(accepted)} patches are shown.")
    st.caption(f"p: tumour probability ({notes.PROBABILITY_NOTE.split('. ')[0].replace('**', '')}). " + heatmaps.CENTRE_FOCUS_NOTE)


# The Slides page opens a window of a slide here by its address:
# ?window_slide=<slide id>&window_x=<x>&window_y=<y>[&window_stride=<px>]
# with the sidebar's run; (x, y) is the window's top-left in level-0 pixels, the position every face names it by.
SLIDE_QUERY = ("window_slide", "window_x", "window_y")


def slide_window_view() -> None:
    """The window of a slide the address names (from the Slides page), explained with the settings above and
    named as the Slides page names it: the slide, the same position, the map's probability for it."""
    query = st.query_params
    st.subheader("A window from the Slides page")
    try:
        x, y = float(query["window_x"]), float(query["window_y"])
        stride = int(query.get("window_stride", 32))
        window = caches.slide_window(ctx.workspace, run, query["window_slide"], x, y, stride=stride)
    except (KeyError, ValueError, OSError) as err:
        st.error(f"Cannot open the slide window of this address (slide {query.get('window_slide')!r}, x "
                 f"{query.get('window_x')!r}, y {query.get('window_y')!r}): {err}", icon=":material/error:")
        return
    name = f"{Path(window['slide'].name).stem} at ({x:,.0f}, {y:,.0f})"
    score = patches.probability_text(window['probability']) if window["state"] == "scored" else window["state"]  # the map's figure
    result = heatmaps.explain(run, window["pixels"][None], method=method, layer=layer, target=target)
    tiles = overlay(window["pixels"][None], scaled_maps(result, scale), opacity=opacity, scale=2, box_width=2)
    patches.image_cards(list(tiles), width=176, captions=[f"{name} · {score} · focus {heatmaps.focus_text(result.centre_focus[0])}"])
    heatmaps.colour_legend(target, width=520, method=method, note=SCALE_NOTES[scale])
    st.caption(f"The 96-pixel window at PCam scale (0.972 µm/px) the tumour map scored there: ({x:,.0f}, {y:,.0f}) is its "
               f"top-left in level-0 pixels, and p the map's probability for it, as the Slides page shows them (cell "
               f"{window['row']}, {window['col']}).")
    st.divider()


if all(key in st.query_params for key in SLIDE_QUERY):
    slide_window_view()
if view == "upload":
    upload_view()
elif view == "patch":
    patch_view()
else:
    gallery_view()
