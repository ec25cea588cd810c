"""The PCam dashboard: `streamlit run streamlit_app.py` (workspace: $PCAM_WORKSPACE, default ./workspace).

This file is the app shell: it sets up the page, the workspace (a first start generates the synthetic
demo data), the navigation over the files in `pages/` and the sidebar every page shares; the pages
draw what `pcam_core` computes. When a request reaches a page file without this shell (Streamlit does
that once per server start, see `pcam_app/shell.py`), the page runs this shell in its place.

`streamlit run` first imports this file as a module, finds `app` (an `st.App` serving this same file)
and serves it; every session then runs the file as its script (`__main__`). That import is where the
server loads the heavy libraries, before any visitor waits for them.
"""

import os

# Before anything imports torch: OpenMP threads that spin while they wait make every small torch call
# 10-50x slower when another process (a training run) shares the cores (pcam_core.runs.launch sets the
# same for the training processes it starts).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gc  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import streamlit as st  # noqa: E402

APP_DIR = str(Path(__file__).resolve().parent)
if APP_DIR not in sys.path:  # `streamlit run` puts the app's folder on the path; AppTest does not
    sys.path.insert(0, APP_DIR)

# Imported by `streamlit run` (below), the app's cache decorators run before Streamlit's runtime exists, and
# Streamlit warns that it checks them against a stand-in ("No runtime found, using
# MemoryCacheStorageManager"): the caches themselves are made in script runs, with the runtime's storage.
_cache_log = logging.getLogger("streamlit.runtime.caching.cache_data_api")
_cache_log_level = _cache_log.level
if __name__ != "__main__":
    _cache_log.setLevel(logging.ERROR)

from pcam_app import shell, sidebar  # noqa: E402  (needs the path above)

if __name__ == "__main__":  # a script run (every session's): the shell
    st.set_page_config(page_title="PCam metastasis detection", page_icon=shell.favicon(), layout="wide",
                       menu_items={"About": "pcam_core: metastasis detection on PatchCamelyon patches. Research use only; "
                                            "not a medical device."})

    workspace = shell.open_workspace()
    ready = workspace.initialised()
    page = st.navigation([
        st.Page("pages/overview.py", title="Overview", icon=":material/home:", default=True),
        st.Page("pages/dataset.py", title="Dataset", icon=":material/grid_view:"),
        st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
        st.Page("pages/runs.py", title="Runs and metrics", icon=":material/monitoring:"),
        st.Page("pages/explain.py", title="Explain", icon=":material/center_focus_strong:"),
        st.Page("pages/predict.py", title="Predict", icon=":material/upload_file:"),
        st.Page("pages/slides.py", title="Slides", icon=":material/biotech:"),
        st.Page("pages/review.py", title="Review", icon=":material/rate_review:"),
    ], position="sidebar" if ready else "hidden")  # no page to open while the demo data is being generated
    if not ready:
        shell.first_start(workspace)
    sidebar.sidebar(workspace, page=page)
    shell.run_page(page)
else:
    # `streamlit run streamlit_app.py` imports this file once to look for an app object, and serves the one
    # it finds: this file as the script. So the server imports torch and the app (above) and what the
    # Runs and Explain pages need first (scikit-learn; the grad-cam package, which imports torchvision)
    # when it starts, not when the first visitor opens a page (4-6 s more on the first page otherwise).
    import pytorch_grad_cam  # noqa: F401  (pcam_core.explain imports it only when a map is made)
    import sklearn.metrics  # noqa: F401

    from pcam_app import heatmaps  # noqa: F401
    from pcam_app.slide_routes import routes as slide_routes

    _cache_log.setLevel(_cache_log_level)
    # Streamlit runs a full garbage collection after every script run (`runner.postScriptGC`): every page
    # view, widget change and live-view refresh. Over the half a million objects these libraries bring
    # that took 0.3-0.4 s of the server's GIL each time, most of it after the page's last element was
    # sent. They live as long as the server, so they are moved out of the collector's sight here, once;
    # what sessions create later is still collected as before.
    gc.collect()
    gc.freeze()
    # The slide viewer's Deep Zoom tiles and overlays are served by this same server (pcam_app/slide_routes.py).
    app = st.App(__file__, routes=slide_routes())
