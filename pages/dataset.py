"""Dataset: a paged grid of patches of the active source, filtered by split, label and slide, one patch
enlarged with its id, label and metadata; class balance and per-class colour statistics. Only the
pixels on screen are read, so a 262,144-patch split is as quick as a small one."""

import hashlib

import streamlit as st

from pcam_app import caches, figures, notes, patches, shell
from pcam_app.components.chart import chart
from pcam_core.workspace.gallery import class_balance, page_count, page_items, select_indices, slide_ids

ctx = shell.context()
source = shell.require_source(ctx)

st.title("Dataset")
st.caption(f"**{source.name}** · {source.kind} · `{source.path}`")
notes.synthetic_banner(source.synthetic, f"{source.name} is SYNTHETIC demo data, not real tissue.")

splits = source.splits()
if not splits:
    shell.fail(f"{source.path} holds no split any more; was the folder emptied?")
LABEL_FILTERS = {"all": None, "tumour": 1, "normal": 0}

filters = st.columns([1.4, 1.6, 3], vertical_alignment="bottom")
split = filters[0].segmented_control("Split", splits, default="train" if "train" in splits else splits[0], required=True,
                                     key="ds_split", persist_state="session")
dataset = caches.open_split(source, split)
labelled = dataset.has_labels
label_choice = filters[1].segmented_control("Label", list(LABEL_FILTERS), default="all", required=True, key="ds_label",
                                            disabled=not labelled, persist_state="session",
                                            help=None if labelled else "This split has no labels.")
slides = slide_ids(dataset)
slide = None
if slides is not None:
    slide_options = ["all slides", *sorted(set(slides.tolist()))]
    picked = filters[2].selectbox("Slide", slide_options, key="ds_slide", persist_state="session",
                                  help="Patches of one whole-slide image (from the split's metadata file).")
    slide = None if picked == "all slides" else picked
else:
    filters[2].selectbox("Slide", ["no slide metadata"], disabled=True, key="ds_slide_none",
                         help="Slide ids come from the PCam `_meta.csv` files; this split has none.")

label = LABEL_FILTERS[label_choice] if labelled else None
try:
    indices = select_indices(dataset.labels, label=label, slides=slides, slide=slide)
except ValueError as err:
    shell.fail(str(err))

grid, detail = st.columns([3, 1], gap="large")
with grid:
    pager, box_col, size_col = st.columns([3.6, 1.3, 1.4], vertical_alignment="bottom")
    box = box_col.toggle("Centre box", value=True, key="ds_box", persist_state="session",
                         help="Outline the central 32×32 region the label refers to.")
    per_page = size_col.selectbox("Per page", [24, 48, 96], index=1, key="ds_per_page", persist_state="session",
                                  label_visibility="collapsed", format_func=lambda n: f"{n} per page")
    # one pager per filter, so that a new filter starts at page 1
    pager_key = "ds_page_" + hashlib.sha1(repr((source.name, split, label, slide, per_page)).encode()).hexdigest()[:12]
    if not len(indices):
        st.info("No patch matches these filters.", icon=":material/filter_alt_off:")
    else:
        with pager:
            page = st.pagination(page_count(len(indices), per_page), key=pager_key, max_visible_pages=9)
        shown = page_items(indices, page, per_page)
        what = f"{label_choice} patches" if labelled and label is not None else "patches"
        st.caption(f"Patches {(page - 1) * per_page + 1:,}–{(page - 1) * per_page + len(shown):,} of "
                   f"{len(indices):,} {what}{f' on {slide}' if slide else ''} (of {len(dataset):,} in {split}), "
                   "captioned with their number and label.")
        patches.patch_tiles(dataset.read_pixels(shown), [f"#{i} · {patches.label_name(dataset.labels[i])}" for i in shown],
                            box=box, width=104)
        st.caption(notes.CENTRE_NOTE)

with detail:
    if len(indices):
        chosen = st.selectbox("Enlarge a patch of this page", shown.tolist(), key="ds_zoom",
                              format_func=lambda i: f"#{i} · {patches.label_name(dataset.labels[i])}")
        item = dataset[int(chosen)]
        patches.patch_tiles(item["image"].permute(1, 2, 0).numpy()[None], [f"patch #{chosen}, 4× enlarged"], box=box,
                            width="stretch", scale=4)
        lines = [f"**Label:** {patches.label_name(item['label'])}", f"**Id:** `{item['id']}`"]
        lines += [f"**{key}:** {value}" for key, value in item["meta"].items()]
        st.markdown("  \n".join(lines))
        st.caption("The id is the SHA-1 of the patch's pixels: Kaggle's file name for the same patch. "
                   + ("Metadata from the split's `_meta.csv`." if item["meta"] else ""))

st.divider()
st.subheader(f"The {split} split in numbers")
counts = class_balance(dataset.labels)
numbers = st.columns(4)
numbers[0].metric("Patches", f"{counts['patches']:,}")
numbers[1].metric("Tumour", f"{counts['tumour']:,}")
numbers[2].metric("Normal", f"{counts['normal']:,}")
labelled_n = counts["tumour"] + counts["normal"]
numbers[3].metric("Tumour share", f"{counts['tumour'] / labelled_n:.1%}" if labelled_n else "-")
if slides is not None:
    st.caption(f"{len(set(slides.tolist())):,} slides in this split. Patches of one slide share its stain and its patient, "
               "so the splits of PCam keep each slide in one split only.")

if labelled:
    summary, hist = caches.colour_stats(source, split)
    bars, lines = figures.colour_figures(summary, hist)
    left, right = st.columns(2)
    chart(bars, key="colour_means", where=left)
    chart(lines, key="colour_hist", where=right)
    st.caption(f"Measured on a random sample of at most {int(summary['patches'].max()):,} patches per class, never the "
               "whole split. Tumour cells have large nuclei dense in haematoxylin, so tumour patches tend to be darker "
               "and more purple; a model must not learn stain differences between slides instead.")
