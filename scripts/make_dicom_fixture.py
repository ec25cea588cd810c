"""Write the DICOM WSI test fixture: the CC0 scan tests/data/slides/CMU-1-Small-Region.svs as one DICOM series.

    python scripts/make_dicom_fixture.py [--out tests/data/slides/CMU-1-Small-Region-dicom]

`wsidicomizer` (requirements-test.txt; it needs Debian's libturbojpeg0) writes the series as a scanner does: one
file per image (the VOLUME, its LABEL, OVERVIEW and THUMBNAIL), each named by its SOP Instance UID, the SVS's
JPEG tiles copied as they are (no re-encoding, so the pixels are the SVS's). The UIDs come from a fixed seed and the
content date and the ICC profile's creation date are the scan's own (2009-12-29 09:59:15), so a rerun writes the same
bytes; the files are written to a temporary folder beside `--out` and moved in at the end.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "tests" / "data" / "slides" / "CMU-1-Small-Region.svs"
OUT = REPO / "tests" / "data" / "slides" / "CMU-1-Small-Region-dicom"
UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's root for generated UIDs
SCANNED = (2009, 12, 29, 9, 59, 15)  # CMU-1's Aperio "Date"/"Time"


def _fixed_dates(path: Path) -> None:
    """The scan's date where wsidicom writes the time of conversion (ContentDate/Time, the ICC profile's header)."""
    import pydicom

    dataset = pydicom.dcmread(path)
    y, mo, d, h, mi, s = SCANNED
    dataset.ContentDate, dataset.ContentTime = f"{y:04d}{mo:02d}{d:02d}", f"{h:02d}{mi:02d}{s:02d}"
    stamp = b"".join(v.to_bytes(2, "big") for v in SCANNED)  # ICC header bytes 24-35: dateTimeNumber
    for item in dataset.get("OpticalPathSequence", []):
        if "ICCProfile" in item:
            item.ICCProfile = item.ICCProfile[:24] + stamp + item.ICCProfile[36:]
    dataset.save_as(path, enforce_file_format=True)


def write_series(source: Path, out: Path, *, seed: str = "pcam-dicom-fixture") -> list[Path]:
    """Convert `source` to a DICOM WSI series in `out` (replaced); the UIDs are derived from `seed`."""
    from pydicom.uid import generate_uid
    from wsidicomizer import WsiDicomizer

    counter = itertools.count()

    def uid() -> str:
        return generate_uid(prefix=UID_PREFIX, entropy_srcs=[seed, str(next(counter))])

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for name in WsiDicomizer.convert(source, tmp, uid_generator=uid, workers=1):
            _fixed_dates(Path(name))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(out.iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE, help="the slide to convert (default: the CC0 CMU-1-Small-Region.svs)")
    parser.add_argument("--out", type=Path, default=OUT, help="the series folder to write (replaced)")
    args = parser.parse_args()
    for path in write_series(args.source, args.out):
        print(f"{path.stat().st_size:>10,}  {path}")


if __name__ == "__main__":
    main()
