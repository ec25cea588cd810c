"""One small reader interface over whole-slide images: OpenSlide first, tiffslide, then PIL; DICOM WSI
series with OpenSlide, else wsidicom (`dicom` says which files make a series and why OpenSlide refused one).

Everything above this module speaks level-0 pixels and microns. A `Slide` knows its level sizes and
downsamples and its microns per pixel (from the file's metadata, or given); `read_scaled` reads any
level-0 box at any output size from the nearest pyramid level at or finer than the requested scale,
resampling only when that level's scale is off by more than `SCALE_TOLERANCE`. Boxes may reach past
the slide's edge: the outside reads as white, as does any transparent pixel.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import dicom
from .tiledtiff import TiledLevels

log = logging.getLogger(__name__)

PCAM_MPP = 0.972  # PCam patches: Camelyon16 at 0.243 um/px, downsampled 4x
WINDOW = 96  # a PCam patch's side, in PCam-scale pixels
SCALE_TOLERANCE = 0.03  # a level within 3% of the wanted scale is read as it is, without resampling
Image.MAX_IMAGE_PIXELS = None  # plain images are opened only after their size was checked below
_MAX_PLAIN_PIXELS = 20_000 * 20_000  # a plain PNG/JPEG is decoded whole; beyond this, refuse
DIRECT_TILES_ENV = "PCAM_DIRECT_TILES"  # "0": every read through OpenSlide's read_region (`tiledtiff` is bypassed)
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".png", ".jpg", ".jpeg", ".dcm")


def _plain_slides(folder: Path) -> list[Path]:
    """The slide-like files directly in `folder` other than DICOM (by suffix; hidden files left out)."""
    return [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SLIDE_SUFFIXES
            and p.suffix.lower() != dicom.DICOM_SUFFIX]


def _series_entries(folder: Path, *, shared: bool) -> list[Path]:
    """One path per DICOM series directly in `folder`: the folder when it holds one series and nothing else
    (`shared` false), else each series' main (level-0 VOLUME) file."""
    series = dicom.series_in(folder)
    return [folder] if len(series) == 1 and not shared else [s.main for s in series]


def slide_files(folder: str | Path) -> list[Path]:
    """The slides in `folder`, one path each, sorted: its slide-like files (by suffix; hidden ones left out), with a
    DICOM WSI series counted once however many files it has. A series is listed by its folder when it has the
    folder to itself (`folder`, or a subfolder of it: one folder per scan), else by its level-0 VOLUME file;
    `open_slide` opens either. Subfolders are looked into for DICOM series only."""
    folder = Path(folder)
    found = _plain_slides(folder)
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found += _series_entries(sub, shared=bool(_plain_slides(sub)))
    found += _series_entries(folder, shared=bool(found))
    return sorted(found)


def slide_bytes(path: str | Path) -> int:
    """The bytes a slide takes on disk: its file's, or all its series' files for DICOM (a folder or any file of it)."""
    path = Path(path)
    if path.is_dir() or path.suffix.lower() == dicom.DICOM_SUFFIX:
        return sum(f.stat().st_size for f in dicom.series_of(path).files)
    return path.stat().st_size


SYNTHETIC_MARK = "SYNTHETIC"  # `pcam demo-slide` writes it into the TIFF's ImageDescription and its truth.json


MPP_RANGE = (0.05, 10.0)  # microns per pixel a person may give: 200x down to 1x scans


def check_mpp(value: object) -> float:
    """A given resolution as a float, or a ValueError naming it and the valid range."""
    try:
        mpp = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"mpp={value!r} is not a number of microns per pixel (e.g. 0.25 for a 40x scan)") from None
    if not (math.isfinite(mpp) and MPP_RANGE[0] <= mpp <= MPP_RANGE[1]):
        raise ValueError(f"mpp={value!r} must be between {MPP_RANGE[0]} and {MPP_RANGE[1]} microns per pixel "
                         "(0.25 for a 40x scan, 0.5 for 20x)")
    return mpp


class MissingResolution(ValueError):
    """A slide whose file does not say its microns per pixel: it must be given (`--mpp`, the Slides page's field,
    the API's `mpp`), never guessed."""


class SlideReadError(ValueError):
    """A region of an opened slide could not be read (a corrupt tile, a truncated file)."""


@dataclass(frozen=True)
class Level:
    width: int
    height: int
    downsample: float


def _white(w: int, h: int) -> np.ndarray:
    return np.full((h, w, 3), 255, dtype=np.uint8)


def _rgb(image: np.ndarray) -> np.ndarray:
    """uint8 RGB from RGB, RGBA (alpha composited on white) or greyscale arrays. An RGBA array comes back
    as a view of its first three channels (not contiguous: the windows cut from it are copied anyway), and
    only its pixels that are not opaque (outside the slide, as a rule) are composited."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.shape[2] == 4:
        alpha = image[..., 3]
        seethrough = alpha != 255
        if seethrough.any():
            if not image.flags.writeable:
                image = image.copy()
                alpha = image[..., 3]
            a = alpha[seethrough].astype(np.uint32)[:, None]
            image[seethrough, :3] = ((image[seethrough, :3] * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
    return image[..., :3]


class _OpenSlideBackend:
    name = "openslide"

    def __init__(self, path: Path) -> None:
        import openslide

        self._mod = openslide
        self.path = path
        self.handle = openslide.OpenSlide(str(path))
        self.levels = [Level(w, h, float(d)) for (w, h), d in zip(self.handle.level_dimensions, self.handle.level_downsamples)]
        self.properties = dict(self.handle.properties)
        self.vendor = self.properties.get("openslide.vendor", "unknown")
        # the same pixels, decoded without OpenSlide's painting and copies where the level is a plain JPEG-tiled page
        direct = os.environ.get(DIRECT_TILES_ENV, "1") != "0"
        self.tiles = TiledLevels.of(path, self.levels, self.vendor) if direct else None

    def mpp(self) -> float | None:
        value = self.properties.get("openslide.mpp-x")
        return float(value) if value else None

    def read(self, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray:
        if self.tiles is not None:
            try:
                region = self.tiles.read(x0, y0, level, w, h)
            except Exception as err:  # noqa: BLE001 - a tile the direct path cannot decode: OpenSlide decides
                log.info("%s: region at (%d, %d) level %d not read directly (%s: %s); OpenSlide reads it", self.path, x0, y0,
                         level, type(err).__name__, err)
                region = None
            if region is not None:
                return region
        try:
            region = self.handle.read_region((x0, y0), level, (w, h))
        except self._mod.OpenSlideError as err:
            # an OpenSlide handle stays in its error state after a failure: reopen it for the next read
            self.handle = self._mod.OpenSlide(str(self.path))
            raise SlideReadError(f"{self.path}: cannot read region at ({x0}, {y0}) level {level}: {err}") from err
        return _rgb(np.asarray(region))

    def close(self) -> None:
        if self.tiles is not None:
            self.tiles.close()
        self.handle.close()


def _inside_on_white(backend: Any, x0: int, y0: int, level: int, w: int, h: int, read: Any) -> np.ndarray:
    """A region of a backend whose library pads or refuses what lies past the image's edge: `read(x, y, w, h)` (level
    pixels) reads only the part inside, pasted on white. Any error of the library is a `SlideReadError`."""
    lv = backend.levels[level]
    lx, ly = math.floor(x0 / lv.downsample), math.floor(y0 / lv.downsample)
    out = _white(w, h)
    ax, ay = max(lx, 0), max(ly, 0)
    bx, by = min(lx + w, lv.width), min(ly + h, lv.height)
    if bx <= ax or by <= ay:
        return out
    try:
        part = read(ax, ay, bx - ax, by - ay)
    except Exception as err:  # noqa: BLE001 - tifffile, imagecodecs, wsidicom raise many types for a corrupt tile
        raise SlideReadError(f"{backend.path}: cannot read region at ({x0}, {y0}) level {level}: {type(err).__name__}: {err}") from err
    out[ay - ly:by - ly, ax - lx:bx - lx] = _rgb(np.asarray(part))
    return out


class _TiffSlideBackend:
    name = "tiffslide"

    def __init__(self, path: Path) -> None:
        import tiffslide

        self.path = path
        self.handle = tiffslide.TiffSlide(str(path))
        self.levels = [Level(w, h, float(d)) for (w, h), d in zip(self.handle.level_dimensions, self.handle.level_downsamples)]
        self.properties = {k: v for k, v in self.handle.properties.items() if isinstance(v, (str, int, float))}
        self.vendor = str(self.properties.get("tiffslide.vendor", "tiff"))

    def mpp(self) -> float | None:
        value = self.properties.get("tiffslide.mpp-x")
        return float(value) if value else None

    def read(self, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray:
        # tiffslide pads outside the image with zeros: read only the inside and paste it on white
        d = self.levels[level].downsample
        return _inside_on_white(self, x0, y0, level, w, h, lambda ax, ay, cw, ch: self.handle.read_region(
            (round(ax * d), round(ay * d)), level, (cw, ch), as_array=True, padding=False))

    def close(self) -> None:
        self.handle.close()


class _WsiDicomBackend:
    """A DICOM WSI series OpenSlide cannot read (a transfer syntax it does not decode, say), through wsidicom."""

    name = "wsidicom"

    def __init__(self, series: dicom.Series) -> None:
        from wsidicom import WsiDicom

        self.path = series.main
        self.handle = WsiDicom.open(list(series.files))
        try:
            base = self.handle.levels[0]
            self._numbers = [level.level for level in self.handle.levels]  # wsidicom's own level numbers (log2 scale)
            self.levels = [Level(lv.size.width, lv.size.height, base.size.width / lv.size.width) for lv in self.handle.levels]
            self._mpp = float(base.pixel_spacing.width) * 1000 if base.pixel_spacing else None  # PixelSpacing is in mm
        except Exception:
            self.handle.close()
            raise
        self.properties: dict[str, Any] = {"dicom.SeriesInstanceUID": series.uid or "", "dicom.files": len(series.files)}
        self.vendor = "dicom"

    def mpp(self) -> float | None:
        return self._mpp

    def read(self, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray:
        # wsidicom refuses a region past the image's edge: read only the inside and paste it on white
        return _inside_on_white(self, x0, y0, level, w, h, lambda ax, ay, cw, ch: self.handle.read_region(
            (ax, ay), self._numbers[level], (cw, ch)))

    def close(self) -> None:
        self.handle.close()


class _PlainImageBackend:
    """A plain image (PNG, JPEG, a small untiled TIFF): decoded whole, one level."""

    name = "pil"

    def __init__(self, path: Path) -> None:
        with Image.open(path) as image:
            if image.width * image.height > _MAX_PLAIN_PIXELS:
                raise ValueError(f"{path}: a plain {image.format} image of {image.width}x{image.height} is too large to decode whole; "
                                 "convert it to a tiled pyramidal TIFF")
            self.dpi = image.info.get("dpi")
            self.pixels = _rgb(np.asarray(image.convert("RGBA")))
        self.path = path
        self.levels = [Level(self.pixels.shape[1], self.pixels.shape[0], 1.0)]
        self.properties: dict[str, Any] = {}
        self.vendor = "image"

    def mpp(self) -> float | None:
        if self.dpi and self.dpi[0] and float(self.dpi[0]) > 1:  # PIL reports 72 dpi for files without one
            dpi = float(self.dpi[0])
            return None if abs(dpi - 72) < 1e-6 else 25400.0 / dpi
        return None

    def read(self, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray:
        out = _white(w, h)
        H, W = self.pixels.shape[:2]
        ax, ay, bx, by = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
        if bx > ax and by > ay:
            out[ay - y0:by - y0, ax - x0:bx - x0] = self.pixels[ay:by, ax:bx]
        return out

    def close(self) -> None:
        self.pixels = _white(1, 1)


class Slide:
    """An opened whole-slide image. Coordinates are level-0 pixels; `mpp` is microns per level-0 pixel."""

    def __init__(self, path: Path, backend: Any, mpp: float, mpp_source: str) -> None:
        self.path = path
        self._backend = backend
        self.mpp = mpp
        self.mpp_source = mpp_source

    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def vendor(self) -> str:
        return self._backend.vendor

    @property
    def levels(self) -> list[Level]:
        return self._backend.levels

    @property
    def synthetic(self) -> bool:
        """Whether the file says it is a SYNTHETIC slide (`pcam demo-slide`'s ImageDescription), or lies
        beside a truth.json that says so."""
        if SYNTHETIC_MARK in str(self.properties.get("tiff.ImageDescription", "")):
            return True
        try:
            truth = json.loads((self.path.parent / "truth.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(truth, dict) and truth.get("synthetic") is True and truth.get("slide") == self.path.name

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        return self.levels[0].width, self.levels[0].height

    @property
    def properties(self) -> dict[str, Any]:
        return self._backend.properties

    def read_region(self, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray:
        """uint8 RGB ``(h, w, 3)`` of `level`, its top-left at level-0 pixel (x0, y0); outside is white."""
        if not 0 <= level < len(self.levels):
            raise ValueError(f"{self.path}: level {level} does not exist (0..{len(self.levels) - 1})")
        return self._backend.read(int(x0), int(y0), level, int(w), int(h))

    def best_level(self, downsample: float) -> int:
        """The coarsest level at or finer than `downsample` (level-0 pixels per output pixel)."""
        best = 0
        for index, level in enumerate(self.levels):
            if level.downsample <= downsample * (1 + SCALE_TOLERANCE):
                best = index if level.downsample >= self.levels[best].downsample else best
        return best

    def read_scaled(self, x0: float, y0: float, w0: float, h0: float, size: tuple[int, int]) -> np.ndarray:
        """The level-0 box (x0, y0, w0, h0) as a uint8 RGB image of `size` = (width, height)."""
        out_w, out_h = size
        downsample = w0 / out_w
        level = self.best_level(downsample)
        d = self.levels[level].downsample
        if abs(d / downsample - 1) <= SCALE_TOLERANCE:
            return self.read_region(round(x0), round(y0), level, out_w, out_h)
        lw, lh = max(1, math.ceil(w0 / d)), max(1, math.ceil(h0 / d))
        region = self.read_region(round(x0), round(y0), level, lw, lh)
        return np.asarray(Image.fromarray(region).resize((out_w, out_h), Image.Resampling.BILINEAR, reducing_gap=2.0))

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "backend": self.backend, "vendor": self.vendor, "width": self.dimensions[0],
                "height": self.dimensions[1], "mpp": self.mpp, "mpp_source": self.mpp_source,
                "levels": [[lv.width, lv.height, lv.downsample] for lv in self.levels],
                "synthetic": self.synthetic}

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_dicom(series: dicom.Series) -> Any:
    """OpenSlide given the series' main file (it finds the rest beside it), else wsidicom given all of them; when
    neither reads it, one sentence that says it is DICOM and what is missing."""
    import openslide

    main = series.main
    if not dicom.is_dicom(main):
        raise ValueError(f"{main.name} is named .dcm but is not a DICOM file (no DICM marker after its 128-byte preamble)")
    try:
        return _OpenSlideBackend(main)
    except openslide.OpenSlideError as err:
        reason = dicom.why_not_openslide(main, str(err))
    try:
        backend = _WsiDicomBackend(series)
    except Exception as err:  # noqa: BLE001 - wsidicom says "Level files not found": the reason says more
        log.info("%s: wsidicom cannot read it either: %s: %s", main, type(err).__name__, err)
        raise ValueError(f"{main.name} is a DICOM file but not a whole-slide image series OpenSlide or wsidicom can read: "
                         f"{reason}.") from err
    log.warning("%s is a DICOM file OpenSlide cannot read (%s); it is read with wsidicom", main.name, reason)
    return backend


def _open_backend(path: Path) -> Any:
    if path.is_dir() or path.suffix.lower() == dicom.DICOM_SUFFIX or dicom.is_dicom(path):
        return _open_dicom(dicom.series_of(path))
    errors = []
    try:
        import openslide

        if openslide.OpenSlide.detect_format(str(path)):
            return _OpenSlideBackend(path)
        errors.append("OpenSlide: not a format it reads")
    except Exception as err:  # noqa: BLE001 - every backend gets its chance; the errors are reported together
        errors.append(f"OpenSlide: {err}")
    try:
        return _TiffSlideBackend(path)
    except Exception as err:  # noqa: BLE001
        errors.append(f"tiffslide: {type(err).__name__}: {err}")
    try:
        return _PlainImageBackend(path)
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001
        errors.append(f"PIL: {type(err).__name__}: {err}")
    raise ValueError(f"{path}: not a slide or image that can be read ({'; '.join(errors)})")


def open_slide(path: str | Path, *, mpp: float | None = None) -> Slide:
    """Open `path` with the first backend that reads it: a slide file, any file of a DICOM WSI series or the
    folder that holds one series (as `slide_files` lists them). `mpp` (microns per level-0 pixel) overrides
    the file's metadata; without either, a `ValueError` names the file and says to pass ``--mpp``.
    The smallest level's last corner is read once, so a truncated file fails here and not midway."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"slide not found: {path}")
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty (0 bytes), not a slide")
    if mpp is not None and not (0 < mpp < 1000):
        raise ValueError(f"mpp must be a positive number of microns per pixel (e.g. 0.25), not {mpp}")
    backend = _open_backend(path)
    source = "given"
    if mpp is None:
        mpp, source = backend.mpp(), "metadata"
        if mpp is None or not math.isfinite(mpp) or mpp <= 0:
            backend.close()
            raise MissingResolution(f"{path}: the slide's resolution (microns per pixel) is not in its metadata; "
                             f"pass it with --mpp (e.g. --mpp 0.25 for a 40x scan)")
    slide = Slide(path, backend, float(mpp), source)
    last = slide.levels[-1]
    try:
        slide.read_region(round((last.width - 1) * last.downsample), round((last.height - 1) * last.downsample), len(slide.levels) - 1, 1, 1)
    except SlideReadError as err:
        slide.close()
        raise ValueError(f"{path}: the slide opens but its pixels cannot be read (truncated or corrupt?): {err}") from err
    return slide
