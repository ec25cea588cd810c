"""The prose the pages share: what the centre box, the probability and the synthetic data mean; a run's warnings."""

from __future__ import annotations

import streamlit as st

from pcam_core.runs import RunDir

CENTRE_NOTE = (
    "The green box marks the central 32×32 pixels. A patch is labelled **tumour** when that region holds "
    "at least one pixel of metastatic tissue; tumour outside the box does not count, though the model sees "
    "the whole patch as context."
)
PROBABILITY_NOTE = (
    "The **probability** is the model's score, from 0 to 1, that the central 32×32 region holds tumour. "
    "It is not a diagnosis, and it is not a calibrated risk for tissue unlike the training data (another "
    "lab, stain or scanner). The **threshold** turns it into a call: tumour at or above it, normal below."
)
SYNTHETIC_NOTE = (
    "The demo patches are generated to look roughly like H&E: nothing seen or measured on them, nor any "
    "model trained on them, says anything about real pathology."
)


def synthetic_banner(synthetic: bool, headline: str = "SYNTHETIC demo data, not real tissue.") -> None:
    """The warning every view of synthetic data, or of a model trained on it, carries."""
    if synthetic:
        st.warning(f"**{headline}** {SYNTHETIC_NOTE}", icon=":material/science:")


def run_warnings(run: RunDir) -> None:
    """What the run's training warned of (`RunDir.warnings`): above its figures wherever they are drawn."""
    for warning in run.warnings():
        st.warning(warning, icon=":material/warning:")
