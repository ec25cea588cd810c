"""Deep Zoom tiles of a slide for a browser viewer (OpenSeadragon), with caches of open slides and tiles.

Deep Zoom levels: level L of N = ceil(log2(max(width, height))) + 1 is the slide halved N - 1 - L times
(rounding up), so level 0 is 1 x 1 pixel and the last level is the slide at full resolution. A level is cut
into `TILE_SIZE` squares; each tile carries `OVERLAP` extra pixels on every side that has a neighbour. Files
OpenSlide reads get `openslide.deepzoom.DeepZoomGenerator`; the others (what `reader.open_slide` reads with
tiffslide or PIL) the same levels and tiles computed here from `Slide.read_scaled`.

Tiles are JPEG; the encoded bytes are kept in a least-recently-used cache bounded in bytes, and opened slides
in one bounded in count, so that a zoom step over tiles already seen costs a dictionary look-up.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Hashable, TypeVar

from PIL import Image

from .reader import open_slide

TILE_SIZE = 254  # 254 + 2 x 1 overlap = 256-px images: the usual Deep Zoom choice
OVERLAP = 1
JPEG_QUALITY = 80
TILE_FORMAT = "jpeg"
DZI_NS = "http://schemas.microsoft.com/deepzoom/2008"

V = TypeVar("V")


class TileError(ValueError):
    """A tile address that does not exist in the slide's pyramid (a level, column or row out of range)."""


def dzi_level_sizes(width: int, height: int) -> list[tuple[int, int]]:
    """(width, height) of every Deep Zoom level, 1 x 1 first, the full slide last."""
    if width < 1 or height < 1:
        raise ValueError(f"a Deep Zoom image needs a positive size, not {width} x {height}")
    levels = math.ceil(math.log2(max(width, height))) + 1
    return [(math.ceil(width / 2 ** (levels - 1 - k)), math.ceil(height / 2 ** (levels - 1 - k))) for k in range(levels)]


def dzi_xml(width: int, height: int, *, tile_size: int = TILE_SIZE, overlap: int = OVERLAP, fmt: str = TILE_FORMAT) -> str:
    """The Deep Zoom descriptor (`.dzi`) of an image of `width` x `height` pixels."""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Image xmlns="{DZI_NS}" Format="{fmt}" Overlap="{overlap}" '
            f'TileSize="{tile_size}"><Size Width="{width}" Height="{height}"/></Image>')


def tile_box(level_size: tuple[int, int], col: int, row: int, *, tile_size: int = TILE_SIZE,
             overlap: int = OVERLAP) -> tuple[int, int, int, int]:
    """(x, y, width, height) of tile (col, row) in its level's pixels, overlap included; `TileError`
    when the tile is outside the level."""
    w, h = level_size
    cols, rows = math.ceil(w / tile_size), math.ceil(h / tile_size)
    if not (0 <= col < cols and 0 <= row < rows):
        raise TileError(f"tile ({col}, {row}) is outside the level's {cols} x {rows} tiles")
    x = col * tile_size - (overlap if col else 0)
    y = row * tile_size - (overlap if row else 0)
    x1 = min(w, (col + 1) * tile_size + (overlap if col < cols - 1 else 0))
    y1 = min(h, (row + 1) * tile_size + (overlap if row < rows - 1 else 0))
    return x, y, x1 - x, y1 - y


class _ReaderDeepZoom:
    """Deep Zoom over `reader.Slide` (tiffslide or PIL): the levels of `dzi_level_sizes`, the tiles of
    `tile_box`, each read from the nearest finer pyramid level and resampled."""

    def __init__(self, path: Path, mpp: float | None) -> None:
        self.slide = open_slide(path, mpp=mpp)
        self.dimensions = self.slide.dimensions
        self.level_dimensions = dzi_level_sizes(*self.dimensions)
        self._lock = threading.Lock()  # tiffslide and PIL handles are not shared between threads

    def get_tile(self, level: int, col: int, row: int) -> Image.Image:
        lw, lh = self.level_dimensions[level]
        x, y, w, h = tile_box((lw, lh), col, row)
        d = 2 ** (len(self.level_dimensions) - 1 - level)  # level-0 pixels per pixel of this level
        with self._lock:
            pixels = self.slide.read_scaled(x * d, y * d, w * d, h * d, (w, h))
        return Image.fromarray(pixels)


class _OpenSlideDeepZoom:
    """`openslide.deepzoom.DeepZoomGenerator` (thread-safe: OpenSlide handles are)."""

    def __init__(self, path: Path) -> None:
        import openslide
        from openslide.deepzoom import DeepZoomGenerator

        self.handle = openslide.OpenSlide(str(path))
        self.generator = DeepZoomGenerator(self.handle, tile_size=TILE_SIZE, overlap=OVERLAP, limit_bounds=False)
        self.dimensions = self.handle.dimensions
        self.level_dimensions = [tuple(size) for size in self.generator.level_dimensions]

    def get_tile(self, level: int, col: int, row: int) -> Image.Image:
        tile_box(self.level_dimensions[level], col, row)  # the same refusal as the other backend
        return self.generator.get_tile(level, (col, row)).convert("RGB")


def _is_openslide(path: Path) -> bool:
    try:
        import openslide

        if not openslide.OpenSlide.detect_format(str(path)):
            return False
        openslide.OpenSlide(str(path)).close()  # it detects every DICOM file, also one it cannot read (wsidicom's)
        return True
    except Exception:  # noqa: BLE001 - no OpenSlide, or a file it cannot look at: the reader decides
        return False


class DeepZoomSlide:
    """A slide's Deep Zoom pyramid: its descriptor and its JPEG tiles."""

    def __init__(self, path: str | Path, *, mpp: float | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():  # a file, or the folder of a DICOM series
            raise FileNotFoundError(f"slide not found: {self.path}")
        self._zoom: Any = _OpenSlideDeepZoom(self.path) if _is_openslide(self.path) else _ReaderDeepZoom(self.path, mpp)
        self.width, self.height = self._zoom.dimensions
        self.level_sizes: list[tuple[int, int]] = self._zoom.level_dimensions
        if self.level_sizes != dzi_level_sizes(self.width, self.height):  # both backends must agree with the descriptor
            raise ValueError(f"{self.path}: unexpected Deep Zoom levels {self.level_sizes[-3:]}")

    @property
    def level_count(self) -> int:
        return len(self.level_sizes)

    def dzi(self) -> str:
        return dzi_xml(self.width, self.height)

    def tile(self, level: int, col: int, row: int) -> bytes:
        """Tile (col, row) of `level` as JPEG bytes; `TileError` for an address outside the pyramid."""
        if not 0 <= level < self.level_count:
            raise TileError(f"level {level} does not exist (0..{self.level_count - 1})")
        image = self._zoom.get_tile(level, col, row)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        return buffer.getvalue()


class LRUCache(Generic[V]):
    """A thread-safe least-recently-used cache bounded by entry count and by total size (`size_of`)."""

    def __init__(self, *, max_entries: int, max_size: float = math.inf, size_of: Callable[[V], float] = lambda _: 1.0) -> None:
        self.max_entries, self.max_size, self.size_of = max_entries, max_size, size_of
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._size = 0.0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size(self) -> float:
        return self._size

    def get(self, key: Hashable, make: Callable[[], V]) -> V:
        """The cached value of `key`, else `make()` (outside the lock: two threads may both make it)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
        value = make()
        with self._lock:
            if key not in self._items:
                self._items[key] = value
                self._size += self.size_of(value)
            while self._items and (len(self._items) > self.max_entries or self._size > self.max_size):
                _, old = self._items.popitem(last=False)
                self._size -= self.size_of(old)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._size = 0.0


@dataclass
class TileCache:
    """Open slides (by path and modification time) and encoded tiles, each least-recently-used."""

    max_slides: int = 8
    max_tile_bytes: int = 128 * 2**20

    def __post_init__(self) -> None:
        self.slides: LRUCache[DeepZoomSlide] = LRUCache(max_entries=self.max_slides)
        self.tiles: LRUCache[bytes] = LRUCache(max_entries=1_000_000, max_size=self.max_tile_bytes, size_of=len)

    def slide(self, path: str | Path, *, mpp: float | None = None) -> DeepZoomSlide:
        path = Path(path)
        key = (str(path.resolve()), path.stat().st_mtime_ns, mpp)  # a replaced file is opened afresh
        return self.slides.get(key, lambda: DeepZoomSlide(path, mpp=mpp))

    def tile(self, path: str | Path, level: int, col: int, row: int, *, mpp: float | None = None) -> bytes:
        zoom = self.slide(path, mpp=mpp)
        key = (str(zoom.path.resolve()), zoom.path.stat().st_mtime_ns, level, col, row)
        return self.tiles.get(key, lambda: zoom.tile(level, col, row))
