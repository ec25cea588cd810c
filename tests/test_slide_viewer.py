"""The slide viewer's engine and routes: Deep Zoom levels and tiles (OpenSlide's generator and ours agree), the
caches, the overlays drawn from a real analysis, the window under a click, and the HTTP routes (Starlette's
TestClient on the real app routes) refusing what is not a registered slide or a well-formed tile address."""

from __future__ import annotations

import io
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.testclient import TestClient

from helpers import REPO, analysed_real_slide
from pcam_app.slide_routes import SlideRoutes
from pcam_core.slides import tiles
from pcam_core.slides.analysis import WINDOW, Lattice
from pcam_core.slides.folder import AnalysisFolder
from pcam_core.slides.reader import PCAM_MPP, open_slide
from pcam_core.slides.tiles import DeepZoomSlide, LRUCache, TileCache, TileError, dzi_level_sizes, tile_box
from pcam_core.workspace.slides import SlideLibrary
from pcam_core.slides.viewer import cell_at, heat_overlay, is_synthetic, lattice_of, load_heat, load_summary, regions, window_at


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> tuple[Path, Path, Path, str]:
    """A slide of real lymph-node patches (tumour in a known block) in a workspace's slide library, analysed there at stride 96 with the
    bundled model: (workspace, slide, analysis folder, slide id)."""
    root = tmp_path_factory.mktemp("ws-slides")
    slide, out, sid = analysed_real_slide(root, stride=96, size=(2000, 1400), mode="dense")  # the quickest
    return root, slide, out, sid


@pytest.fixture(scope="module")
def client(analysed) -> TestClient:
    root = analysed[0]
    app = Starlette(routes=SlideRoutes(lambda: SlideLibrary(root)).routes())
    return TestClient(app)


def _png_slide(path: Path, width: int, height: int) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path, dpi=(25400 / 0.5, 25400 / 0.5))
    return path


# -- Deep Zoom ------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(3000, 2000), (1, 1), (257, 1025), (50_000, 40_000)])
def test_levels_are_those_of_openslides_deepzoom_generator(size):
    from openslide import ImageSlide
    from openslide.deepzoom import DeepZoomGenerator

    w, h = size
    small = (min(w, 4096), min(h, 4096))  # the generator only needs the size: an ImageSlide of the real size when small
    if small == size:
        generator = DeepZoomGenerator(ImageSlide(Image.new("RGB", size)), tile_size=254, overlap=1)
        assert dzi_level_sizes(w, h) == list(generator.level_dimensions)
        for level, (lw, lh) in enumerate(generator.level_dimensions):
            cols, rows = generator.level_tiles[level]
            for col, row in {(0, 0), (cols - 1, rows - 1), (cols // 2, rows // 2)}:
                assert tile_box((lw, lh), col, row)[2:] == generator.get_tile_dimensions(level, (col, row))
    sizes = dzi_level_sizes(w, h)
    assert sizes[0] == (1, 1) and sizes[-1] == (w, h) and len(sizes) == math.ceil(math.log2(max(w, h))) + 1


def test_a_tile_outside_the_level_is_refused():
    with pytest.raises(TileError, match=r"tile \(2, 0\) is outside the level's 2 x 1 tiles"):
        tile_box((300, 200), 2, 0)
    with pytest.raises(TileError, match="outside"):
        tile_box((300, 200), 0, -1)


@pytest.mark.slow  # needs the real slide analysed with the bundled ensemble (seconds): outside the fast lane
def test_openslide_and_reader_backends_cut_the_same_tiles(analysed):
    slide = analysed[1]
    zoom = DeepZoomSlide(slide)
    assert type(zoom._zoom).__name__ == "_OpenSlideDeepZoom" and (zoom.width, zoom.height) == (2000, 1400)
    ours = tiles._ReaderDeepZoom(slide, None)
    last = zoom.level_count - 1
    for level, col, row in [(last, 0, 0), (last, 7, 5), (last - 1, 2, 1), (3, 0, 0)]:
        a = np.asarray(zoom._zoom.get_tile(level, col, row), dtype=float)
        b = np.asarray(ours.get_tile(level, col, row), dtype=float)
        assert a.shape == b.shape
        assert np.abs(a - b).mean() < (1 if level == last else 12), (level, col, row)  # resampling differs below full size


@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_a_plain_image_gets_deep_zoom_tiles_of_its_own_pixels(tmp_path):
    path = _png_slide(tmp_path / "plain.png", 600, 300)
    zoom = DeepZoomSlide(path)
    assert type(zoom._zoom).__name__ == "_ReaderDeepZoom" and zoom.level_sizes[-1] == (600, 300)
    tile = np.asarray(zoom._zoom.get_tile(zoom.level_count - 1, 1, 0))
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert tile.shape == (255, 256, 3) and np.array_equal(tile, pixels[0:255, 253:509])  # no overlap above row 0
    jpeg = Image.open(io.BytesIO(zoom.tile(zoom.level_count - 1, 2, 1)))
    assert jpeg.format == "JPEG" and jpeg.size == (600 - 507, 300 - 253)


@pytest.mark.slow  # needs the real slide analysed with the bundled ensemble (seconds): outside the fast lane
def test_dzi_descriptor_names_size_tiles_and_format(analysed):
    root = ET.fromstring(DeepZoomSlide(analysed[1]).dzi())
    ns = {"d": tiles.DZI_NS}
    assert (root.get("TileSize"), root.get("Overlap"), root.get("Format")) == ("254", "1", "jpeg")
    size = root.find("d:Size", ns)
    assert (size.get("Width"), size.get("Height")) == ("2000", "1400")


def test_lru_cache_keeps_the_recent_within_its_bytes():
    cache: LRUCache[bytes] = LRUCache(max_entries=100, max_size=25, size_of=len)
    made = []
    for key in "abc":
        cache.get(key, lambda k=key: made.append(k) or k.encode() * 10)
    assert len(cache) == 2 and cache.size == 20 and made == ["a", "b", "c"]  # "a" went when "c" came
    cache.get("b", lambda: b"never")
    cache.get("a", lambda: b"a" * 10)  # made again; "c" (least recently used) goes
    assert (cache.hits, cache.misses) == (1, 4)
    assert cache.get("b", lambda: b"x") == b"b" * 10 and cache.get("c", lambda: b"new") == b"new"


@pytest.mark.slow  # needs the real slide analysed with the bundled ensemble (seconds): outside the fast lane
def test_tile_cache_opens_a_slide_once_and_answers_a_tile_again_from_memory(analysed):
    cache = TileCache()
    first = cache.tile(analysed[1], 10, 0, 0)
    again = cache.tile(analysed[1], 10, 0, 0)
    assert first == again and cache.tiles.hits == 1 and len(cache.slides) == 1 and cache.slides.hits == 1


# -- the analysis' overlays and the window under a click ------------------------------------------

@pytest.mark.slow  # needs the real slide analysed with the bundled ensemble (seconds): outside the fast lane
def test_heat_overlay_shows_exactly_the_cells_at_or_above_the_threshold(analysed):
    folder = AnalysisFolder(analysed[2])
    lattice = lattice_of(load_summary(folder))
    heat = np.array(load_heat(folder))
    for threshold in (0.2, 0.5, 0.9):
        overlay = heat_overlay(heat, lattice, threshold)
        rgba = np.asarray(Image.open(io.BytesIO(overlay.png)))
        k = rgba.shape[0] // heat.shape[0]
        assert rgba.shape[:2] == (heat.shape[0] * k, heat.shape[1] * k) and k >= 1
        opaque = rgba[::k, ::k, 3] == 255
        expected = np.isfinite(heat) & (np.nan_to_num(heat) >= threshold)
        assert np.array_equal(opaque, expected), threshold
        assert overlay.width == heat.shape[1] * lattice.cell_px >= lattice.width
    with pytest.raises(ValueError, match="threshold=1.5 must be a probability between 0 and 1"):
        heat_overlay(heat, lattice, 1.5)


@pytest.mark.slow  # needs the real slide analysed with the bundled ensemble (seconds): outside the fast lane
def test_regions_come_from_the_geojson_with_boxes_around_their_outlines(analysed):
    folder = AnalysisFolder(analysed[2])
    found = regions(folder)
    summary = load_summary(folder)
    assert len(found) == summary["regions"] >= 1
    assert [r["id"] for r in found] == list(range(1, len(found) + 1))
    reported = [r for r in found if r["reported"]]
    assert len(reported) == summary["regions_reported"] and all(r["size_class"] for r in reported)
    # of the reported regions only (0 when the slide decision reports none: the regions below it stay listed)
    assert max((r["longest_diameter_mm"] for r in reported), default=0.0) == pytest.approx(summary["largest_diameter_mm"])
    assert all(r["size_class"] is None and r["reporting"].startswith("below the reporting threshold")
               for r in found if not r["reported"])
    for region in found:
        x, y, w, h = region["bbox"]
        ring = np.asarray(region["rings"][0])
        assert ring[:, 0].min() == x and ring[:, 1].max() == pytest.approx(y + h) and w > 0 and h > 0


@pytest.mark.slow  # needs the real slide analysed with the bundled ensemble (seconds): outside the fast lane
def test_the_window_under_a_point_is_its_cells_window_as_the_analysis_read_it(analysed):
    slide, folder = analysed[1], AnalysisFolder(analysed[2])
    lattice = lattice_of(load_summary(folder))
    heat = load_heat(folder)
    i, j = np.argwhere(np.isfinite(heat))[0]
    x, y = (j + 0.7) * lattice.cell_px, (i + 0.2) * lattice.cell_px  # anywhere in the cell
    window = window_at(slide, heat, lattice, x, y)
    assert (window["row"], window["col"]) == (i, j) and window["state"] == "scored"
    assert window["probability"] == pytest.approx(float(heat[i, j]))
    wx, wy = lattice.window_origin(i, j)
    assert (window["x"], window["y"], window["size"]) == (pytest.approx(wx), pytest.approx(wy), pytest.approx(WINDOW * lattice.f))
    with open_slide(slide) as opened:
        expected = opened.read_scaled(float(wx), float(wy), WINDOW * lattice.f, WINDOW * lattice.f, (WINDOW, WINDOW))
    assert window["pixels"].shape == (96, 96, 3) and np.array_equal(window["pixels"], expected)
    blank = np.argwhere(~np.isfinite(heat))
    if len(blank):
        i, j = blank[0]
        assert window_at(slide, heat, lattice, (j + 0.5) * lattice.cell_px, (i + 0.5) * lattice.cell_px)["state"] == "not scored"
    with pytest.raises(ValueError, match=r"point \(2000, 5\) is outside the slide's 2000 x 1400 pixels"):
        window_at(slide, heat, lattice, 2000, 5)


def test_at_stride_32_the_cell_clicked_is_the_windows_central_32_pixels():
    lattice = Lattice(4000, 3000, PCAM_MPP / 4, 32)  # f = 4 level-0 px per PCam px, cells of 128 px
    row, col = cell_at(lattice, 1000.0, 300.0)
    assert (row, col) == (2, 7)
    x, y = lattice.window_origin(row, col)
    centre = (x + 32 * lattice.f, y + 32 * lattice.f)  # the window's central 32 x 32 starts 32 PCam px in
    assert centre == (col * lattice.cell_px, row * lattice.cell_px)


@pytest.mark.slow  # needs the real slide analysed with the bundled ensemble (seconds): outside the fast lane
def test_synthetic_slides_are_known_by_their_truth_file(analysed, tmp_path):
    from pcam_core.slides.demo import DemoSlideSpec, make_demo_slide

    make_demo_slide(tmp_path / "demo", DemoSlideSpec(width=768, height=512))
    assert is_synthetic(tmp_path / "demo" / "slide.tif")
    assert not is_synthetic(analysed[1])
    assert not is_synthetic(_png_slide(tmp_path / "real.png", 600, 600))


# -- the routes ------------------------------------------------------------------------------------

@pytest.mark.slow  # needs the real slide analysed with the bundled ensemble (seconds): outside the fast lane
def test_routes_serve_the_descriptor_tiles_and_overlays_of_a_registered_slide(client, analysed):
    sid = analysed[3]
    response = client.get(f"/slides-api/{sid}.dzi")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/xml")
    assert 'Width="2000"' in response.text
    levels = len(dzi_level_sizes(2000, 1400))
    tile = client.get(f"/slides-api/{sid}_files/{levels - 1}/7_5.jpeg")
    assert tile.status_code == 200 and tile.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(tile.content)).size == (2000 - 7 * 254 + 1, 1400 - 5 * 254 + 1)
    heat = client.get(f"/slides-api/{sid}/bundled-s96/heatmap.png?threshold=0.5")
    assert heat.status_code == 200 and Image.open(io.BytesIO(heat.content)).mode == "RGBA"
    assert client.get(f"/slides-api/{sid}/bundled-s96/tissue.png").status_code == 200
    assert client.get(f"/slides-api/{sid}/bundled-s32/tissue.png").status_code == 404  # no analysis at stride 32


@pytest.mark.parametrize("url, status, message", [
    ("/slides-api/0123456789abcdef.dzi", 404, "no registered slide '0123456789abcdef'"),
    ("/slides-api/0123456789abcdef_files/3/0_0.jpeg", 404, "no registered slide"),
    ("/slides-api/nope.dzi", 400, "slide id 'nope' is not valid"),
    ("/slides-api/a.b.dzi", 400, "slide id 'a.b' is not valid"),
    ("/slides-api/..%2F..%2Fetc%2Fpasswd.dzi", 404, None),  # the decoded slashes match no route
    ("/slides-api/%2E%2E.dzi", 400, "slide id '..' is not valid"),
    ("/slides-api/{id}_files/x/0_0.jpeg", 400, "malformed tile address x/0_0.jpeg"),
    ("/slides-api/{id}_files/3/0_0.png", 400, "malformed tile address 3/0_0.png"),
    ("/slides-api/{id}_files/3/-1_0.jpeg", 400, "malformed tile address"),
    ("/slides-api/{id}_files/3/0_0.jpeg.jpeg", 400, "malformed tile address"),
    ("/slides-api/{id}_files/99/0_0.jpeg", 404, "level 99 does not exist"),
    ("/slides-api/{id}_files/11/99_0.jpeg", 404, "tile (99, 0) is outside the level's 8 x 6 tiles"),
    ("/slides-api/{id}/%2E%2E/heatmap.png", 400, "malformed analysis key '..'"),
    ("/slides-api/{id}/bundled/heatmap.png", 400, "malformed analysis key 'bundled'"),
    ("/slides-api/{id}/bundled-s96/heatmap.png?threshold=2", 400, "threshold='2' must be a probability between 0 and 1"),
    ("/slides-api/{id}/bundled-s96/heatmap.png?threshold=nan", 400, "threshold='nan' must be a probability between 0 and 1"),
])
@pytest.mark.slow  # needs the real slide analysed with the bundled ensemble (seconds): outside the fast lane
def test_routes_refuse_unregistered_slides_and_malformed_addresses(client, analysed, url, status, message):
    response = client.get(url.replace("{id}", analysed[3]))
    assert response.status_code == status, response.text
    if message:
        assert message in response.json()["error"]


def test_a_registered_slide_whose_file_went_is_a_404_naming_it(tmp_path):
    slide = _png_slide(tmp_path / "gone.png", 600, 600)
    library = SlideLibrary(tmp_path / "ws")
    sid = library.add_file(slide).id
    client = TestClient(Starlette(routes=SlideRoutes(lambda: library).routes()))
    assert client.get(f"/slides-api/{sid}.dzi").status_code == 200
    slide.unlink()
    other = TestClient(Starlette(routes=SlideRoutes(lambda: library).routes()))  # a fresh server: no lookup kept
    response = other.get(f"/slides-api/{sid}.dzi")
    assert response.status_code == 404 and str(slide) in response.json()["error"]


@pytest.mark.slow  # a few seconds: reads a DICOM series
def test_a_dicom_series_a_folder_is_served_as_a_slide(tmp_path):
    """A DICOM series is a folder, not a file: registered (in a registered folder), its descriptor and tiles are served
    (the route once refused every one as "its file is missing")."""
    import shutil

    folder = tmp_path / "slides"
    shutil.copytree(REPO / "tests" / "data" / "slides" / "CMU-1-Small-Region-dicom", folder / "CMU-1-Small-Region-dicom")
    library = SlideLibrary(tmp_path / "ws")
    library.add_folder(folder)
    [slide] = library.slides()
    client = TestClient(Starlette(routes=SlideRoutes(lambda: library).routes()))
    response = client.get(f"/slides-api/{slide.id}.dzi")
    assert response.status_code == 200, response.text
    size = ET.fromstring(response.text).find("d:Size", {"d": tiles.DZI_NS})
    assert (size.get("Width"), size.get("Height")) == ("2220", "2967")
    tile = client.get(f"/slides-api/{slide.id}_files/8/0_0.jpeg")
    assert tile.status_code == 200 and Image.open(io.BytesIO(tile.content)).format == "JPEG"


@pytest.mark.slow  # needs the real slide analysed with the bundled ensemble (seconds): outside the fast lane
def test_tiles_and_overlays_are_cached_only_under_their_current_version(client, analysed):
    """A re-analysed slide never looks stale: the version is in the address, and only the current one is kept."""
    root, _, out, sid = analysed
    library = SlideLibrary(root)
    slide_version, analysis_version = library.entry(sid).version, AnalysisFolder(out).version()
    assert slide_version and analysis_version
    levels = len(dzi_level_sizes(2000, 1400))
    for url, version in ((f"/slides-api/{sid}.dzi", slide_version), (f"/slides-api/{sid}_files/{levels - 1}/0_0.jpeg", slide_version),
                         (f"/slides-api/{sid}/bundled-s96/heatmap.png?threshold=0.5", analysis_version),
                         (f"/slides-api/{sid}/bundled-s96/tissue.png", analysis_version)):
        join = "&" if "?" in url else "?"
        current = client.get(f"{url}{join}v={version}")
        assert current.status_code == 200 and "immutable" in current.headers["cache-control"], url
        for stale in (url, f"{url}{join}v=old"):
            assert client.get(stale).headers["cache-control"] == "no-cache", stale
