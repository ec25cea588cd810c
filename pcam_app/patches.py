"""Patches drawn as images: tiles with the central region outlined, captioned cards, label names."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import streamlit as st

from pcam_core.workspace.gallery import LABEL_NAMES, outline_centre



def label_name(label: int) -> str:
    return LABEL_NAMES.get(int(label), str(label))


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
