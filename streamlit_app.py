"""The PCam dashboard: `streamlit run streamlit_app.py` (workspace: $PCAM_WORKSPACE, default ./workspace).

The pages in app_pages/ draw what `pcam_core` computes; this file sets up the page, the workspace (a
first start generates the synthetic demo data), the navigation and the sidebar shared by every page.
(The folder is not called pages/: Streamlit would then run its files as pages of their own, by URL,
without this script.)
"""

import sys
from pathlib import Path

import streamlit as st

APP_DIR = str(Path(__file__).resolve().parent)
if APP_DIR not in sys.path:  # `streamlit run` puts the app's folder on the path; AppTest does not
    sys.path.insert(0, APP_DIR)

from app_pages import ui  # noqa: E402  (needs the path above)

st.set_page_config(page_title="PCam metastasis detection", page_icon=":material/biotech:", layout="wide",
                   menu_items={"About": "pcam_core: metastasis detection on PatchCamelyon patches. Research use only; "
                                        "not a medical device."})

workspace = ui.open_workspace()
if not workspace.initialised():
    ui.first_start(workspace)

page = st.navigation([
    st.Page("app_pages/overview.py", title="Overview", icon=":material/home:", default=True),
    st.Page("app_pages/dataset.py", title="Dataset", icon=":material/grid_view:"),
    st.Page("app_pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("app_pages/runs.py", title="Runs and metrics", icon=":material/monitoring:"),
    st.Page("app_pages/predict.py", title="Predict", icon=":material/upload_file:"),
])
ui.sidebar(workspace)
page.run()
