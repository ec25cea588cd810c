"""Patches drawn as images: tiles with the central region outlined, captioned cards, label names and probabilities."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import streamlit as st

from pcam_core.workspace.gallery import LABEL_NAMES, outline_centre



def label_name(label: int) -> str:
    return LABEL_NAMES.get(int(label), str(label))


def probability_value(p: float) -> str:
    """"0.912"; at the ends ">0.999" and "<0.001", never "1.000": a network's score is not a certainty."""
    return ">0.999" if p > 0.9995 else "<0.001" if p < 0.0005 else f"{p:.3f}"


def probability_text(p: float) -> str:
    """A caption's probability: "p=0.912", "p>0.999", "p<0.001"."""
    value = probability_value(p)
    return "p" + value if value[0] in "<>" else "p=" + value


def patch_tiles(pixels: np.ndarray, captions: Sequence[str], *, box: bool = True, width: int | str = 120, scale: int = 2) -> None:
    """A flowing grid of patches, enlarged `scale` times, the central region outlined when `box`."""
    if len(pixels) == 0:
        return
    tiles = outline_centre(pixels, scale=scale, width=scale if box else 0)
    st.image(list(tiles), caption=list(captions), width=width)


def image_cards(images: Sequence[np.ndarray], captions: Sequence[str], *, width: int) -> None:
    """Images in a flowing row with gaps between them, each captioned."""
    with st.container(horizontal=True, gap="small"):
        for image, caption in zip(images, captions):
            with st.container(width=width, gap=None):
                st.image(image, caption=caption, width=width)
