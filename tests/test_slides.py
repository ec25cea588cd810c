"""Whole slides: the reader's backends, the demo slide, the lattice's alignment, the outputs, bad input,
resume after kill -9, and a mosaic of real patches. Slides are small ones the tests write themselves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from helpers import REPO, cli_here, run_cli
from pcam_core.slides.analysis import Lattice
from pcam_core.slides.batch import analyse_slide
from pcam_core.slides.demo import DemoSlideSpec, make_demo_slide
from pcam_core.staging import size_class
from pcam_core.slides.folder import AnalysisFolder
from pcam_core.slides.outputs import tumour_regions
from pcam_core.slides.reader import PCAM_MPP, _TiffSlideBackend, open_slide
from pcam_core.transforms import PCAM_MEAN, PCAM_STD

RED = (255, 0, 0)


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory) -> Path:
    """A 4,000 x 3,000 SYNTHETIC demo slide (levels 1, 2, 4) with its truth."""
    out = tmp_path_factory.mktemp("demo-slide")
    make_demo_slide(out, DemoSlideSpec(width=4000, height=3000, seed=0))
    return out


class RedCentreModel(nn.Module):
    """A real model with a known answer: tumour logit from the share of pure-red pixels in the central 32x32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(PCAM_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(PCAM_STD, device=x.device).view(1, 3, 1, 1)
        rgb = (x * std + mean)[:, :, 32:64, 32:64]
        red = ((rgb[:, 0] > 0.9) & (rgb[:, 1] < 0.1) & (rgb[:, 2] < 0.1)).float().mean(dim=(1, 2))
        return 20 * (red - 0.5)


def _analyse(slide: Path, out: Path, **options) -> dict:
    return analyse_slide(RedCentreModel(), slide, AnalysisFolder(out), run="test", checkpoint="red-centre", checkpoint_epoch=None,
                         model_name="red-centre", num_workers=0, **options)


def _png_slide(path: Path, size: tuple[int, int], tissue: tuple[int, int, int, int] | None, red: tuple[int, int, int, int] | None) -> Path:
    """A plain PNG: white, a pink tissue box and a pure-red block (x0, y0, x1, y1 in pixels)."""
    pixels = np.full((size[1], size[0], 3), 250, dtype=np.uint8)
    if tissue:
        x0, y0, x1, y1 = tissue
        pixels[y0:y1, x0:x1] = (225, 140, 190)
    if red:
        x0, y0, x1, y1 = red
        pixels[y0:y1, x0:x1] = RED
    Image.fromarray(pixels).save(path)
    return path


def _real_mosaic(images: np.ndarray, labels: np.ndarray, *, per_row: int, seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Real 96-px patches side by side on glass (off-white with noise), tumour patches first (the top rows: a
    known region), one glass block of margin. Patch k is centred on stride-32 cell (i, j) at PCam scale; returns
    the canvas and (i, j, label) per patch."""
    order = np.argsort(-labels.astype(np.int64), kind="stable")
    rows = -(-len(order) // per_row)
    rng = np.random.default_rng(seed)
    canvas = np.clip(rng.normal((242, 241, 244), 3, ((rows + 2) * 96, (per_row + 2) * 96, 3)), 0, 255).astype(np.uint8)
    centres = []
    for n, k in enumerate(order):
        r, c = 1 + n // per_row, 1 + n % per_row
        canvas[96 * r: 96 * r + 96, 96 * c: 96 * c + 96] = images[k]
        centres.append((3 * r + 1, 3 * c + 1, int(labels[k])))
    return canvas, centres


# -- reader ----------------------------------------------------------------------------------------

def test_demo_slide_opens_in_openslide_with_its_resolution(small_slide):
    import openslide

    with openslide.OpenSlide(str(small_slide / "slide.tif")) as osr:
        assert osr.properties["openslide.vendor"] == "generic-tiff"
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.243, rel=1e-6)
        assert osr.level_dimensions == ((4000, 3000), (2000, 1500), (1000, 750))
        assert "SYNTHETIC" in osr.properties["tiff.ImageDescription"]
    truth = json.loads((small_slide / "truth.json").read_text())
    assert truth["synthetic"] is True
    assert np.load(small_slide / "truth.npy").any()
    assert Image.open(small_slide / "truth.png").size == (125, 94)  # one pixel per 32 level-0 pixels


@pytest.mark.slow
def test_openslide_and_tiffslide_backends_read_the_same_pixels(small_slide):
    slide = open_slide(small_slide / "slide.tif")
    assert slide.backend == "openslide" and slide.mpp == pytest.approx(0.243)
    fallback = _TiffSlideBackend(small_slide / "slide.tif")
    assert fallback.mpp() == pytest.approx(0.243, rel=1e-4)
    for level, (x0, y0) in [(0, (1000, 1100)), (2, (0, 0)), (1, (3900, 2900))]:  # the last reaches past the edge
        a = slide.read_region(x0, y0, level, 300, 200).astype(int)
        b = fallback.read(x0, y0, level, 300, 200).astype(int)
        assert a.shape == b.shape == (200, 300, 3)
        assert np.abs(a - b).mean() < 1.0, f"level {level}: backends differ"
    edge = slide.read_region(3900, 2900, 0, 300, 200)
    assert (edge[150:, 150:] == 255).all(), "outside the slide reads as white"


def test_read_at_pcam_scale_uses_level_2_without_resampling(small_slide):
    slide = open_slide(small_slide / "slide.tif")
    assert slide.best_level(PCAM_MPP / slide.mpp) == 2
    direct = slide.read_region(400, 800, 2, 96, 96)
    assert np.array_equal(slide.read_scaled(400, 800, 384, 384, (96, 96)), direct)
    assert slide.read_scaled(0, 0, 4000, 3000, (100, 75)).shape == (75, 100, 3)  # resampled from level 2


def test_region_windows_are_the_windows_read_one_by_one(small_slide):
    """The fast path (one read of the box around a tile's cells, windows cut channels-first) gives exactly the
    pixels of reading each window on its own (level 2 is at PCam scale: no resampling on either path)."""
    from pcam_core.slides.analysis import RegionWindows

    with open_slide(small_slide / "slide.tif") as slide:
        lattice = Lattice(*slide.dimensions, slide.mpp, 32, 256)
        score = np.zeros(lattice.shape, bool)
        score[[1, 3, 4, 2], [2, 7, 0, 9]] = True  # sparse cells in tiles 0 and 1, at their sides
        items = [item for item in RegionWindows(small_slide / "slide.tif", slide.mpp, lattice, [0, 1], score) if len(item["cells"])]
        assert len(items) == 2
        for item in items:
            for (i, j), image in zip(item["cells"], item["images"].numpy()):
                x, y = lattice.window_origin(i, j)
                alone = slide.read_scaled(float(x), float(y), 96 * lattice.f, 96 * lattice.f, (96, 96))
                assert np.array_equal(image, alone.transpose(2, 0, 1)), f"cell {(i, j)}"


def test_missing_resolution_is_a_clear_error_and_mpp_fixes_it(tmp_path):
    import tifffile

    path = tmp_path / "nores.tif"
    tifffile.imwrite(path, np.full((1024, 1024, 3), 200, np.uint8), tile=(256, 256), photometric="rgb")
    with pytest.raises(ValueError, match=r"nores\.tif.*--mpp"):
        open_slide(path)
    assert open_slide(path, mpp=0.5).mpp == 0.5


@pytest.mark.parametrize("content,match", [(b"", "empty"), (b"hello, not a slide\n" * 50, "not a slide")])
def test_not_a_slide_and_empty_file_are_refused(tmp_path, content, match):
    path = tmp_path / "bad.svs"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        open_slide(path)
    assert str(path) in str(info.value)


def test_truncated_slide_is_refused_naming_the_file(small_slide, tmp_path):
    data = (small_slide / "slide.tif").read_bytes()
    path = tmp_path / "truncated.tif"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as info:
        slide = open_slide(path)
        _analyse(path, tmp_path / "out")  # when the header survives, reading the overview fails
        slide.close()
    assert "truncated.tif" in str(info.value)


def test_real_patches_count_as_tissue_and_glass_does_not(real_kaggle, tmp_path):
    """The 160 real fixture patches on glass: the centre cells of nearly all count as tissue (Otsu on saturation
    alone took 72%: pale eosin fell with the glass), and no glass cell away from the patches does; tinted and
    dim glass alone is no tissue."""
    from pcam_core.slides.tissue import cell_fraction, read_thumbnail, tissue_mask

    table = pd.read_csv(real_kaggle / "train_labels.csv", dtype={"id": str})
    images = np.stack([np.asarray(Image.open(real_kaggle / "train" / f"{i}.tif").convert("RGB")) for i in table["id"]])
    canvas, centres = _real_mosaic(images, table["label"].to_numpy(), per_row=16)
    path = tmp_path / "mosaic.png"
    Image.fromarray(canvas).save(path)
    with open_slide(path, mpp=PCAM_MPP) as slide:
        lattice = Lattice(*slide.dimensions, slide.mpp, 32)
        fraction = cell_fraction(tissue_mask(read_thumbnail(slide)), 32, lattice.shape)
    counted = np.mean([fraction[i, j] >= 0.25 for i, j, _ in centres])
    print(f"real patches: {counted:.0%} of the centre cells count as tissue")
    assert counted > 0.8
    glass = np.ones(lattice.shape, bool)
    glass[2:-2, 2:-2] = False  # the outer two cells of the one-patch margin never touch a patch
    assert fraction[glass].max() == 0
    rng = np.random.default_rng(1)
    for tint in ((236, 240, 246), (246, 240, 232), (222, 222, 224)):  # thumbnail pixels: the mean of 64, little noise
        blank = np.clip(rng.normal(tint, 1, (200, 300, 3)), 0, 255).astype(np.uint8)
        assert not tissue_mask(blank).any(), f"glass of colour {tint} taken for tissue"


def test_the_banded_saturation_is_skimages_hsv_saturation_bit_for_bit():
    """`tissue.saturation` computes band by band what `rgb2hsv` computes on the whole image (2 GB of float64 at
    CAMELYON size): the same values, black, grey and saturated pixels and the band edges included."""
    from skimage.color import rgb2hsv

    from pcam_core.slides.tissue import BAND_ROWS, saturation

    rng = np.random.default_rng(0)
    thumb = rng.integers(0, 256, (BAND_ROWS + 37, 60, 3), dtype=np.uint8)
    thumb[:3], thumb[3:6] = 0, 200  # black (0 / 0) and grey (no saturation)
    assert np.array_equal(saturation(thumb), rgb2hsv(thumb)[..., 1])


# -- the lattice and the outputs ---------------------------------------------------------------------

@pytest.mark.slow
def test_a_block_at_known_coordinates_lands_in_its_cells_and_polygon(tmp_path):
    # at 0.486 um/px a PCam pixel is 2 level-0 pixels and a cell (stride 32) 64: the block covers cells
    # rows 6..13 and columns 10..19 exactly
    slide = _png_slide(tmp_path / "block.png", (2000, 1500), tissue=(200, 200, 1800, 1300), red=(640, 384, 1280, 896))
    out = tmp_path / "out"
    summary = _analyse(slide, out, mpp=PCAM_MPP / 2)
    heat = np.load(out / "heatmap.npy")
    assert heat.shape == (24, 32) and heat.dtype == np.float32
    positive = np.argwhere(np.nan_to_num(heat) >= 0.5)
    assert positive[:, 0].min() == 6 and positive[:, 0].max() == 13
    assert positive[:, 1].min() == 10 and positive[:, 1].max() == 19
    assert len(positive) == 8 * 10
    assert np.isnan(heat[0, 0]), "background is not scored"
    regions = json.loads((out / "tumour_regions.geojson").read_text())["features"]
    assert len(regions) == 1
    ring = np.array(regions[0]["geometry"]["coordinates"][0])
    assert ring[:, 0].min() == pytest.approx(640, abs=9) and ring[:, 0].max() == pytest.approx(1280, abs=9)
    assert ring[:, 1].min() == pytest.approx(384, abs=9) and ring[:, 1].max() == pytest.approx(896, abs=9)
    props = regions[0]["properties"]
    cell_mm = 64 * PCAM_MPP / 2 / 1000
    assert props["area_mm2"] == pytest.approx(80 * cell_mm**2)
    assert props["longest_diameter_mm"] == pytest.approx(np.hypot(10, 8) * cell_mm, rel=0.05)
    assert summary["regions"] == 1 and summary["size_class"] == "micro" and summary["slide_score"] > 0.99
    tiles = pd.read_csv(out / "tiles.csv")
    first = tiles[(tiles["row"] == 6) & (tiles["col"] == 10)].iloc[0]
    assert (first["x"], first["y"]) == (10 * 64 - 64, 6 * 64 - 64)  # the window's top-left: one cell before its centre cell
    assert first["probability"] > 0.99
    assert len(tiles) == summary["windows_scored"] == int(np.isfinite(heat).sum())


@pytest.mark.slow
def test_stride_96_map_aligns_with_stride_32(tmp_path):
    slide = _png_slide(tmp_path / "block.png", (2000, 1500), tissue=(200, 200, 1800, 1300), red=(576, 384, 1344, 960))
    _analyse(slide, tmp_path / "s32", mpp=PCAM_MPP / 2)
    h32 = np.load(tmp_path / "s32" / "heatmap.npy")
    _analyse(slide, tmp_path / "s96", mpp=PCAM_MPP / 2, stride=96)
    h96 = np.load(tmp_path / "s96" / "heatmap.npy")
    assert h96.shape == (8, 11)
    # a stride-96 cell is the 3x3 block of stride-32 cells; its score is its centre cell's window
    rows, cols = np.nonzero(np.nan_to_num(h96) >= 0.5)
    for i, j in zip(rows, cols):
        assert h32[3 * i + 1, 3 * j + 1] >= 0.5


def test_heatmap_tif_opens_in_openslide_at_the_slides_size(tmp_path):
    import openslide

    slide = _png_slide(tmp_path / "block.png", (2000, 1500), tissue=(200, 200, 1800, 1300), red=(640, 384, 1280, 896))
    summary = _analyse(slide, tmp_path / "out", mpp=PCAM_MPP / 2)
    with openslide.OpenSlide(str(tmp_path / "out" / "heatmap.tif")) as osr:
        w, h = osr.dimensions
        mpp = float(osr.properties["openslide.mpp-x"])
        assert (w, h) == (32, 24)
        assert mpp == pytest.approx(summary["cell_um"], rel=1e-6)
        assert w * mpp == pytest.approx(2000 * PCAM_MPP / 2, abs=mpp) and h * mpp == pytest.approx(1500 * PCAM_MPP / 2, abs=mpp)
        pixel = np.asarray(osr.read_region((15 * 64, 10 * 64), 0, (1, 1)))[0, 0]
        assert tuple(pixel[:3]) != (255, 255, 255)  # a scored cell is coloured
    for name in ("heatmap.png", "tissue.png", "summary.json", "tiles.csv"):
        assert (tmp_path / "out" / name).exists()
    assert not (tmp_path / "out" / "progress.json").exists()


def test_a_slide_without_tissue_scores_zero_with_no_regions(tmp_path):
    slide = _png_slide(tmp_path / "blank.png", (1200, 900), tissue=None, red=None)
    summary = _analyse(slide, tmp_path / "out", mpp=0.5)
    assert summary["slide_score"] == 0.0 and summary["regions"] == 0 and summary["size_class"] == "none"
    assert summary["windows_scored"] == 0
    assert np.isnan(np.load(tmp_path / "out" / "heatmap.npy")).all()


def test_a_completed_analysis_is_not_redone_and_an_unfinished_one_needs_resume(tmp_path):
    from pcam_core.slides.analysis import score_slide

    slide = _png_slide(tmp_path / "block.png", (1200, 900), tissue=(100, 100, 1100, 800), red=(300, 300, 500, 500))
    folder = AnalysisFolder(tmp_path / "out")
    score_slide(RedCentreModel(), slide, folder, checkpoint="red", mpp=0.5, num_workers=0, region_px=256)
    assert folder.progress_json.exists()  # scored, but the outputs were never written: unfinished
    with pytest.raises(ValueError, match="--resume"):
        score_slide(RedCentreModel(), slide, folder, checkpoint="red", mpp=0.5, num_workers=0, region_px=256)
    with pytest.raises(ValueError, match="other settings"):
        score_slide(RedCentreModel(), slide, folder, checkpoint="red", mpp=0.5, num_workers=0, region_px=256, stride=96, resume=True)


def test_two_reading_workers_read_every_tile_once_in_contiguous_runs(small_slide):
    """Each DataLoader worker reads a contiguous run of the tiles (neighbours share decoded file tiles), the runs
    together every tile once, with the windows read in this process."""
    from torch.utils.data import DataLoader

    from pcam_core.slides.analysis import RegionWindows

    with open_slide(small_slide / "slide.tif") as slide:
        lattice = Lattice(*slide.dimensions, slide.mpp, 32, 256)
    score = np.zeros(lattice.shape, bool)
    score[::5, ::3] = True
    todo = list(range(1, len(lattice.tiles())))
    dataset = RegionWindows(small_slide / "slide.tif", lattice.mpp, lattice, todo, score)
    alone = {item["tile"]: item["images"].numpy() for item in dataset}
    items = list(DataLoader(dataset, batch_size=None, num_workers=2, collate_fn=lambda item: item))
    assert sorted(item["tile"] for item in items) == todo
    # the loader takes the workers' items in turn: the second item starts worker 1's run, well past worker 0's first tile
    order = [item["tile"] for item in items]
    start = order[1]
    assert start > todo[2] and [t for t in order if t < start] == todo[:todo.index(start)]
    assert [t for t in order if t >= start] == todo[todo.index(start):]
    for item in items:
        assert np.array_equal(item["images"].numpy(), alone[item["tile"]])


def test_the_heap_cap_of_a_slide_analysis_takes_on_this_glibc_linux():
    """`limit_malloc_arenas` sets glibc's M_ARENA_MAX here (every analysis calls it, in this process too)."""
    from pcam_core.devices import limit_malloc_arenas

    assert limit_malloc_arenas(1) is True and limit_malloc_arenas() is True


def test_a_tile_of_many_windows_comes_in_parts_whose_last_marks_the_tile_done(small_slide):
    """A region tile's windows come in items of at most WINDOWS_PER_ITEM (memory: a whole tile was 28 MB an item),
    one after another; together they are the tile's windows as one cut of its region, and only the last part says so."""
    from pcam_core.slides.analysis import WINDOWS_PER_ITEM, RegionWindows, cut_windows

    with open_slide(small_slide / "slide.tif") as slide:
        lattice = Lattice(*slide.dimensions, slide.mpp, 32, 1024)
        score = np.ones(lattice.shape, bool)
        i0, i1, j0, j1 = lattice.tiles()[0]
        n = (i1 - i0) * (j1 - j0)
        assert n > 2 * WINDOWS_PER_ITEM
        items = list(RegionWindows(small_slide / "slide.tif", slide.mpp, lattice, [0], score))
        x0, y0 = lattice.window_origin(i0, j0)
        side = lambda cells: 32 * (cells - 1) + 96  # noqa: E731
        region = slide.read_scaled(float(x0), float(y0), side(j1 - j0) * lattice.f, side(i1 - i0) * lattice.f,
                                   (side(j1 - j0), side(i1 - i0)))
    assert [len(item["cells"]) for item in items] == [WINDOWS_PER_ITEM] * (n // WINDOWS_PER_ITEM) + ([n % WINDOWS_PER_ITEM] if n % WINDOWS_PER_ITEM else [])
    assert [item["last"] for item in items] == [False] * (len(items) - 1) + [True] and {item["tile"] for item in items} == {0}
    cells = np.concatenate([item["cells"] for item in items])
    assert np.array_equal(cells, np.argwhere(score[i0:i1, j0:j1]) + [i0, j0])
    np.testing.assert_array_equal(np.concatenate([item["images"].numpy() for item in items]), cut_windows(region, cells - [i0, j0], 32))


@pytest.mark.slow  # writes and scores a whole demo slide window by window around the bad tile
def test_a_corrupt_tile_is_skipped_marked_unknown_and_listed_and_the_rest_is_scored(tmp_path):
    import tifffile

    # level 0 at PCam scale: the analysis reads level 0, the overview level 1, and one level-0 tile is zeroed
    make_demo_slide(tmp_path / "demo", DemoSlideSpec(width=1536, height=1024, mpp=PCAM_MPP, seed=0))
    path = tmp_path / "demo" / "slide.tif"
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        across = -(-page.shape[1] // page.tilewidth)
        k = 2 * across + 3  # level-0 pixels x 768..1024, y 512..768: cells rows 16..23, columns 24..31
        offset, count = page.dataoffsets[k], page.databytecounts[k]
    data = bytearray(path.read_bytes())
    data[offset:offset + count] = bytes(count)
    path.write_bytes(bytes(data))
    out = tmp_path / "out"
    summary = _analyse(path, out, region_px=256)
    heat = np.load(out / "heatmap.npy")
    unknown = np.argwhere(heat == -1)
    assert len(unknown), "the cells over the corrupt tile are marked unknown"
    # only windows touching the bad tile are lost: their cells lie within one cell of it
    assert unknown[:, 0].min() >= 15 and unknown[:, 0].max() <= 24 and unknown[:, 1].min() >= 23 and unknown[:, 1].max() <= 32
    assert (heat[17:23, 25:31] == -1).all()
    on_disk = json.loads((out / "summary.json").read_text())
    skipped = on_disk["skipped_regions"]
    assert skipped and sum(s["unreadable_cells"] for s in skipped) == len(unknown) == on_disk["cells_unreadable"]
    for s in skipped:  # each listed box of lost windows overlaps the bad tile
        assert "slide.tif" in s["error"] and s["x"] < 1024 and s["x"] + s["width"] > 768 and s["y"] < 768 and s["y"] + s["height"] > 512
    scored = np.isfinite(heat) & (heat != -1)
    assert scored.sum() > 5 * len(unknown) and summary["windows_scored"] == scored.sum()


def test_size_classes_and_diameters_of_the_demo_slide_match_its_truth(small_slide):
    """The map's geometry on the demo slide's own truth: cells holding tumour, traced into regions."""
    truth = json.loads((small_slide / "truth.json").read_text())
    mask = np.load(small_slide / "truth.npy")
    lattice = Lattice(truth["width"], truth["height"], truth["mpp"], 32)
    k = round(lattice.cell_px / truth["truth_downsample"])  # truth pixels per cell
    rows, cols = lattice.shape
    padded = np.zeros((rows * k, cols * k), bool)
    padded[: mask.shape[0], : mask.shape[1]] = mask
    heat = padded.reshape(rows, k, cols, k).any(axis=(1, 3)).astype(np.float32)
    found = tumour_regions(heat, lattice, 0.5)
    assert len(found) == len(truth["regions"]) >= 2
    for region in truth["regions"]:
        near = min(found, key=lambda f: np.hypot(f["properties"]["centroid_x"] - region["cx"], f["properties"]["centroid_y"] - region["cy"]))
        measured = near["properties"]["longest_diameter_mm"]
        assert measured == pytest.approx(region["diameter_mm"], abs=2 * lattice.cell_mm)
        assert near["properties"]["area_mm2"] == pytest.approx(region["area_mm2"], rel=0.6)
    assert [size_class(d) for d in (0.0, 0.15, 0.2, 0.21, 2.0, 2.5)] == ["none", "itc", "itc", "micro", "micro", "macro"]
    assert {r["size_class"] for r in truth["regions"]} == {"itc", "micro"}


def test_default_demo_slide_has_itc_micro_and_macro_regions():
    from pcam_core.slides.demo import default_regions

    regions = default_regions(20_000, 16_000, 0.243)
    assert {size_class(r.diameter_mm) for r in regions} == {"itc", "micro", "macro"}


# -- slow: the CLI, kill -9, a folder, real patches ---------------------------------------------------

_RESUMABLE = """
import sys
from pcam_core.scoring_options import ScoringOptions
from pcam_core.slides.batch import analyse
analyse(sys.argv[1], sys.argv[2], sys.argv[3], ScoringOptions(workers=0, batch_size=64, tta=False), region_px=256,
        resume='--resume' in sys.argv)
"""


@pytest.mark.slow
def test_resume_after_kill_9_gives_the_same_map(small_slide, trained_run, tmp_path, capsys):
    slide = small_slide / "slide.tif"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    full = tmp_path / "full"
    subprocess.run([sys.executable, "-c", _RESUMABLE, str(trained_run), str(slide), str(full)], check=True, env=env, cwd=REPO)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _RESUMABLE, str(trained_run), str(slide), str(killed)], env=env, cwd=REPO)
    deadline = time.time() + 300
    while time.time() < deadline:
        done = (json.loads((killed / "progress.json").read_text()).get("done", []) if (killed / "progress.json").exists() else [])
        if len(done) >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists(), "killed before the end"
    subprocess.run([sys.executable, "-c", _RESUMABLE, str(trained_run), str(slide), str(killed), "--resume"], check=True, env=env, cwd=REPO)
    a, b = np.load(full / "heatmap.npy"), np.load(killed / "heatmap.npy")
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5, equal_nan=True)
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["resumed"] is True
    again = cli_here(capsys, "slide", "--run", str(trained_run), "--input", str(slide), "--out", str(killed), "--workers", "0")
    assert again.returncode == 0 and "already done" in again.stdout


@pytest.mark.slow
def test_cli_folder_with_one_bad_slide_finishes_the_others(small_slide, trained_run, tmp_path, capsys):
    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / "a_good.tif").symlink_to(small_slide / "slide.tif")
    (slides / "b_broken.svs").write_bytes(b"not a slide at all" * 100)
    (slides / "c_empty.ndpi").write_bytes(b"")
    out = tmp_path / "out"
    result = run_cli("slide", "--run", str(trained_run), "--input", str(slides), "--out", str(out), "--workers", "1")
    assert result.returncode == 1, result.stderr
    assert "b_broken.svs" in result.stderr and "c_empty.ndpi" in result.stderr and "2 of 3 slide(s) failed" in result.stderr
    summary = json.loads((out / "a_good" / "summary.json").read_text())
    truth = json.loads((small_slide / "truth.json").read_text())
    assert summary["windows_scored"] > 100 and summary["model"] == "pcamnet"
    # the model's line in the summary (the page and the report show it): not "Trained on lymph-node H&E" (QA)
    assert summary["scope"]["line"] == "Trained on SYNTHETIC demo patches only: its calls say nothing about real tissue."
    print("demo slide with the synthetic-trained run:", {k: summary[k] for k in ("slide_score", "regions", "largest_diameter_mm", "size_class")},
          "truth:", truth["largest_diameter_mm"], truth["size_class"])
    shard = cli_here(capsys, "slide", "--run", str(trained_run), "--input", str(slides), "--out", str(tmp_path / "shard"), "--shard", "1/3", "--workers", "0")
    assert shard.returncode == 1 and "b_broken.svs" in shard.stderr and not (tmp_path / "shard" / "a_good").exists()


@pytest.mark.slow
def test_real_patch_mosaic_is_found_by_a_model_trained_on_real_patches(real_h5, tmp_path, capsys):
    """A slide of the 64 real patches of the HDF5 valid and test splits, tumour patches together in the top
    rows (a known region), scored by a model trained here on the 96 real patches of the train split (its last
    checkpoint: the valid split picks nothing). Each patch is centred on a stride-32 cell, whose window is then
    exactly the patch; the cell-level ROC-AUC against the patches' labels is asserted and printed."""
    import h5py
    from sklearn.metrics import roc_auc_score

    run = tmp_path / "real-run"
    trained = cli_here(capsys, "train", "--data", str(real_h5), "--out", str(run), "--epochs", "8", "--batch-size", "16", "--lr", "1e-3",
                      "--workers", "0", "--seed", "0")
    assert trained.returncode == 0, trained.stderr
    images, labels = [], []
    for split in ("valid", "test"):
        with h5py.File(real_h5 / f"camelyonpatch_level_2_split_{split}_x.h5") as fx, h5py.File(real_h5 / f"camelyonpatch_level_2_split_{split}_y.h5") as fy:
            images.append(fx["x"][:])
            labels.append(fy["y"][:].reshape(-1))
    canvas, centres = _real_mosaic(np.concatenate(images), np.concatenate(labels), per_row=8)
    path = tmp_path / "mosaic.png"
    Image.fromarray(canvas).save(path)
    out = tmp_path / "out"
    result = cli_here(capsys, "slide", "--run", str(run), "--input", str(path), "--out", str(out), "--mpp", str(PCAM_MPP),
                     "--workers", "0", "--checkpoint", "last")
    assert result.returncode == 0, result.stderr
    heat = np.load(out / "heatmap.npy")
    scores = np.array([heat[i, j] for i, j, _ in centres])
    truth = np.array([label for _, _, label in centres])
    scored = np.isfinite(scores)
    auc = roc_auc_score(truth[scored], scores[scored])
    blocks = [np.concatenate([heat[i - 1:i + 2, j - 1:j + 2].ravel() for i, j, label in centres if label == wanted]) for wanted in (1, 0)]
    inside = [float(np.nanmean(np.where(block == -1, np.nan, block))) for block in blocks]
    print(f"real-patch mosaic: {scored.sum()} of {len(scores)} patch centre cells scored, cell-level ROC-AUC {auc:.3f}; "
          f"mean cell probability over the tumour patches {inside[0]:.3f}, over the normal ones {inside[1]:.3f} (model trained on 96 real patches)")
    assert scored.mean() > 0.8, f"only {scored.mean():.0%} of the real patches' centre cells were taken for tissue"
    assert auc > 0.7, f"cell-level ROC-AUC {auc:.3f} on held-out real patches"
    assert inside[0] > inside[1], "the tumour patches' cells score higher than the normal ones'"


# -- one slide in shards ------------------------------------------------------------------------------

class CentreShadeModel(nn.Module):
    """A real model whose answer differs from window to window: the tumour logit is the central 32x32's mean
    normalised value, so a cell taken from the wrong window or left out of a merge shows in the map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3 * x[:, :, 32:64, 32:64].mean(dim=(1, 2, 3))


def _shard(slide: Path, out: Path, shard: tuple[int, int] | None, **options):
    return analyse_slide(CentreShadeModel(), slide, AnalysisFolder(out), run="test", checkpoint="centre-shade", checkpoint_epoch=None,
                         model_name="centre-shade", num_workers=0, stride=96, region_px=192, shard=shard, **options)


class _Killed(Exception):
    pass


def test_shards_of_one_slide_cover_its_tiles_once_in_contiguous_balanced_runs(small_slide):
    from pcam_core.slides.analysis import shard_tiles
    from pcam_core.slides.tissue import cell_fraction, read_thumbnail, tissue_mask

    with open_slide(small_slide / "slide.tif") as slide:
        lattice = Lattice(*slide.dimensions, slide.mpp, 32, 256)
        score = cell_fraction(tissue_mask(read_thumbnail(slide)), 32, lattice.shape) >= 0.25
    boxes = lattice.tiles()
    parts = [shard_tiles(lattice, score, (i, 3)) for i in range(3)]
    assert sum(parts, []) == list(range(len(boxes))), "in order, each tile once"
    cells = [sum(int(score[i0:i1, j0:j1].sum()) for i0, i1, j0, j1 in (boxes[k] for k in part)) for part in parts]
    biggest_tile = max(int(score[i0:i1, j0:j1].sum()) for i0, i1, j0, j1 in boxes)
    assert all(abs(c - sum(cells) / 3) <= biggest_tile for c in cells), f"cells per shard {cells}: 1/3 each, to within a tile"
    assert shard_tiles(lattice, np.zeros_like(score), (1, 2)) == list(range(len(boxes) // 2, len(boxes)))  # no tissue: even split


@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_three_shards_merge_into_the_unsharded_map_even_with_one_killed_and_resumed(small_slide, tmp_path):
    from pcam_core.slides.batch import merge

    slide = small_slide / "slide.tif"
    whole = _shard(slide, tmp_path / "whole", None)
    out = tmp_path / "sharded"
    assert _shard(slide, out, (0, 3)) is None  # the others are still to come: no outputs yet
    assert not (out / "heatmap.npy").exists() and (out / "shards" / "heatmap.0-of-3.npy").exists()
    calls = []

    def die(n: int) -> None:  # shard 1 dies in its third batch, mid-tile
        calls.append(n)
        if len(calls) == 3:
            raise _Killed

    with pytest.raises(_Killed):
        _shard(slide, out, (1, 3), batch_size=2, progress_factory=lambda name: (None, die))
    with pytest.raises(ValueError, match=r"2 of 3 shard\(s\).*1/3 \(unfinished.*2/3 \(not started\)") as err:
        merge(slide, out)
    assert "sharded" in str(err.value)
    assert _shard(slide, out, (2, 3)) is None
    with pytest.raises(ValueError, match="--resume"):
        _shard(slide, out, (1, 3))
    summary = _shard(slide, out, (1, 3), resume=True)  # the last shard to complete writes the outputs
    a, b = np.load(tmp_path / "whole" / "heatmap.npy"), np.load(out / "heatmap.npy")
    assert np.isfinite(a).sum() > 40 and len(np.unique(a[np.isfinite(a)])) > 20
    np.testing.assert_array_equal(a, b)
    assert (tmp_path / "whole" / "tiles.csv").read_text() == (out / "tiles.csv").read_text()
    assert not (out / "shards").exists() and (out / "heatmap.tif").exists() and (out / "tumour_regions.geojson").exists()
    assert [s["shard"] for s in summary["shards"]] == ["0/3", "1/3", "2/3"] and summary["resumed"] is True
    assert sum(s["windows"] for s in summary["shards"]) == summary["windows_scored"] == whole["windows_scored"]
    assert summary["seconds"] == pytest.approx(sum(s["seconds"] for s in summary["shards"]), abs=0.01)
    for key in ("slide_score", "regions", "cells_scored", "map_shape", "slide", "model"):
        assert summary[key] == whole[key]
    assert json.loads((out / "summary.json").read_text()) == summary
    assert merge(slide, out)[0]["status"] == "already done"


def test_a_folder_is_split_by_slide_with_enough_slides_and_by_tiles_with_fewer(tmp_path):
    from pcam_core.slides.batch import plan

    for name in ("a", "b", "c"):
        _png_slide(tmp_path / f"{name}.png", (200, 200), tissue=None, red=None)
    pairs, per_slide = plan(tmp_path, tmp_path / "out", (1, 3))
    assert [p.name for p, _ in pairs] == ["b.png"] and per_slide is None
    pairs, per_slide = plan(tmp_path, tmp_path / "out", (1, 4))
    assert [p.name for p, _ in pairs] == ["a.png", "b.png", "c.png"] and per_slide == (1, 4)
    assert [f.path for _, f in pairs] == [tmp_path / "out" / n for n in ("a", "b", "c")]
    pairs, per_slide = plan(tmp_path / "a.png", tmp_path / "out", (0, 2))
    assert pairs[0][1].path == tmp_path / "out" and per_slide == (0, 2)


def test_sharded_and_unsharded_analyses_do_not_mix_in_one_folder(tmp_path):
    slide = _png_slide(tmp_path / "block.png", (1200, 900), tissue=(100, 100, 1100, 800), red=(300, 300, 500, 500))
    _shard(slide, tmp_path / "out", (0, 2), mpp=0.5)
    with pytest.raises(ValueError, match=r"sharded analysis \(shards 0/2\)"):
        _shard(slide, tmp_path / "out", None, mpp=0.5)
    with pytest.raises(ValueError, match=r"shards of 2, not of 3.*--shard i/2"):
        _shard(slide, tmp_path / "out", (0, 3), mpp=0.5)
    with pytest.raises(ValueError, match=r"1/2 \(not started\)"):
        from pcam_core.slides.batch import merge
        merge(slide, tmp_path / "out")


@pytest.mark.slow  # starts torchrun with two processes, and the CLI three times
def test_torchrun_two_processes_write_the_single_process_map_and_merge_names_missing_shards(tmp_path, capsys):
    make_demo_slide(tmp_path / "demo", DemoSlideSpec(width=3000, height=1000, mpp=PCAM_MPP, seed=0))  # 4 x 2 region tiles at stride 96
    slide = str(tmp_path / "demo" / "slide.tif")
    common = ["slide", "--run", "bundled", "--input", slide, "--stride", "96", "--workers", "0"]
    single = run_cli(*common, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    part = cli_here(capsys, *common, "--out", str(tmp_path / "part"), "--shard", "1/2")
    assert part.returncode == 0 and "shard 1/2 done" in part.stdout and "0/2 (not started)" in part.stdout, part.stderr
    merged = cli_here(capsys, "slide", "--input", slide, "--out", str(tmp_path / "part"), "--merge")
    assert merged.returncode != 0 and "1 of 2 shard(s) not complete: 0/2 (not started)" in merged.stderr
    # torchrun's own parser would take --run for an abbreviation of its --run-path: "--" ends its options
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pcam_core",
                               "--", *common, "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert launched.returncode == 0, launched.stderr
    a, b = np.load(tmp_path / "one" / "heatmap.npy"), np.load(tmp_path / "two" / "heatmap.npy")
    assert np.isfinite(a).sum() > 50
    np.testing.assert_array_equal(a, b)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert [s["shard"] for s in summary["shards"]] == ["0/2", "1/2"] and all(s["windows"] > 0 for s in summary["shards"])
    assert summary["windows_scored"] == json.loads((tmp_path / "one" / "summary.json").read_text())["windows_scored"]
    assert not (tmp_path / "two" / "shards").exists()


def test_demo_slide_levels_need_not_divide_its_size(tmp_path):
    """A level whose size is rounded up (2,500 / 8 = 312.5 -> 313 px) reaches past the image it is resampled from:
    white there, not an error (a 50,000 x 40,000 slide failed on it at downsample 32)."""
    import openslide

    make_demo_slide(tmp_path, DemoSlideSpec(width=2500, height=1900, levels=(1, 2, 4, 8), seed=1))
    with openslide.OpenSlide(str(tmp_path / "slide.tif")) as slide:
        assert slide.level_dimensions == ((2500, 1900), (1250, 950), (625, 475), (313, 238))
        corner = np.asarray(slide.read_region((0, 0), 3, (313, 238)).convert("RGB"))
    assert corner[:, -1].min() > 200  # the rounded-up last column is off the slide: white, not garbage
