"""The dashboard's drawing helpers, shared by `streamlit_app.py` and the pages in `pages/` (kept out of
`pages/`, where Streamlit would list every file as a page of its own)."""

import os

# As at the top of streamlit_app.py, and here too because the first request of a server process for a
# page's URL runs that page before the shell (see shell.py): OpenMP threads must wait passively, or every
# small torch call gets 10-50x slower while a training run shares the cores. It has to be set before
# torch is first imported, and every page imports this package first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
