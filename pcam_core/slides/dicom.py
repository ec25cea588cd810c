"""DICOM whole-slide images: which files make one slide, and why OpenSlide cannot read one.

A scanner (or `wsidicomizer`) writes one scan as a *series*: one file per image (the VOLUME pyramid's
levels, a LABEL, an OVERVIEW, a THUMBNAIL), all with the same SeriesInstanceUID, as a rule in a folder of
their own. This module groups the `.dcm` files of a folder into series from their headers (pydicom, pixels
never read) and names a series' level-0 VOLUME file, which is what OpenSlide is given (it finds the rest of
the series beside it). It imports nothing of ours; `reader` opens the series.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DICOM_SUFFIX = ".dcm"
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
FLAVOURS = ("VOLUME", "LABEL", "OVERVIEW", "THUMBNAIL")  # ImageType's third value in a WSI series
_TAGS = ["SOPClassUID", "SeriesInstanceUID", "ImageType", "TotalPixelMatrixColumns", "TotalPixelMatrixRows"]
_HEADERS: dict[tuple[str, int, int], Header] = {}  # by (path, size, mtime): a folder is listed on every page view


@dataclass(frozen=True)
class Header:
    """What a `.dcm` file's header says about its place in a series (all None when it is not readable DICOM)."""

    path: Path
    dicom: bool
    sop_class: str | None = None
    series_uid: str | None = None
    image_type: tuple[str, ...] | None = None
    pixels: int = 0  # TotalPixelMatrixColumns x Rows
    transfer_syntax: str | None = None

    @property
    def flavour(self) -> str | None:
        """VOLUME, LABEL, OVERVIEW or THUMBNAIL (ImageType's third value), else None."""
        if self.image_type and len(self.image_type) >= 3 and self.image_type[2] in FLAVOURS:
            return self.image_type[2]
        return None


@dataclass(frozen=True)
class Series:
    """The files of one DICOM series in one folder; `main` is the file a reader is given."""

    folder: Path
    uid: str | None  # None: a file that is not part of any series (no SeriesInstanceUID, or not DICOM)
    files: tuple[Path, ...]
    main: Path  # the largest VOLUME image (level 0), else the first file


def is_dicom(path: Path) -> bool:
    """Whether `path` is a DICOM Part 10 file: the 4 bytes "DICM" after its 128-byte preamble."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def read_header(path: Path) -> Header:
    """The series-relevant header of a `.dcm` file, cached by its size and modification time."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _HEADERS:
        return _HEADERS[key]
    header = Header(path, dicom=False)
    if is_dicom(path):
        import pydicom

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
        except Exception as err:  # noqa: BLE001 - pydicom raises many types for a damaged header
            log.info("%s: DICOM header not readable: %s", path, err)
            header = Header(path, dicom=True)
        else:
            image_type = ds.get("ImageType")
            header = Header(path, dicom=True, sop_class=str(ds.get("SOPClassUID", "")) or None,
                            series_uid=str(ds.get("SeriesInstanceUID", "")) or None,
                            image_type=tuple(str(v).upper() for v in ([image_type] if isinstance(image_type, str) else image_type or ())) or None,
                            pixels=int(ds.get("TotalPixelMatrixColumns") or 0) * int(ds.get("TotalPixelMatrixRows") or 0),
                            transfer_syntax=str(getattr(ds.file_meta, "TransferSyntaxUID", "")) or None)
    if len(_HEADERS) > 10_000:
        _HEADERS.clear()
    _HEADERS[key] = header
    return header


def dicom_files(folder: Path) -> list[Path]:
    """The `.dcm` files directly in `folder` (hidden ones left out), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() == DICOM_SUFFIX)


def _main_file(headers: list[Header]) -> Path:
    volumes = [h for h in headers if h.flavour == "VOLUME"]
    if volumes:
        return max(volumes, key=lambda h: (h.pixels, -headers.index(h))).path  # the largest; the first name on a tie
    return headers[0].path


def series_in(folder: Path) -> list[Series]:
    """The DICOM series of the `.dcm` files directly in `folder`, in the order of their first file's name.
    Files of no series (not DICOM, no SeriesInstanceUID) are each a series of their own, so they are listed
    (and fail with their reason when opened) rather than dropped."""
    groups: dict[str, list[Header]] = {}
    for path in dicom_files(folder):
        header = read_header(path)
        groups.setdefault(header.series_uid or f"file:{path.name}", []).append(header)
    return [Series(Path(folder), None if key.startswith("file:") else key, tuple(h.path for h in headers), _main_file(headers))
            for key, headers in groups.items()]


def series_of(path: Path) -> Series:
    """The series `path` (a `.dcm` file, or a folder holding exactly one series) belongs to."""
    path = Path(path)
    if path.is_dir():
        found = series_in(path)
        if len(found) != 1:
            what = "no DICOM (.dcm) files" if not found else f"{len(found)} DICOM series ({', '.join(s.main.name for s in found)})"
            raise ValueError(f"{path} is a folder, not a slide: a folder is opened as a slide only when it holds one DICOM WSI "
                             f"series, and it holds {what}")
        return found[0]
    header = read_header(path)
    if header.series_uid is None:
        return Series(path.parent, None, (path,), path)
    for series in series_in(path.parent):
        if series.uid == header.series_uid:
            return series
    return Series(path.parent, header.series_uid, (path,), path)  # a hidden file (an upload in progress) is not listed


def _uid_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid


def why_not_openslide(path: Path, error: str) -> str:
    """What keeps OpenSlide from reading the DICOM file `path`, as the end of a sentence, from its header
    first and else from OpenSlide's `error` (with the file's folder left out of it)."""
    header = read_header(path)
    series = series_of(path)
    flavours = {read_header(f).flavour for f in series.files}
    if not header.dicom:
        return "it is not a DICOM file"
    if header.sop_class is None and header.series_uid is None:
        return "its header cannot be read"
    if header.sop_class != WSI_SOP_CLASS:
        return (f"its SOP Class UID (0008,0016) is {_uid_name(header.sop_class) if header.sop_class else 'missing'}, "
                f"not VL Whole Slide Microscopy Image Storage ({WSI_SOP_CLASS})")
    if header.image_type is None:
        return ("it has no ImageType (0008,0008), the attribute that says whether a file is the slide's image (VOLUME) "
                "or its label, overview or thumbnail")
    if header.flavour is None:
        value = "\\".join(header.image_type)
        return f"its ImageType (0008,0008) is {value}, whose third value is none of {', '.join(FLAVOURS)}"
    if not header.pixels:
        return "it has no TotalPixelMatrixColumns/Rows (0048,0006)/(0048,0007), the size of the slide's image"
    if "VOLUME" not in flavours:
        return (f"it is a {header.flavour} image and no VOLUME image (the slide itself) of its series "
                f"(SeriesInstanceUID {header.series_uid}) lies beside it")
    match = re.search(r"[Uu]nsupported transfer syntax\s+([0-9.]+)", error)
    if match:
        return f"its pixels are encoded as {_uid_name(match.group(1))}, a transfer syntax OpenSlide does not decode"
    text = error.replace(str(path.parent) + "/", "").replace(str(path), path.name)
    return f"OpenSlide says: {text}"

