"""Overview: what the workspace holds (data sources, splits, class balance, runs by status), where to
start, and adding data: a PCam HDF5 or Kaggle folder by path, or the download of PCam itself."""

import time

import pandas as pd
import streamlit as st

from pcam_app import figures, notes, run_tables, shell
from pcam_app.components.chart import chart
from pcam_app.components.table import sortable_table
from pcam_core.data import DataError
from pcam_core.workspace.gallery import class_balance
from pcam_core.runs.jobs import job_error
from pcam_core.workspace.monitor import STATE_ICONS, format_duration, state_counts
from pcam_core.workspace import DataSource

ctx = shell.context()
workspace = ctx.workspace

st.title(":material/biotech: PCam metastasis detection")
st.markdown(
    "Each patch is a 96×96 pixel tile of an H&E-stained lymph-node section "
    "([PatchCamelyon](https://github.com/basveeling/pcam)). A model reads the patch and gives the "
    "probability that its **central 32×32 region** holds metastatic tumour tissue."
)
if ctx.source is not None:
    notes.synthetic_banner(ctx.source.synthetic, f"The active dataset, {ctx.source.name}, is SYNTHETIC demo data: not real tissue.")

st.subheader("Where to start")
steps = st.columns(4)
links = [
    ("pages/dataset.py", "Browse patches", ":material/grid_view:", "Look at tumour and normal patches, slide by slide."),
    ("pages/train.py", "Train a model", ":material/model_training:", "Start a run in the background and watch it learn."),
    ("pages/runs.py", "Judge a model", ":material/monitoring:", "ROC, confusion matrix and the most confident errors."),
    ("pages/predict.py", "Score your patches", ":material/upload_file:", "Upload patches and get tumour probabilities."),
]
for column, (path, label, icon, text) in zip(steps, links):
    with column.container(border=True):
        st.page_link(path, label=f"**{label}**", icon=icon)
        st.caption(text)


@st.cache_data(max_entries=32, show_spinner=False)
def _split_counts(path: str, fmt: str, split: str, version: float) -> dict[str, int]:
    return class_balance(DataSource("", path, fmt).open(split).labels)


def source_rows(source: DataSource) -> list[dict]:
    rows = []
    for split in source.splits():
        try:
            counts = _split_counts(source.path, source.format, split, source.version(split))
        except (OSError, ValueError) as err:
            st.error(f"{source.name} / {split}: {err}")
            continue
        labelled = counts["tumour"] + counts["normal"]
        rows.append({"source": source.name, "split": split, "patches": counts["patches"], "tumour": counts["tumour"],
                     "normal": counts["normal"], "unlabelled": counts["unlabelled"],
                     "tumour share": 100 * counts["tumour"] / labelled if labelled else None})
    return rows


st.subheader("Data sources")
if not ctx.sources:
    st.info("No data source is registered. Add a folder below, or download PCam.", icon=":material/database:")
left, right = st.columns([3, 2], gap="large")
with left:
    for source in ctx.sources:
        with st.container(border=True):
            head, badge = st.columns([4, 1])
            head.markdown(f"**{source.name}** · {source.kind}  \n`{source.path}`")
            if source.synthetic:
                badge.badge("SYNTHETIC", color="orange", icon=":material/science:")
            if not source.exists():
                st.error("This folder no longer exists. Restore it, or remove the source below.")
                continue
            rows = source_rows(source)
            if rows:
                sortable_table(pd.DataFrame(rows).drop(columns=["source"]),
                               {name: "{:,}" for name in ("patches", "tumour", "normal", "unlabelled")}
                               | {"tumour share": "{:.1f} %"}, key=f"splits_{source.name}", caption=f"Splits of {source.name}")
with right:
    active_rows = source_rows(ctx.source) if ctx.source and ctx.source.exists() else []
    if active_rows:
        chart(figures.balance_figure(pd.DataFrame(active_rows)), key="balance")
        st.caption(f"Class balance of the active dataset, **{ctx.source.name}**. PCam is balanced by design "
                   "(about half of the patches are tumour); real slides hold far less tumour than that.")

st.subheader("Runs")
counts = state_counts(ctx.runs)
if not ctx.runs:
    st.info("No training run yet. Start one on the Train page: on the demo data a few epochs take a few minutes on a CPU.",
            icon=":material/model_training:")
else:
    cols = st.columns(max(1, len(counts)))
    for column, (state, n) in zip(cols, sorted(counts.items())):
        column.metric(f"{STATE_ICONS.get(state, '')} {state}", n)
    run_tables.recent_runs_table(ctx.runs, ctx.source_names())

st.subheader("Add data")
add, download = st.tabs(["Register a folder", "Download PCam"])
with add:
    st.markdown(
        "Point the app at data already on this machine; it is read where it is, never copied.\n"
        "- **PCam HDF5**: a folder with `camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5` "
        "(and optionally the `_meta.csv` files with slide ids).\n"
        "- **Kaggle** *Histopathologic Cancer Detection*: a folder with `train/<id>.tif`, `train_labels.csv` "
        "and optionally `test/`."
    )
    with st.form("add_source", border=False):
        path = st.text_input("Folder path", placeholder="/data/pcam")
        name = st.text_input("Name (optional)", placeholder="defaults to the folder name")
        submitted = st.form_submit_button("Add data source", type="primary", icon=":material/add:")
    if submitted:
        try:
            with st.spinner("Checking the folder..."):
                added = workspace.add_source(path, name or None)
        except (FileNotFoundError, DataError, ValueError) as err:
            st.error(f"Not added: {err}", icon=":material/error:")
        else:
            st.session_state["_select_dataset"] = added.name
            st.toast(f"Added {added.name} ({added.kind}, splits: {', '.join(added.splits())}); it is now the active dataset.",
                     icon=":material/check_circle:")
            st.rerun()
    if ctx.sources:
        with st.expander("Remove a data source"):
            st.caption("Removing forgets the source; its files stay where they are.")
            gone = st.selectbox("Source", [s.name for s in ctx.sources], key="remove_source")
            if st.button("Remove", icon=":material/delete:"):
                workspace.remove_source(gone)
                st.rerun()

with download:
    st.markdown(
        f"Download the real PatchCamelyon files from Zenodo (record 2546921; about 7.5 GB compressed, 9 GB on disk) "
        f"into `{workspace.download_dest}`. The download runs in the background, resumes where it stopped, checks "
        "every file's MD5, and the data source is added when it completes. From a terminal: "
        f"`pcam download --dest {workspace.download_dest}`."
    )

    def download_panel(polling: bool) -> None:
        status = workspace.download_status()
        if polling and not (status and status.active):
            st.rerun()  # the download ended: draw the whole page again, without polling
        if status is not None and status.state == "finished":
            try:
                added = workspace.register_download()
            except (OSError, ValueError) as err:
                st.error(f"Downloaded, but the files could not be registered: {err}")
                return
            if added is not None:
                st.session_state["_select_dataset"] = added.name
                st.rerun()
            st.success("PCam is downloaded and registered.", icon=":material/check_circle:")
            return
        if status is not None and status.active:
            fraction = workspace.download_progress()
            st.progress(fraction, text=f"Downloading PCam: {fraction:.0%} on disk after "
                                       f"{format_duration(time.time() - status.started_at)}")
            return
        if status is not None:
            st.error(f"The last download failed: {job_error(status)}. Starting it again resumes it.", icon=":material/error:")
        if st.button("Download PCam", icon=":material/download:"):
            try:
                workspace.start_download()
            except (OSError, RuntimeError, ValueError) as err:
                st.error(f"Could not start the download: {err}")
            else:
                st.rerun()

    downloading = bool((current := workspace.download_status()) and current.active)
    st.fragment(download_panel, run_every=5 if downloading else None)(downloading)  # polls only while one runs
