"""HTTP routes the dashboard's own server adds for the slide viewer (`st.App(..., routes=routes())`):
Deep Zoom descriptors and tiles of the registered slides, and their analysis overlays.

    GET /slides-api/<slide id>.dzi?v=<slide version>                 the Deep Zoom descriptor (XML)
    GET /slides-api/<slide id>_files/<level>/<col>_<row>.jpeg?v=...  a tile (OpenSeadragon repeats the descriptor's query)
    GET /slides-api/<slide id>/<run key>/heatmap.png?v=<analysis version>&threshold=0.5   the map overlay of an analysis
                                                                                          (cells >= threshold)
    GET /slides-api/<slide id>/<run key>/tissue.png?v=<analysis version>                  its tissue mask overlay

The version in each URL (`SlideEntry.version`: the file's mtime and size; `AnalysisFolder.version`:
summary.json's mtime) changes when the slide or its analysis is written again, so a browser never shows a
stale tile: an answer to the current version may be cached for a day, any other answer is not cached.

A slide id becomes a file only through the slide library's lookup (`SlideLibrary.lookup`), never a path taken
from the URL; a run key names one of that slide's analysis folders and must look like one (`run_key`). A malformed
address answers 400, an unknown slide or a tile outside its pyramid 404, each with a JSON
{"error": message} that names what was asked.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pcam_core.decision import DEFAULT_THRESHOLD, check_threshold
from pcam_core.slides.tiles import LRUCache, TileCache, TileError
from pcam_core.slides.viewer import Overlay, heat_overlay, lattice_of, load_heat, load_summary, tissue_overlay
from pcam_core.workspace import Workspace
from pcam_core.workspace.slide_library import SlideEntry, SlideLibrary
from pcam_core.workspace.slide_queue import is_run_key

log = logging.getLogger(__name__)

PREFIX = "/slides-api"
TILE_NAME = re.compile(r"(\d{1,6})_(\d{1,6})\.jpeg")
LEVEL = re.compile(r"\d{1,2}")
CACHE_CURRENT = "private, max-age=86400, immutable"  # an address with the current version: its bytes never change
CACHE_OTHER = "no-cache"  # no version, or an old one: asked again every time
LOOKUP_SECONDS = 5.0  # a slide id's lookup is reused this long: the library lists its folders on every lookup

Library = Callable[[], SlideLibrary]


def workspace_library() -> SlideLibrary:
    """The slide library of the dashboard's workspace ($PCAM_WORKSPACE)."""
    return Workspace().slide_library


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _cache(request: Request, version: str) -> dict[str, str]:
    """The Cache-Control header of an answer: long when the address names the current version."""
    return {"Cache-Control": CACHE_CURRENT if version and request.query_params.get("v") == version else CACHE_OTHER}


class SlideRoutes:
    """The routes' handlers over the slide library and one tile cache (per server process)."""

    def __init__(self, library: Library = workspace_library, cache: TileCache | None = None) -> None:
        self.library = library
        self.cache = cache or TileCache()
        self._found: dict[str, tuple[float, SlideEntry]] = {}
        self.overlays: LRUCache[Overlay] = LRUCache(max_entries=32, max_size=64 * 2**20, size_of=lambda o: len(o.png))

    def _slide(self, slide_id: str) -> SlideEntry | JSONResponse:
        now = time.monotonic()
        found = self._found.get(slide_id)
        try:
            if found and now - found[0] < LOOKUP_SECONDS:
                slide = found[1]
            else:
                slide = self.library().lookup(slide_id)
                if len(self._found) > 256:
                    self._found.clear()
                self._found[slide_id] = (now, slide)
        except ValueError as err:
            return _error(400, str(err))
        except KeyError as err:
            return _error(404, str(err.args[0]) if err.args else f"no registered slide {slide_id!r}")
        if not Path(slide.path).exists():  # a file, or a folder (a DICOM series)
            return _error(404, f"slide {slide_id!r}: its file is missing: {slide.path}")
        return slide

    def dzi(self, request: Request) -> Response:
        slide = self._slide(request.path_params["slide_id"])
        if isinstance(slide, Response):
            return slide
        try:
            zoom = self.cache.slide(slide.path)
        except (OSError, ValueError) as err:
            return _error(422, f"slide {slide.id!r} cannot be read: {err}")
        return Response(zoom.dzi(), media_type="application/xml", headers=_cache(request, slide.version))

    def tile(self, request: Request) -> Response:
        slide = self._slide(request.path_params["slide_id"])
        if isinstance(slide, Response):
            return slide
        level, name = request.path_params["level"], request.path_params["tile"]
        match = TILE_NAME.fullmatch(name)
        if not LEVEL.fullmatch(level) or not match:
            return _error(400, f"malformed tile address {level}/{name}: expected <level>/<col>_<row>.jpeg with whole numbers")
        try:
            data = self.cache.tile(slide.path, int(level), int(match[1]), int(match[2]))
        except TileError as err:
            return _error(404, f"slide {slide.id!r}, level {level}: {err}")
        except (OSError, ValueError) as err:
            log.warning("tile %s/%s of %s: %s", level, name, slide.path, err)
            return _error(422, f"slide {slide.id!r}: tile {level}/{name} cannot be read: {err}")
        return Response(data, media_type="image/jpeg", headers=_cache(request, slide.version))

    def _overlay(self, request: Request, kind: str) -> Response:
        slide = self._slide(request.path_params["slide_id"])
        if isinstance(slide, Response):
            return slide
        key = request.path_params["key"]
        if not is_run_key(key):
            return _error(400, f"malformed analysis key {key!r}: expected <run>-s32 or <run>-s96")
        threshold = 0.0
        if kind == "heatmap":
            raw = request.query_params.get("threshold", str(DEFAULT_THRESHOLD))
            try:
                threshold = check_threshold(raw, "threshold")
            except ValueError as err:
                return _error(400, str(err))
        folder = self.library().queue.folder(slide.id, key)
        try:
            version = folder.version()
            summary = load_summary(folder)

            def make() -> Overlay:
                lattice = lattice_of(summary)
                return heat_overlay(load_heat(folder), lattice, threshold) if kind == "heatmap" else tissue_overlay(folder, lattice)

            overlay = self.overlays.get((str(folder.path), version, kind, round(threshold, 4)), make)
        except (OSError, ValueError) as err:
            return _error(404, f"slide {slide.id!r}: no {kind} overlay: {err}")
        return Response(overlay.png, media_type="image/png", headers=_cache(request, version))

    def heatmap(self, request: Request) -> Response:
        return self._overlay(request, "heatmap")

    def tissue(self, request: Request) -> Response:
        return self._overlay(request, "tissue")

    def routes(self) -> list[Route]:
        return [
            Route(PREFIX + "/{slide_id}.dzi", self.dzi, methods=["GET"]),
            Route(PREFIX + "/{slide_id}_files/{level}/{tile}", self.tile, methods=["GET"]),
            Route(PREFIX + "/{slide_id}/{key}/heatmap.png", self.heatmap, methods=["GET"]),
            Route(PREFIX + "/{slide_id}/{key}/tissue.png", self.tissue, methods=["GET"]),
        ]


def routes(library: Library = workspace_library) -> list[Route]:
    """The viewer's routes for `st.App`."""
    return SlideRoutes(library).routes()
