"""pcam_core.explain: maps for every method and model, targets, centre focus, overlays, no leaks, `pcam explain`."""

from __future__ import annotations

import gc
import io
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from helpers import cli_here, model_name_params, random_patches
from pcam_core.cli import main
from pcam_core.data import open_dataset
from pcam_core.explain import (
    CLASS_AGNOSTIC,
    SCALES,
    layer_note,
    map_meaning,
    scaled_maps,
    METHOD_NOTES,
    METHODS,
    UNIFORM_FOCUS,
    centre_focus,
    colour_bar,
    colour_stops,
    explain_batch,
    get_method,
    layer_choices,
    overlay,
    png_bytes,
    rank_by_focus,
)
from pcam_core.inference import predict_batch
from pcam_core.models import MODELS, PCamNet, create_model, get_layer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a small, shared CPU two OpenMP threads wait on each other at every op."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def patches(real_kaggle) -> np.ndarray:
    """Two real patches, (2, 96, 96, 3) uint8."""
    return open_dataset(real_kaggle, "train").read_pixels([0, 1])


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name).eval()


# ScoreCAM (a forward pass per channel) takes a few seconds: outside the fast lane
@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m == "scorecam" else m for m in METHODS])
def test_every_method_on_pcamnet(method, patches):
    model = _model("pcamnet")
    batch = patches[:1] if method == "scorecam" else patches  # ScoreCAM: one forward pass per channel
    result = explain_batch(model, batch, model_name="pcamnet", method=method)
    assert result.maps.shape == (len(batch), 96, 96) and result.maps.dtype == np.float32
    assert result.maps.min() >= 0.0 and result.maps.max() <= 1.0
    assert result.maps.max() > 0.5  # min-max scaled per patch, so a non-empty map reaches (nearly) 1
    assert (result.layer, result.resolution, result.target) == ("stage4", 12, "tumour")
    expected = predict_batch(model, torch.from_numpy(batch).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)  # same forward pass as prediction


@pytest.mark.parametrize("name", model_name_params())  # the largest ImageNet models: slow
def test_every_model_and_layer(name, patches):
    model = _model(name)
    for layer, size in MODELS[name].target_layers.items():
        result = explain_batch(model, patches[:1], model_name=name, method="gradcam", layer=layer)
        assert result.maps.shape == (1, 96, 96) and result.resolution == size and result.layer == layer
        assert 0.0 <= result.maps.min() and result.maps.max() <= 1.0
    assert not any(m._forward_hooks for m in model.modules())
    assert list(layer_choices(name))[0] == next(iter(MODELS[name].target_layers))


def test_a_network_without_padding_has_its_maps_placed_where_its_cells_are(patches):
    """pcamscan's 17 x 17 stage3 covers the central 68 px (cell centres 15.5 + 4 j): its map is zero outside them, and
    a cell's evidence lands on that cell's pixels, not stretched outwards to the patch's border."""
    from pcam_core.explain import cell_grid, place_cells

    model = _model("pcamscan")
    assert cell_grid(model, "stage3") == (15.5, 4.0) and cell_grid(_model("pcamnet"), "stage3") is None
    one = np.zeros((1, 17, 17), dtype=np.float32)
    one[0, 0, 16] = 1.0  # the top-right cell, centred at pixel (15.5, 79.5)
    placed = place_cells(one, (15.5, 4.0))[0]
    assert placed[15:17, 79:81].min() > 0.75 and placed.max() == placed[15, 80] == 1 and placed[:13].max() == 0 and placed[:, 82:].max() == 0
    result = explain_batch(model, patches[:2], model_name="pcamscan", method="gradcam", layer="stage3")
    assert result.maps.shape == (2, 96, 96) and result.maps.max() > 0.5
    assert result.maps[:, :13].max() == 0 and result.maps[:, :, 82:].max() == 0  # no cell of the layer there


def test_tumour_and_normal_targets_differ(patches):
    model = _model("pcamnet")
    tumour = explain_batch(model, patches, model_name="pcamnet", target="tumour")
    normal = explain_batch(model, patches, model_name="pcamnet", target="normal")
    np.testing.assert_allclose(tumour.probabilities, normal.probabilities)
    for t, n in zip(tumour.maps, normal.maps):
        # Grad-CAM's map for "normal" is minus the one for "tumour" before the ReLU: opposite regions.
        assert np.abs(t - n).max() > 0.5
        assert np.corrcoef(t.ravel(), n.ravel())[0, 1] < 0


def test_bad_arguments_name_the_valid_choices(patches):
    model = _model("resnet18")
    with pytest.raises(ValueError, match="valid methods: gradcam, gradcam\\+\\+, .*scorecam"):
        explain_batch(model, patches, model_name="resnet18", method="gradcam3")
    with pytest.raises(ValueError, match="net.layer4: 3x3, net.layer3: 6x6, net.layer2: 12x12"):
        explain_batch(model, patches, model_name="resnet18", layer="layer4")
    with pytest.raises(ValueError, match="valid targets: tumour, normal"):
        explain_batch(model, patches, model_name="resnet18", target="1")
    with pytest.raises(ValueError, match=r"got \(2, 3, 64, 64\)"):
        explain_batch(model, np.zeros((2, 3, 64, 64), np.uint8), model_name="resnet18")
    with pytest.raises(ValueError, match="uint8"):
        explain_batch(model, np.zeros((2, 96, 96, 3), np.float32), model_name="resnet18")
    assert layer_choices("pcamnet") == {"stage4": "stage4: 12x12", "stage3": "stage3: 24x24", "stage2": "stage2: 48x48"}


@pytest.mark.slow  # a fresh interpreter: outside the fast lane
def test_importing_the_module_leaves_the_cam_package_until_a_map_is_made():
    code = ("import sys, pcam_core.explain as e; assert 'pytorch_grad_cam' not in sys.modules, 'imported at once'; "
            "print(sorted(e.METHODS)); e.get_method('gradcam'); assert 'pytorch_grad_cam' in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in METHODS:  # every method names a class of the package, each a CAM
        assert get_method(name).__name__ == METHODS[name] and hasattr(get_method(name), "get_cam_image")


def test_centre_focus_known_cases():
    uniform = np.full((96, 96), 0.3)
    centre = np.zeros((96, 96))
    centre[32:64, 32:64] = 1.0
    outside = 1.0 - centre
    assert centre_focus(uniform) == pytest.approx(1 / 9, abs=1e-12)
    assert centre_focus(centre) == 1.0
    assert centre_focus(outside) == 0.0
    assert np.isnan(centre_focus(np.zeros((96, 96))))  # no mass, no focus
    batch = centre_focus(np.stack([uniform, centre, outside]))
    np.testing.assert_allclose(batch, [1 / 9, 1.0, 0.0])
    with pytest.raises(ValueError, match="non-negative"):
        centre_focus(-uniform)
    with pytest.raises(ValueError, match="shape"):
        centre_focus(np.ones((64, 64)))


def test_gallery_order_puts_the_lowest_centre_focus_first():
    assert UNIFORM_FOCUS == pytest.approx(1 / 9)
    focus = np.array([0.5, np.nan, 0.02, 0.9, 0.11])
    assert rank_by_focus(focus).tolist() == [2, 4, 0, 3, 1]  # an empty map (no focus) comes last
    assert set(METHOD_NOTES) == set(METHODS)  # every method has the words the dashboard shows


def test_overlay_box_colour_bar_and_png(patches):
    maps = np.random.default_rng(0).random((2, 96, 96)).astype(np.float32)
    out = overlay(patches, maps, opacity=0.4, box_colour="#00ff00")
    assert out.shape == (2, 96, 96, 3) and out.dtype == np.uint8
    for edge in [(32, 40), (63, 50), (45, 32), (45, 63)]:  # the outline of the central 32x32 region
        assert (out[:, edge[0], edge[1]] == [0, 255, 0]).all()
    plain = overlay(patches, maps, opacity=0.0, box_colour=None)
    np.testing.assert_array_equal(plain, patches)  # opacity 0: the patch itself
    one = overlay(torch.from_numpy(patches[0]).permute(2, 0, 1), maps[0], opacity=1.0, box_colour="white", scale=3)
    assert one.shape == (288, 288, 3)
    assert (one[96, 96:192] == 255).all() and (one[150, 150] != 255).any()
    bar = colour_bar("jet", width=100, height=8)
    assert bar.shape == (8, 100, 3) and bar.dtype == np.uint8 and (bar[:, 0] != bar[:, -1]).any()
    stops = colour_stops("jet", 5)
    assert [v for v, _ in stops] == [0.0, 0.25, 0.5, 0.75, 1.0] and stops[0][1] == "#000080"
    decoded = np.asarray(Image.open(io.BytesIO(png_bytes(out[0]))))
    np.testing.assert_array_equal(decoded, out[0])
    with pytest.raises(ValueError, match="opacity"):
        overlay(patches, maps, opacity=1.5)
    with pytest.raises(ValueError, match="not a colour"):
        overlay(patches, maps, box_colour="notacolour")
    with pytest.raises(ValueError, match="colormap"):
        colour_bar("nope")


def _rss_bytes() -> int:
    fields = Path("/proc/self/statm").read_text().split()
    return int(fields[1]) * 4096


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the resident set size from /proc")
def test_a_thousand_calls_do_not_grow_memory(patches):
    torch.manual_seed(0)
    model = PCamNet(widths=(8, 8, 16, 16)).eval()  # the pcamnet architecture, small enough for 1,000 calls
    x = patches[:1]
    for _ in range(50):  # warm up allocator caches
        explain_batch(model, x, model_name="pcamnet")
    gc.collect()
    rss_before = _rss_bytes()
    for _ in range(1000):
        explain_batch(model, x, model_name="pcamnet")
    gc.collect()
    rss_growth = _rss_bytes() - rss_before
    tracemalloc.start()  # Python objects and numpy buffers, over fewer calls (tracing is slow)
    traced_before = tracemalloc.get_traced_memory()[0]
    for _ in range(200):
        explain_batch(model, x, model_name="pcamnet")
    gc.collect()
    traced_growth = tracemalloc.get_traced_memory()[0] - traced_before
    tracemalloc.stop()
    # A retained autograd graph of this model is ~1.4 MB a call (1.4 GB over 1,000 calls, measured by
    # keeping `cam.outputs`), hooks left behind cost more; a kept map is 36 KB a call (7 MB traced).
    assert rss_growth < 40_000_000, f"RSS grew by {rss_growth / 1e6:.1f} MB over 1,000 calls"
    assert traced_growth < 1_000_000, f"traced Python memory grew by {traced_growth / 1e6:.1f} MB over 200 calls"
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    assert get_layer(model, "stage4")._forward_hooks == {}
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.slow
def test_cli_explain_end_to_end(trained_run, demo_root, tmp_path, capsys):
    out = tmp_path / "cams"
    result = cli_here(capsys, "explain", "--run", str(trained_run), "--input", str(demo_root), "--out", str(out), "--limit", "5")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out / "explanations.csv", dtype={"id": str})
    assert list(table.columns) == ["id", "probability", "centre_focus", "method", "layer", "target"]
    assert len(table) == 5 and set(table["method"]) == {"gradcam"} and set(table["layer"]) == {"stage4"}
    assert table["probability"].between(0, 1).all()
    assert (table["centre_focus"].dropna().between(0, 1)).all()
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(table["id"])
    first = Image.open(out / f"{table['id'][0]}.png")
    assert first.size == (96, 96) and first.mode == "RGB"
    test_ids = open_dataset(demo_root, "test").__getitems__(list(range(5)))["id"]
    assert list(table["id"]) == test_ids  # the test split by default, in order

    # The same entry point in this process (no second interpreter start-up): one image file, options.
    single = tmp_path / "one.png"
    Image.fromarray(open_dataset(demo_root, "test").read_pixels([0])[0]).save(single)
    out2 = tmp_path / "one"
    assert main(["explain", "--run", str(trained_run), "--input", str(single), "--out", str(out2), "--method", "gradcam++",
                 "--layer", "stage3", "--target", "normal", "--opacity", "0.7"]) == 0
    assert "stage3 (24x24)" in capsys.readouterr().out
    row = pd.read_csv(out2 / "explanations.csv").iloc[0]
    assert (row["id"], row["method"], row["layer"], row["target"]) == ("one", "gradcam++", "stage3", "normal")

    assert main(["explain", "--run", str(trained_run), "--input", str(tmp_path / "missing"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: input not found")


def test_layer_captions_describe_the_models_own_layer():
    note = layer_note("pcamnet", "stage4")
    assert "12×12 map covers 8×8 pixels" in note and "4×4 cells of pcamnet's stage4" in note
    assert "ResNet" not in note and "3×3" not in note and "cannot tell the centre" not in note
    assert "2×2 cells" in layer_note("pcamresnet", "stage4") and "Coarse" in layer_note("pcamresnet", "stage4")
    coarse = layer_note("resnet18", "net.layer4")
    assert "3×3 map covers 32×32 pixels" in coarse and "cannot tell the centre from its surroundings" in coarse
    assert "net.layer2 (12×12)" in coarse and "net.layer3" not in coarse  # only layers finer than the box
    assert layer_note("pcamnet") == note  # the default layer
    with pytest.raises(ValueError, match="valid layers: stage4: 12x12"):
        layer_note("pcamnet", "net.layer4")


def test_eigencam_is_captioned_as_class_agnostic():
    assert CLASS_AGNOSTIC == {"eigencam"}
    for target in ("tumour", "normal"):
        assert "class-agnostic" in map_meaning("eigencam", target) and not map_meaning("eigencam", target).startswith("evidence")
    assert "class-agnostic" in METHOD_NOTES["eigencam"] and "not evidence for tumour" in METHOD_NOTES["eigencam"]
    assert map_meaning("gradcam", "normal") == "evidence for normal"
    with pytest.raises(ValueError, match="valid methods"):
        map_meaning("cam", "tumour")


def test_fixed_scale_puts_maps_on_one_scale():
    """Per patch, every map with any evidence reaches 1 (a nearly blank patch turns full red); on the
    fixed scale a map reaches 1 only where it holds the batch's strongest point."""
    model = _model("pcamnet")
    pixels = random_patches(3, seed=2)
    pixels[2] = 235 + pixels[2] // 64  # nearly blank: pale, almost uniform
    result = explain_batch(model, pixels, model_name="pcamnet", method="gradcam")
    assert result.peaks.shape == result.floors.shape == (3,) and (result.peaks >= result.floors).all()
    per_patch = scaled_maps(result, "patch")
    assert per_patch is result.maps
    fixed = scaled_maps(result, "fixed")
    assert fixed.shape == result.maps.shape and fixed.dtype == np.float32 and 0.0 <= fixed.min() and fixed.max() <= 1.0
    alive = result.peaks > 0
    np.testing.assert_allclose(fixed.max(axis=(1, 2))[alive], (result.peaks / result.peaks.max())[alive], atol=0.02)
    np.testing.assert_allclose(fixed[alive].max(axis=(1, 2)).max(), 1.0, atol=0.02)
    # the raw range does not depend on the batch a patch was computed in
    alone = explain_batch(model, pixels[2:], model_name="pcamnet", method="gradcam")
    np.testing.assert_allclose(alone.peaks, result.peaks[2:], rtol=1e-3, atol=1e-6)
    # one patch against the strongest point of others: ten times weaker than that stays at a tenth
    if alone.peaks[0] > 0:
        assert scaled_maps(alone, "patch").max() > 0.99
        assert scaled_maps(alone, "fixed", peak=10 * float(alone.peaks[0])).max() == pytest.approx(0.1, abs=0.01)
    assert SCALES == {"patch": "per patch", "fixed": "fixed 0..max across patches"}
    with pytest.raises(ValueError, match="valid scales: patch, fixed"):
        scaled_maps(result, "absolute")


def test_cli_explain_valid_split_of_a_kaggle_folder(trained_run, demo_root, tmp_path, capsys):
    """`--split valid` on a Kaggle folder is the run's own seeded validation split of its train folder,
    the same patches `pcam evaluate --split valid` scores."""
    from helpers import tif_bytes
    from pcam_core.data import PCamH5, patch_id, train_valid_datasets
    from pcam_core.loading import load_run_model

    kaggle = tmp_path / "kaggle"
    (kaggle / "train").mkdir(parents=True)
    source = PCamH5(demo_root, "valid")
    pixels, labels = source.read_pixels(np.arange(60)), source.labels[:60]
    ids = [patch_id(p) for p in pixels]
    for pid, patch in zip(ids, pixels):
        (kaggle / "train" / f"{pid}.tif").write_bytes(tif_bytes(patch))
    pd.DataFrame({"id": ids, "label": labels}).to_csv(kaggle / "train_labels.csv", index=False)

    out = tmp_path / "cams"
    assert main(["explain", "--run", str(trained_run), "--input", str(kaggle), "--split", "valid", "--out", str(out),
                 "--device", "cpu"]) == 0, capsys.readouterr().err
    table = pd.read_csv(out / "explanations.csv", dtype={"id": str})
    config = load_run_model(trained_run, device="cpu").config
    valid = train_valid_datasets(kaggle, valid_frac=config.data.valid_frac, seed=config.data.split_seed).valid
    assert list(table["id"]) == [valid.source.paths[i].stem for i in valid.parent_indices] and 0 < len(table) < 60
    assert main(["evaluate", "--run", str(trained_run), "--data", str(kaggle), "--split", "valid", "--no-tta",
                 "--out", str(tmp_path / "m.json"), "--device", "cpu", "--workers", "0"]) == 0
    scored = pd.read_csv(tmp_path / "m_predictions.csv", dtype={"id": str})
    assert list(scored["id"]) == list(table["id"])
    np.testing.assert_allclose(table["probability"], scored["probability"], atol=2e-6)
