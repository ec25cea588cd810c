"""PCam dashboard entry point: `streamlit run streamlit_app.py`."""

import streamlit as st

st.set_page_config(page_title="PCam metastasis detection", page_icon="🔬", layout="wide")
page = st.navigation([st.Page("pages/overview.py", title="Overview", icon="🏠", default=True)])
page.run()
