"""Reading JPEG tiles directly (`pcam_core.slides.tiledtiff`) gives OpenSlide's pixels bit for bit: on the real Aperio
scan, on a demo slide's every level, past the edges, over tiles a file leaves out, and for the windows an analysis
cuts from a slide of real patches; the reads it does not make (a fractional level position, JPEG 2000) go to
OpenSlide."""

from __future__ import annotations

import numpy as np
import openslide
import pytest

from helpers import REPO, real_mosaic_slide
from pcam_core.slides.analysis import Lattice, RegionWindows
from pcam_core.slides.demo import DemoSlideSpec, make_demo_slide
from pcam_core.slides.reader import DIRECT_TILES_ENV, _rgb, open_slide
from pcam_core.slides.tiledtiff import TiledLevels

SLIDES = REPO / "tests" / "data" / "slides"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A 1,200 x 1,000 demo slide, levels 1, 2, 4: partial tiles at the right and bottom of every level."""
    out = tmp_path_factory.mktemp("demo")
    make_demo_slide(out, DemoSlideSpec(width=1200, height=1000, levels=(1, 2, 4), seed=0))
    return out / "slide.tif"


def _boxes(level, n: int, seed: int) -> list[tuple[int, int, int, int]]:
    """`n` boxes (level x, y, w, h) of `level`, some reaching past its edges or wholly outside it."""
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(-300, level.width + 50)), int(rng.integers(-300, level.height + 50)),
             int(rng.integers(1, 500)), int(rng.integers(1, 500))) for _ in range(n)]


@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs", "demo"])
def test_direct_tiles_are_openslides_pixels(name, demo):
    path = demo if name == "demo" else SLIDES / name
    with open_slide(path) as slide:
        tiles = slide._backend.tiles
        assert tiles is not None and tiles.levels == list(range(len(slide.levels)))
        handle = slide._backend.handle
        for index, level in enumerate(slide.levels):
            for lx, ly, w, h in _boxes(level, 8, index):
                x0, y0 = round(lx * level.downsample), round(ly * level.downsample)
                ours = tiles.read(x0, y0, index, w, h)
                assert ours is not None and np.array_equal(ours, _rgb(np.asarray(handle.read_region((x0, y0), index, (w, h))))), \
                    f"level {index} box {(lx, ly, w, h)}"


def test_a_fractional_level_position_and_jpeg2000_are_left_to_openslide(demo, monkeypatch):
    with open_slide(demo) as slide:
        assert slide._backend.tiles.read(402, 801, 2, 96, 96) is None  # level 2 of a 4x pyramid: x 100.5, y 200.25
        direct = slide.read_region(402, 801, 2, 96, 96)
    monkeypatch.setenv(DIRECT_TILES_ENV, "0")
    with open_slide(demo) as slide:
        assert slide._backend.tiles is None
        assert np.array_equal(direct, slide.read_region(402, 801, 2, 96, 96))  # OpenSlide interpolates: the same call
    with open_slide(SLIDES / "tcga-cr-7395-01a-01-ts1.svs", mpp=0.25) as slide:
        assert slide._backend.tiles is None


def test_tiles_a_file_leaves_out_read_white_as_in_openslide(demo, tmp_path):
    import tifffile

    path = tmp_path / "sparse.tif"
    path.write_bytes(demo.read_bytes())
    with tifffile.TiffFile(path, mode="r+b") as tif:
        page = tif.pages[0]
        counts, offsets = list(page.databytecounts), list(page.dataoffsets)
        for k in range(0, len(counts), 3):
            counts[k] = offsets[k] = 0
        page.tags["TileByteCounts"].overwrite(counts)
        page.tags["TileOffsets"].overwrite(offsets)
    with open_slide(path) as slide:
        ours = slide.read_region(0, 0, 0, 1200, 1000)
        theirs = _rgb(np.asarray(openslide.OpenSlide(str(path)).read_region((0, 0), 0, (1200, 1000))))
    assert np.array_equal(ours, theirs) and (ours[:256, :256] == 255).all()


def test_region_windows_of_real_patches_are_the_same_with_and_without_direct_tiles(tmp_path, monkeypatch):
    """The analysis's windows (and so its map, a function of them) on a slide of real patches, both paths."""
    path, _ = real_mosaic_slide(tmp_path, cols=4, rows=3, tumour=(1, 2, 1, 3))
    with open_slide(path) as slide:
        lattice = Lattice(*slide.dimensions, slide.mpp, 32, 128)
    score = np.ones(lattice.shape, bool)
    tiles = list(range(len(lattice.tiles())))

    def windows(env: str) -> list[tuple[np.ndarray, np.ndarray]]:
        monkeypatch.setenv(DIRECT_TILES_ENV, env)
        return [(item["cells"], item["images"].numpy()) for item in RegionWindows(path, lattice.mpp, lattice, tiles, score)]

    direct, openslide_only = windows("1"), windows("0")
    assert sum(len(c) for c, _ in direct) == score.sum()
    for (cells, images), (cells0, images0) in zip(direct, openslide_only, strict=True):
        assert np.array_equal(cells, cells0) and np.array_equal(images, images0)


def test_not_a_tiled_tiff_has_no_direct_levels(tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 64), "white").save(tmp_path / "plain.tif")
    assert TiledLevels.of(tmp_path / "plain.tif", [], "generic-tiff") is None
    assert TiledLevels.of(SLIDES / "CMU-1-Small-Region.svs", [], "hamamatsu") is None
