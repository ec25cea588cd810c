"""Reading the JPEG tiles of a tiled TIFF level directly: tifffile finds the tiles, imagecodecs decodes them.

OpenSlide's `read_region` decodes the same tiles with the same library (libjpeg-turbo) and returns the same
pixels, but it paints each tile onto a cairo surface in premultiplied ARGB, which Python then converts to RGBA
and copies twice; for a region of 30 tiles that is about twice the time of the decoding alone
(benchmarks/README.md). `TiledLevels` reads a region of a level the way `_OpenSlideBackend` would, bit for bit:

- only levels that are plain pyramid pages: one top-level TIFF page of exactly the level's size, tiled,
  8-bit, 3 samples, RGB or YCbCr photometric, JPEG-compressed (what OpenSlide's generic-tiff and aperio
  formats read; every other level, compression or vendor keeps OpenSlide);
- only regions whose top-left corner falls on a pixel of the level (level-0 x0, y0 multiples of its
  downsample): OpenSlide draws a region at a fractional level position by interpolating between pixels,
  which this reader does not imitate, so those reads go to OpenSlide as before;
- pixels outside the level, and tiles the file leaves out (a byte count of 0), are white, as OpenSlide's
  transparent pixels become in `reader._rgb`.

`tests/test_slide_reader.py` checks the pixels against OpenSlide's on a real Aperio slide and on demo slides.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_JPEG = 7  # TIFF compression tag value
_RGB, _YCBCR = 2, 6  # TIFF photometric interpretation values
VENDORS = ("generic-tiff", "aperio")  # OpenSlide formats whose levels are plain tiled TIFF pages
CACHE_BYTES = 32 << 20  # decoded tiles kept, as OpenSlide's default cache (which these reads leave empty): neighbouring
# regions share their edge tiles, and a row of regions the one above it on a slide up to about 40,000 level pixels wide


def _plain_jpeg_page(page: Any) -> bool:
    return (page.is_tiled and page.compression == _JPEG and page.photometric in (_RGB, _YCBCR) and page.samplesperpixel == 3
            and page.bitspersample == 8 and page.planarconfig == 1 and page.tiledepth == 1 and page.imagedepth == 1)


class TiledLevels:
    """The levels of an OpenSlide-readable slide that are plain JPEG-tiled TIFF pages, read without OpenSlide.
    `read` returns None for a level or position it does not read (the caller asks OpenSlide)."""

    def __init__(self, path: Path, levels: list[Any]) -> None:
        import tifffile

        self._tiff = tifffile.TiffFile(path)
        self._lock = threading.Lock()  # one file position and one cache: their users take turns
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self._pages: dict[int, Any] = {}
        self._downsamples = [lv.downsample for lv in levels]
        pages = [p for p in self._tiff.pages if hasattr(p, "is_tiled")]
        for index, level in enumerate(levels):
            same = [p for p in pages if p.imagewidth == level.width and p.imagelength == level.height]
            if len(same) == 1 and _plain_jpeg_page(same[0]):
                self._pages[index] = same[0]

    @classmethod
    def of(cls, path: Path, levels: list[Any], vendor: str) -> TiledLevels | None:
        """The direct reader of `path`'s plain levels, or None where there is none (another format, no such level,
        a file tifffile cannot parse)."""
        if vendor not in VENDORS:
            return None
        try:
            reader = cls(path, levels)
        except Exception as err:  # noqa: BLE001 - tifffile raises many types for files OpenSlide reads its own way
            log.info("%s: tiles not read directly (%s: %s); OpenSlide reads them", path, type(err).__name__, err)
            return None
        if not reader._pages:
            reader.close()
            return None
        return reader

    @property
    def levels(self) -> list[int]:
        """The level indices read directly."""
        return sorted(self._pages)

    def read(self, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray | None:
        """uint8 RGB (h, w, 3) of `level` with its top-left at level-0 pixel (x0, y0), outside white; None when this
        level or a fractional level position is not read here."""
        page = self._pages.get(level)
        if page is None:
            return None
        d = self._downsamples[level]
        lx, ly = x0 / d, y0 / d
        if lx != math.floor(lx) or ly != math.floor(ly):
            return None
        lx, ly = int(lx), int(ly)
        tw, th = page.tilewidth, page.tilelength
        across = -(-page.imagewidth // tw)
        ax, ay = max(lx, 0), max(ly, 0)
        bx, by = min(lx + w, page.imagewidth), min(ly + h, page.imagelength)
        if bx <= ax or by <= ay:
            return np.full((h, w, 3), 255, dtype=np.uint8)
        tiles = {(row, col): self._tile(level, row * across + col)
                 for row in range(ay // th, (by - 1) // th + 1) for col in range(ax // tw, (bx - 1) // tw + 1)}
        covered = (ax, ay, bx, by) == (lx, ly, lx + w, ly + h) and all(tile is not None for tile in tiles.values())
        out = np.empty((h, w, 3), dtype=np.uint8) if covered else np.full((h, w, 3), 255, dtype=np.uint8)
        for (row, col), tile in tiles.items():
            if tile is None:
                continue  # a tile the file leaves out: transparent for OpenSlide, white here
            tx, ty = col * tw, row * th
            cx0, cy0 = max(ax, tx), max(ay, ty)
            cx1, cy1 = min(bx, tx + tw), min(by, ty + th)
            out[cy0 - ly:cy1 - ly, cx0 - lx:cx1 - lx] = tile[cy0 - ty:cy1 - ty, cx0 - tx:cx1 - tx]
        return out

    def _tile(self, level: int, k: int) -> np.ndarray | None:
        """Tile `k` of `level`'s page decoded, (tile height, tile width, 3), from the cache when it is there."""
        key = (level, k)
        with self._lock:
            tile = self._cache.get(key)
            if tile is not None:
                self._cache.move_to_end(key)
                return tile
            page = self._pages[level]
            offset, count = page.dataoffsets[k], page.databytecounts[k]
            if not count:
                return None
            fh = self._tiff.filehandle
            fh.seek(offset)
            data = fh.read(count)
        tile = page.decode(data, k, jpegtables=page.jpegtables)[0].reshape(page.tilelength, page.tilewidth, 3)
        tile.flags.writeable = False  # shared through the cache
        with self._lock:
            if key not in self._cache:
                self._cache[key] = tile
                self._cached_bytes += tile.nbytes
            while self._cached_bytes > CACHE_BYTES and len(self._cache) > 1:
                self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes
        return tile

    def close(self) -> None:
        self._tiff.close()
