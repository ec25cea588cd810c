"""The pooled demo slide (`pcam_core.slides.demo_pooled`): a small one written through `pcam demo-slide --pooled` opens in
OpenSlide and tiffslide with its resolution and levels, its tissue share is what was asked, its levels agree, its tumour
is the demo renderer's where the truth says; the layout at CAMELYON16's size."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pcam_core.cli import main
from pcam_core.slides.demo import DemoSlideSpec, TissueRenderer, level_tags, truth_mask
from pcam_core.slides.demo_pooled import BLOCK, _block_px, _Writer, make_pooled_demo_slide, pooled_layout
from pcam_core.slides.reader import open_slide
from pcam_core.slides.tissue import read_thumbnail, tissue_mask

SIZE = 4096  # 4 x 4 blocks: glass, tissue and blocks drawn in place; levels 1, 2, 4, 8 (8: a tile is 2 x 2 blocks)


@pytest.fixture(scope="module")
def pooled(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pooled")
    assert main(["demo-slide", "--out", str(out), "--size", f"{SIZE}x{SIZE}", "--pooled", "--tissue-share", "0.4",
                 "--pool", "1", "--draw-workers", "1"]) == 0
    return out


@pytest.mark.slow
def test_pooled_slide_opens_in_openslide_and_tiffslide_with_its_resolution_and_levels(pooled):
    import openslide
    import tiffslide

    levels = tuple((SIZE // d, SIZE // d) for d in (1, 2, 4, 8))
    with openslide.OpenSlide(str(pooled / "slide.tif")) as osr:
        assert osr.properties["openslide.vendor"] == "generic-tiff"
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.243, rel=1e-6)
        assert osr.level_dimensions == levels
        assert "SYNTHETIC" in osr.properties["tiff.ImageDescription"]
        a = np.asarray(osr.read_region((1000, 1500), 2, (300, 200)).convert("RGB"))
    with tiffslide.TiffSlide(pooled / "slide.tif") as tsl:
        assert tsl.level_dimensions == levels
        assert float(tsl.properties["tiffslide.mpp-x"]) == pytest.approx(0.243, rel=1e-4)
        b = np.asarray(tsl.read_region((1000, 1500), 2, (300, 200)).convert("RGB"))
    assert np.array_equal(a, b)
    truth = json.loads((pooled / "truth.json").read_text())
    assert truth["synthetic"] is True and truth["levels"] == [1, 2, 4, 8]
    assert truth["layout"]["blocks"]["glass"] and truth["layout"]["blocks"]["tissue"] and truth["layout"]["blocks"]["drawn_in_place"]


def test_pooled_slide_has_the_tissue_share_asked_for_as_the_analysis_sees_it(pooled):
    with open_slide(pooled / "slide.tif") as slide:
        share = tissue_mask(read_thumbnail(slide)).mean()
    assert share == pytest.approx(0.4, abs=0.06)
    assert json.loads((pooled / "truth.json").read_text())["layout"]["tissue_share"] == pytest.approx(0.4, abs=0.03)


def test_pooled_slide_levels_agree(pooled):
    """Each level is its block's pixels resampled: level 0 shrunk 4x and level 3 are level 2 within JPEG's error (the
    demo slide written whole differs by as much: 8-10 grey levels)."""
    with open_slide(pooled / "slide.tif") as slide:
        two = slide.read_region(1024, 1024, 2, 512, 512)  # 2 x 2 blocks, tissue among them
        zero = np.asarray(Image.fromarray(slide.read_region(1024, 1024, 0, 2048, 2048)).reduce(4))
        three = slide.read_region(1024, 1024, 3, 256, 256)
    assert np.abs(zero.astype(int) - two).mean() < 8
    assert np.abs(three.astype(int) - np.asarray(Image.fromarray(two).reduce(2))).mean() < 8


def test_pooled_slide_tumour_is_drawn_where_its_truth_says(pooled):
    truth = json.loads((pooled / "truth.json").read_text())
    assert [r["name"] for r in truth["regions"]] == ["itc"]  # the only candidate that fits a slide this small
    spec = DemoSlideSpec(width=SIZE, height=SIZE)
    blobs, regions = pooled_layout(spec, 0.4)
    assert np.array_equal(np.load(pooled / "truth.npy"), truth_mask(spec, regions)) and np.load(pooled / "truth.npy").any()
    assert Image.open(pooled / "truth.png").size == (SIZE // 32, SIZE // 32)
    region = regions[0]
    x0, y0 = int(region.cx // 4) - 64, int(region.cy // 4) - 64  # level 2 is PCam scale
    f = BLOCK / _block_px(spec.mpp)
    drawn = TissueRenderer(spec, regions, blobs, f=f).render(y0, x0, 128, 128)
    without = TissueRenderer(spec, [], blobs, f=f).render(y0, x0, 128, 128)
    with open_slide(pooled / "slide.tif") as slide:
        written = slide.read_region(4 * x0, 4 * y0, 2, 128, 128).astype(int)
    assert np.abs(written - drawn).mean() < 8  # JPEG's error (5.7 measured: dense nuclei, chroma subsampled)
    assert np.abs(written - without).mean() > 3 * np.abs(written - drawn).mean()  # the tumour is there


def test_pooled_tiles_are_encoded_as_tifffile_encodes_them():
    import tifffile

    spec = DemoSlideSpec(width=512, height=512)
    pixels = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tif:
        tif.write(pixels, **level_tags(spec, 0, 1))
    buffer.seek(0)
    with tifffile.TiffFile(buffer) as tif:
        page = tif.pages[0]
        tif.filehandle.seek(page.dataoffsets[1])
        theirs = tif.filehandle.read(page.databytecounts[1])
    empty = np.zeros((1, 1), dtype=np.int8)
    assert _Writer(spec, empty, empty, pixels[None], pixels[None], empty).encode(pixels[:256, 256:]) == theirs


def test_camelyon_size_layout_covers_a_quarter_with_every_candidate_region():
    spec = DemoSlideSpec(width=100_000, height=220_000)
    blobs, regions = pooled_layout(spec)
    f = BLOCK / _block_px(spec.mpp)
    share = sum(math.pi * b.a * b.b for b in blobs) / (spec.width / f * spec.height / f)
    assert share == pytest.approx(0.25, abs=0.01) and len(blobs) == 3
    assert [r.name for r in regions] == ["macro", "micro", "micro_small", "itc"]
    renderer = TissueRenderer(spec, regions, blobs, f=f)
    for r in regions:  # each region lies inside tissue
        edge = np.full((1, 1), 0.5)
        assert renderer.tissue(np.array([[r.cy / f]]), np.array([[r.cx / f]]), edge).all()


@pytest.mark.parametrize("spec, options, message", [
    (DemoSlideSpec(width=4096, height=4096, mpp=2.0), {}, "mpp"),
    (DemoSlideSpec(width=4096, height=4096, levels=(1, 3)), {}, "powers of two"),
    (DemoSlideSpec(width=4096, height=4096), {"tissue_share": 0.9}, "tissue share"),
    (DemoSlideSpec(width=4096, height=4096), {"pool": 0}, "pool"),
])
def test_pooled_slide_refuses_what_it_cannot_write(tmp_path, spec, options, message):
    with pytest.raises(ValueError, match=message):
        make_pooled_demo_slide(tmp_path, spec, **options)
    assert not (tmp_path / "slide.tif").exists()
