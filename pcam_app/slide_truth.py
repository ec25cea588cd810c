"""The Slides page's truth loader: a pathologist's annotations of the slide shown (a CAMELYON16 mask TIFF, ASAP XML or
QuPath GeoJSON, uploaded or by path), matched with the map's regions by `pcam_core.evaluation.overlay` and handed to
the viewer, which draws the lesions' outlines and colours the regions (true positives, misses, false alarms)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import streamlit as st

from pcam_core.evaluation.overlay import MATCHES, TRUTH_SUFFIXES, read_truth_file, read_truth_upload, truth_overlay


@st.cache_data(max_entries=8, show_spinner=False)
def _overlay(source: tuple[str, str, bytes | None], regions: tuple[tuple[int, str], ...], mpp: float, width: int,
             height: int, version: str) -> dict[str, Any]:
    """The overlay of the truth in `source` ("path" | "upload", its name or path, the upload's bytes) against the
    regions (id, outline as JSON); `version` (the analysis's and the file's) keys the cache."""
    kind, name, data = source
    mask = read_truth_upload(name, data, width, height) if kind == "upload" else read_truth_file(name, width, height)
    shown = [{"id": number, "rings": json.loads(rings)} for number, rings in regions]
    return truth_overlay(mask, shown, mpp=mpp, width=width, height=height)


def truth_loader(slide_id: str, regions: Sequence[dict[str, Any]], *, mpp: float, width: int, height: int,
                 version: str) -> dict[str, Any] | None:
    """An expander to load the slide's truth (kept for the session); returns the overlay to draw, or None."""
    key = f"slide_truth_{slide_id}"
    source = st.session_state.get(key)
    with st.expander("Truth: compare with annotations" + (f" ({source[1]})" if source else ""), icon=":material/rule_settings:"):
        st.caption("A pathologist's annotations of this slide: a CAMELYON16 mask TIFF (tumour = 255), ASAP XML (groups "
                   "Tumor/_0/_1, Exclusion/_2) or a QuPath GeoJSON export (Tumor, Exclusion). Lesions are matched with the "
                   "map's regions as CAMELYON16's FROC matches detections (docs/evaluation.md).")
        upload = st.file_uploader("Upload a truth file", type=[s.lstrip(".") for s in TRUTH_SUFFIXES], key=f"{key}_upload")
        path = st.text_input("or its path on the server", key=f"{key}_path", placeholder="/data/truth/slide_mask.tif")
        left, right = st.columns(2)
        if left.button("Load truth", key=f"{key}_load", icon=":material/upload_file:"):
            if upload is not None:
                st.session_state[key] = source = ("upload", upload.name, upload.getvalue())
            elif path.strip():
                st.session_state[key] = source = ("path", os.path.expanduser(path.strip()), None)
            else:
                st.warning("Choose a file to upload or give its path first.")
        if source and right.button("Clear truth", key=f"{key}_clear", icon=":material/close:"):
            st.session_state.pop(key, None)
            source = None
        if source is None:
            return None
        stamp = version
        if source[0] == "path" and Path(source[1]).is_file():
            stamp += f"/{Path(source[1]).stat().st_mtime_ns}"
        try:
            overlay = _overlay(source, tuple((int(r["id"]), json.dumps(r["rings"])) for r in regions), mpp, width, height, stamp)
        except (OSError, ValueError) as err:
            st.error(f"Cannot read the truth from {source[1]}: {err}")
            return None
        counts = overlay["counts"]
        lesions = counts["found"] + counts["miss"]
        st.success(f"Truth from {source[1]}: {counts['found']} of {lesions} lesion(s) found, {counts['miss']} missed; "
                   f"{counts['true_positive']} region(s) on a lesion, {counts['false_alarm']} false alarm(s); "
                   f"{sum(f['properties']['kind'] == 'lesion' and f['properties']['match'] == 'itc' for f in overlay['features'])} "
                   "ITC lesion(s), counted neither way.")
        st.caption("In the viewer: " + "; ".join(MATCHES.values()) + ". Lesions dashed, regions solid. The rule: "
                   + overlay["rule"] + ".")
    return overlay
