"""Overview page (placeholder until the dashboard lands)."""

import streamlit as st

st.title("PCam metastasis detection")
st.write("The dashboard is being built. Use the `pcam` command line meanwhile: `pcam --help`.")
