"""A row of patches, each with a link to another page (patch_links.js)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Sequence
from urllib.parse import urlencode

import numpy as np
import streamlit as st
from PIL import Image

from pcam_core.workspace.gallery import outline_centre

from ..sidebar import switch_page


def png_data_url(image: np.ndarray) -> str:
    """An image as a PNG data URL (lossless: what a pathologist sees is the patch's own pixels)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


_PATCH_LINKS_CSS = """
.pcam-patch-links { display: flex; flex-wrap: wrap; gap: 0.5rem; }
.pcam-patch-links figure { margin: 0; text-align: center; }
.pcam-patch-links img { display: block; }
.pcam-patch-links figcaption { font-size: 0.875rem; opacity: 0.6; margin: 0.25rem 0 0.1rem; }
.pcam-patch-links a { font-size: 0.875rem; color: var(--st-primary-color); text-decoration: none; }
.pcam-patch-links a:hover { text-decoration: underline; }
"""
_patch_links = st.components.v2.component(
    "pcam_patch_links", js=(Path(__file__).parent / "patch_links.js").read_text(encoding="utf-8"), css=_PATCH_LINKS_CSS,
    isolate_styles=False)


def _ignore() -> None:
    """A component's trigger is read from its result; registering it needs a callback."""


def patch_cards(pixels: np.ndarray, captions: Sequence[str], page: str, links: Sequence[dict[str, str]], *,
                label: str, key: str, width: int = 192) -> None:
    """Patches in a flowing row, the central region outlined, each captioned and with a link `label` to
    `page` with its own query parameters (for instance the patch to open there). One element draws the
    whole row (a Streamlit image, caption and page link per patch cost a new tab of the Runs page 0.2 s):
    a click on a link switches page in this session, as `st.page_link` does, and its address opens the
    same view in a new tab or from a bookmark. Patches are shown `width` pixels wide, without smoothing
    at whole multiples of their 96 pixels."""
    if not len(pixels):
        return
    url_path = st.Page(page).url_path
    cards = [{"src": png_data_url(tile), "caption": caption, "href": f"{url_path}?{urlencode(query)}"}
             for tile, caption, query in zip(outline_centre(pixels), captions, links)]
    result = _patch_links(key=key, data={"cards": cards, "label": label, "width": width}, on_open_change=_ignore)
    chosen = result.open
    if isinstance(chosen, int) and 0 <= chosen < len(cards):
        switch_page(page, links[chosen])
