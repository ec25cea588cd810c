"""The pathologists' reviews of a slide's regions and windows (kept in the workspace's review database,
`workspace.reviews`), joined to what an analysis writes: the regions' GeoJSON with each region's reviews in
its properties and each reviewed window as a feature of its own, and the printable report with them.

A region's review is filed under its number (`slides.outputs.region_number`, #1 the largest, the GeoJSON's
`region` property); a window's under the level-0 pixel of its top-left corner (what the Slides page shows).
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

from ..fileio import read_json
from ..slides.folder import AnalysisFolder
from ..slides.regions import region_number
from ..slides.report import render_report, review_target, review_text
from .reviews import ReviewStore

REVIEW_SOURCE = "slides"  # the data name slide windows and regions are reviewed under


def slide_reviews(store: ReviewStore, slides: Iterable[str], *, run: str | None = None) -> list[dict[str, Any]]:
    """The current reviews (each reviewer's latest) of the regions and windows of the slides `slides` (a slide's
    ids: it and its copies), oldest first; with `run`, a region's only when made on that run's map (region
    numbers are an analysis's), a window's whatever map was shown (the window is the same pixels). Each:
    region (int or None), x, y (window top-left, level-0 px, or None), verdict, note, reviewer, created_at
    (ISO 8601 in UTC), probability, run_id."""
    frame = store.current_reviews(source=REVIEW_SOURCE, slide_id=list(dict.fromkeys(slides)))
    if run is not None:
        frame = frame[frame["region"].isna() | (frame["run_id"] == run)]
    out = []
    for row in frame.to_dict("records"):
        region = row.get("region")
        out.append({"region": int(region) if region not in (None, "") and str(region).isdigit() else None,
                    "x": None if row.get("x") is None or row["x"] != row["x"] else int(row["x"]),
                    "y": None if row.get("y") is None or row["y"] != row["y"] else int(row["y"]),
                    **{k: row.get(k) for k in ("verdict", "note", "reviewer", "created_at", "probability", "run_id")}})
    return [r for r in out if r["region"] is not None or (r["x"] is not None and r["y"] is not None)]


def regions_geojson(folder: AnalysisFolder, reviews: list[dict[str, Any]], *, window_px: float) -> dict[str, Any]:
    """The analysis's tumour_regions.geojson with the reviews: each region's in its `reviews` property (a list
    of {verdict, note, reviewer, created_at}, and `review` the words of the latest), and each reviewed window
    as a square feature (`window_px` level-0 pixels a side) named "reviewed window at X, Y"."""
    data = read_json(folder.regions_geojson)
    if data is None:
        raise FileNotFoundError(f"{folder.regions_geojson}: the analysis has no regions file")
    data = copy.deepcopy(data)

    def brief(review: dict[str, Any]) -> dict[str, Any]:
        return {k: review[k] for k in ("verdict", "note", "reviewer", "created_at")}

    for position, feature in enumerate(data.get("features", []), start=1):
        number = region_number(feature, position)
        mine = [r for r in reviews if r["region"] == number]
        feature["properties"].setdefault("region", number)
        if mine:
            feature["properties"]["reviews"] = [brief(r) for r in mine]
            feature["properties"]["review"] = review_text(mine[-1])
    windows: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for review in reviews:
        if review["region"] is None:
            windows.setdefault((review["x"], review["y"]), []).append(review)
    for (x, y), mine in windows.items():
        ring = [[x, y], [x + window_px, y], [x + window_px, y + window_px], [x, y + window_px], [x, y]]
        data["features"].append({
            "type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation", "name": review_target(mine[-1]).replace("window", "reviewed window", 1),
                           "classification": {"name": "Reviewed window", "color": [57, 255, 20]},
                           "x": x, "y": y, "reviews": [brief(r) for r in mine], "review": review_text(mine[-1])},
        })
    return data


def report_html(folder: AnalysisFolder, reviews: list[dict[str, Any]]) -> str:
    """The analysis's printable report with the reviews of its regions and windows."""
    return render_report(folder, reviews=reviews)


__all__ = ["REVIEW_SOURCE", "regions_geojson", "report_html", "slide_reviews"]
