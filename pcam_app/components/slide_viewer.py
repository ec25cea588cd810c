"""A whole slide in OpenSeadragon with its tumour map, tissue mask, regions and a scale bar (slide_viewer.js).

OpenSeadragon (BSD-3-Clause, static/openseadragon/LICENSE.txt) is the npm package's minified build with its
button images, served from static/ as the charts' plotly.js bundle is; the tiles and overlays come from the
dashboard's own server (pcam_app/slide_routes.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

import streamlit as st

from pcam_core.evaluation.overlay import MATCHES
from pcam_core.explain import colour_stops
from pcam_core.slides.viewer import COLOUR_SCALE

from ..slide_routes import PREFIX

OSD_DIR = "openseadragon"
# the truth overlay's colours: lesions found / regions on them green, misses red, false alarms amber, ITC grey
TRUTH_COLOURS = {"found": "#00c853", "miss": "#ff1744", "true_positive": "#00c853", "false_alarm": "#ffab00", "itc": "#b0bec5"}
_CSS = """
.pcam-slide-controls { display: flex; flex-wrap: wrap; gap: 0.4rem 1.2rem; align-items: center; font-size: 0.875rem;
  margin-bottom: 0.4rem; }
.pcam-slide-controls label { display: inline-flex; align-items: center; gap: 0.3rem; }
.pcam-slide-controls input[type=range] { width: 7rem; accent-color: var(--st-primary-color); }
.pcam-slide-legend { display: inline-flex; align-items: center; gap: 0.3rem; }
.pcam-slide-legend i { display: inline-block; width: 8rem; height: 0.8rem; border-radius: 2px; }
.pcam-truth-legend { display: inline-flex; flex-wrap: wrap; gap: 0.2rem 0.9rem; font-size: 0.8rem; }
.pcam-truth-legend span { display: inline-flex; align-items: center; gap: 0.3rem; }
.pcam-truth-legend i { display: inline-block; width: 1.4rem; }
.pcam-slide-view { position: relative; width: 100%; background: #f3f0f4; border-radius: 0.5rem; overflow: hidden; }
.pcam-scalebar { position: absolute; left: 12px; bottom: 12px; z-index: 3; border: 2px solid #111; border-top: none;
  background: rgba(255,255,255,0.8); font-size: 12px; text-align: center; padding: 0 2px; pointer-events: none; }
"""
_viewer = st.components.v2.component(
    "pcam_slide_viewer", js=(Path(__file__).parent / "slide_viewer.js").read_text(encoding="utf-8"), css=_CSS,
    isolate_styles=False)


def _ignore() -> None:
    """A component's trigger is read from its result; registering it needs a callback."""


def slide_viewer(slide_id: str, *, width: int, height: int, mpp: float, analysis: str | None, heatmap: dict[str, float] | None,
                 tissue: dict[str, float] | None, threshold: float, regions: Sequence[dict[str, Any]],
                 goto: dict[str, Any] | None = None, marker: Sequence[float] | None = None, key: str,
                 version: str = "", analysis_version: str = "", view_height: int = 620,
                 truth: dict[str, Any] | None = None) -> dict[str, int] | None:
    """Draw slide `slide_id` (in the slide library, `width` x `height` level-0 pixels at `mpp` µm/px, `version`
    its `SlideEntry.version`); `analysis` is the run key of the analysis shown (`analysis_version` its
    `AnalysisFolder.version`: both go in the tiles' and overlays' URLs, so a browser never shows a stale
    one), `heatmap` and `tissue` its overlays' level-0 extents ({"width", "height"}) or None; `goto` ({"bbox", "nonce"}) pans
    to a box once per nonce; `marker` (x, y, size) outlines a window; `truth` (`evaluation.overlay.truth_overlay`'s
    GeoJSON) draws the annotated lesions and colours the regions by how they match, with a legend. Returns the
    level-0 point clicked in this run ({"x", "y"}), else None."""
    base = f"{PREFIX.lstrip('/')}/{slide_id}"
    data = {
        "src": f"app/static/{OSD_DIR}/openseadragon.min.js", "prefix": f"app/static/{OSD_DIR}/images/",
        "dzi": f"{base}.dzi?v={quote(version)}", "width": width, "height": height, "mpp": mpp, "threshold": threshold,
        "heatmap": {"url": f"{base}/{analysis}/heatmap.png?v={quote(analysis_version)}", **heatmap} if heatmap and analysis else None,
        "tissue": {"url": f"{base}/{analysis}/tissue.png?v={quote(analysis_version)}", **tissue} if tissue and analysis else None,
        "stops": colour_stops(COLOUR_SCALE), "regions": list(regions), "goto": goto,
        "marker": list(marker) if marker else None, "view_height": view_height,
        "truth": {"features": truth["features"], "colours": TRUTH_COLOURS, "words": MATCHES} if truth else None,
    }
    result = _viewer(key=key, data=data, on_click_change=_ignore)
    point = result.click
    return point if isinstance(point, dict) and {"x", "y"} <= point.keys() else None
