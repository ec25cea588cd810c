"""The one numbering of an analysis's tumour regions, used by every file and face that names a region.

Regions are numbered once, by `outputs.tumour_regions`, largest first: #1 is the largest. The number is a
GeoJSON feature's `region` property and its `name` ("tumour region #1", what QuPath shows); the report, the
Slides page, its viewer and the reviews of a region all read it from there. Imports nothing of ours.
"""

from __future__ import annotations

from typing import Any


def region_name(number: int) -> str:
    """A region's name wherever it is shown: in the GeoJSON (QuPath's annotation name), the report, the page."""
    return f"tumour region #{number}"


def region_number(feature: dict[str, Any], position: int) -> int:
    """The number of a GeoJSON feature: its `region` property, else (files written before it existed, largest
    first) its 1-based `position`."""
    return int(feature.get("properties", {}).get("region", position))


__all__ = ["region_name", "region_number"]
