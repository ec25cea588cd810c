"""`pcam slide --mode dense|cascade|window`: the dense pass and the cascade against the per-window reference."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from helpers import REPO, cli_here, real_mosaic_slide
from pcam_core.bundled import BUNDLED
from pcam_core.checkpoint import save_checkpoint
from pcam_core.ensemble import create_ensemble
from pcam_core.inference import predict_batch
from pcam_core.loading import load_run_model
from pcam_core.models import EnsembleModel, create_model
from pcam_core.runs import create_run
from pcam_core.scope import tap_for
from pcam_core.scoring_options import ScoringOptions
from pcam_core.slides.analysis import cut_windows, score_slide
from pcam_core.slides.batch import analyse
from pcam_core.slides.demo import DemoSlideSpec, make_demo_slide
from pcam_core.slides.dense import (DENSE_TOLERANCE, EXACT_TOLERANCE, block_probes, block_values, can_scan, dense_windows,
                                    effective_mode, refine_cells, scans_exactly, window_sizes)
from pcam_core.slides.folder import AnalysisFolder
from pcam_core.transforms import eval_preset


@pytest.fixture(scope="module")
def bundled():
    return load_run_model(BUNDLED, device="cpu")


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    """An ensemble run of 3 members made from the bundled network (its first member, if it is an ensemble): member 0
    its weights, members 1 and 2 its weights with 5 % noise (seeded), so that the members disagree; the guard is the
    bundled one, which reads member 0's features (`models.get_layer`), as a cross-validated ensemble's reads its first fold's."""
    root = tmp_path_factory.mktemp("ensemble")
    bundled = load_run_model(BUNDLED, device="cpu")
    network = bundled.model.members[0] if bundled.is_ensemble else bundled.model
    members = []
    for k in range(3):
        generator = torch.Generator().manual_seed(k)
        state = {name: (value + 0.05 * value.std() * torch.randn(value.shape, generator=generator)
                        if k and value.is_floating_point() and value.numel() > 1 else value)
                 for name, value in network.state_dict().items()}
        run = create_run(root, bundled.config, run_id=f"member-{k}")
        save_checkpoint(run.best_checkpoint, {"config": bundled.config.to_dict(), "model": state, "ema": None, "epoch": 1})
        members.append(run.path)
    shutil.copyfile(bundled.run.folder.scope_path, members[0] / "scope.npz")
    return create_ensemble(members, root / "ensemble").path


def _region(rows: int, cols: int, stride: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (stride * (rows - 1) + 96, stride * (cols - 1) + 96, 3), dtype=np.uint8)


@pytest.mark.slow  # the first dense pass exports the model to ONNX Runtime (about 1.5 s)
@pytest.mark.parametrize("tta", [False, True])
def test_one_window_scanned_densely_is_the_window_scored_alone_with_its_scope_features(bundled, tta):
    model, scope = bundled.model.eval(), bundled.scope
    region = _region(1, 1)
    image = torch.from_numpy(np.ascontiguousarray(region.transpose(2, 0, 1)))
    probs, features = dense_windows(model, image, 32, normalize=eval_preset(), tta=tta, scope_layers=scope.layers)
    with tap_for(model, scope.model_name) as tap:
        alone = predict_batch(model, image[None], tta=tta, normalize=eval_preset()).numpy()
        theirs = tap.take()
    assert probs.shape == (1, 1)
    np.testing.assert_allclose(probs[0], alone, atol=1e-5)
    np.testing.assert_allclose(scope.distance(features[0]), scope.distance(theirs), rtol=1e-3)


@pytest.mark.slow
def test_dense_windows_of_a_region_are_close_on_average_to_each_window_alone(bundled):
    model = bundled.model.eval()
    for stride, (rows, cols) in ((32, (3, 4)), (96, (2, 2))):
        region = _region(rows, cols, stride)
        image = torch.from_numpy(np.ascontiguousarray(region.transpose(2, 0, 1)))
        probs, _ = dense_windows(model, image, stride, normalize=eval_preset())
        cells = np.argwhere(np.ones((rows, cols), dtype=bool))
        alone = predict_batch(model, torch.from_numpy(cut_windows(region, cells, stride)), normalize=eval_preset()).numpy()
        assert probs.shape == (rows, cols)
        assert np.abs(probs.ravel() - alone).mean() < DENSE_TOLERANCE


def _pcamscan_with_trained_weights() -> torch.nn.Module:
    """`pcamscan` trained on the real patches: the candidate model of the repository (candidates/pcamscan), so its
    windows' scores spread as a real model's do. (The bundled `pcamnet`'s weights in `pcamscan`, which this used
    before, scored every window of these regions near 0 once the 54-epoch ensemble shipped: too flat to test with.)"""
    from pcam_core.checkpoint import inference_weights, load_checkpoint

    model = create_model("pcamscan")
    model.load_state_dict(inference_weights(load_checkpoint(REPO / "candidates" / "pcamscan" / "checkpoints" / "best.pt")))
    return model.eval()


@pytest.mark.slow  # each case exports the dense graph to ONNX Runtime (about 1.5 s)
@pytest.mark.parametrize("stride,rows,cols,tta", [(32, 3, 4, False), (32, 2, 2, True), (96, 2, 2, False), (64, 2, 3, False)])
def test_pcamscan_scanned_densely_gives_every_window_its_own_score_and_scope_features(stride, rows, cols, tta):
    """The exact model: the dense map is the per-window map to float rounding, window by window, and so are the guard's
    features (each scope layer's mean and standard deviation over the window's block)."""
    model = _pcamscan_with_trained_weights()
    region = _region(rows, cols, stride)
    region //= np.kron(np.random.default_rng(1).integers(1, 4, (region.shape[0] // 16 + 1, region.shape[1] // 16 + 1, 1)),
                       np.ones((16, 16, 1), dtype=np.int64))[: region.shape[0], : region.shape[1]].astype(np.uint8)  # patchy
    image = torch.from_numpy(np.ascontiguousarray(region.transpose(2, 0, 1)))
    probs, features = dense_windows(model, image, stride, normalize=eval_preset(), tta=tta, scope_layers=("stage1", "stage2"))
    windows = torch.from_numpy(cut_windows(region, np.argwhere(np.ones((rows, cols), dtype=bool)), stride))
    with tap_for(model, "pcamscan") as tap:
        alone = predict_batch(model, windows, tta=tta, normalize=eval_preset()).numpy()
        theirs = tap.take()
    assert probs.shape == (rows, cols) and alone.std() > 10 * EXACT_TOLERANCE  # windows that differ beyond the tolerance
    np.testing.assert_allclose(probs.ravel(), alone, atol=EXACT_TOLERANCE, rtol=0)
    np.testing.assert_allclose(features.reshape(rows * cols, -1), theirs, atol=1e-3, rtol=1e-3)


def test_which_models_scan_exactly_and_the_window_sizes_of_their_stages():
    assert window_sizes(create_model("pcamnet")) == ([96, 48, 24, 12], 6)
    assert window_sizes(create_model("pcamscan")) == ([92, 42, 17, 4], 2)
    assert scans_exactly(create_model("pcamscan")) and scans_exactly(EnsembleModel([create_model("pcamscan")] * 2))
    assert not scans_exactly(create_model("pcamnet")) and not scans_exactly(create_model("pcamresnet"))
    assert not scans_exactly(EnsembleModel([create_model("pcamscan"), create_model("pcamnet")]))
    # the fastest exact mode is the default: dense for pcamscan, sharded too; the cascade for the padded net
    assert effective_mode(create_model("pcamscan"), None) == "dense"
    assert effective_mode(create_model("pcamscan"), None, sharded=True) == "dense"
    assert effective_mode(create_model("pcamscan"), None, stride=96) == "window"


def test_a_model_that_cannot_scan_falls_back_to_windows_and_a_bad_mode_is_named():
    assert effective_mode(create_model("pcamresnet"), "dense") == "window"
    assert effective_mode(create_model("pcamnet_p4m"), "dense") == "window"  # its group convolutions have no dense form
    assert effective_mode(create_model("pcamnet"), "dense") == "dense"
    assert effective_mode(create_model("pcamnet"), None) == "cascade"
    assert effective_mode(create_model("pcamnet"), None, sharded=True) == "window"
    assert effective_mode(create_model("pcamnet"), None, stride=96) == "window"
    assert effective_mode(create_model("pcamresnet"), "cascade") == "cascade"  # one window per 3 x 3 block first
    assert effective_mode(create_model("pcamresnet"), "cascade", stride=96) == "window"
    with pytest.raises(ValueError, match="mode must be one of cascade, dense, window, not 'fast'"):
        effective_mode(create_model("pcamnet"), "fast")
    with pytest.raises(ValueError, match="dense"):
        dense_windows(create_model("pcamresnet"), torch.zeros(3, 96, 96, dtype=torch.uint8), 32, normalize=eval_preset())


def test_an_ensemble_scans_when_every_member_can():
    nets = [create_model("pcamnet"), create_model("pcamnet")]
    assert can_scan(EnsembleModel(nets)) and effective_mode(EnsembleModel(nets), "dense") == "dense"
    mixed = EnsembleModel([create_model("pcamnet"), create_model("pcamresnet")])
    assert not can_scan(mixed) and effective_mode(mixed, "dense") == "window"


@pytest.mark.slow  # each member's first dense pass exports it to ONNX Runtime
@pytest.mark.parametrize("combine,tta", [("prob", False), ("prob", True), ("logit", False)])
def test_one_window_scanned_densely_by_an_ensemble_is_its_window_score_and_its_first_members_features(ensemble_run, combine, tta):
    loaded = load_run_model(ensemble_run, device="cpu")
    model, scope = EnsembleModel(list(loaded.model.members), combine).eval(), loaded.scope
    image = torch.from_numpy(np.ascontiguousarray(_region(1, 1).transpose(2, 0, 1)))
    probs, features = dense_windows(model, image, 32, normalize=eval_preset(), tta=tta, scope_layers=scope.layers)
    with tap_for(model, scope.model_name) as tap:  # the guard's tap in window mode: the first member's layers
        alone = predict_batch(model, image[None], tta=tta, normalize=eval_preset()).numpy()
        theirs = tap.take()
    members = [predict_batch(m, image[None], tta=tta, normalize=eval_preset()).item() for m in model.members]
    assert np.ptp(members) > 1e-3  # the members disagree, so the join is what is checked
    np.testing.assert_allclose(probs[0], alone, atol=1e-5)
    np.testing.assert_allclose(scope.distance(features[0]), scope.distance(theirs), rtol=1e-3)


def test_cascade_refuses_a_shard_with_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot be sharded"):
        score_slide(create_model("pcamnet"), tmp_path / "none.tif", AnalysisFolder(tmp_path / "out"), checkpoint="-",
                    mode="cascade", shard=(0, 2))


def test_cascade_rule_refines_suspect_cells_and_their_neighbours():
    score = np.ones((7, 8), dtype=bool)
    coarse = np.zeros((7, 8))
    coarse[3, 4] = 0.4
    refined = refine_cells(coarse, score, 0.25)  # at cell resolution: the cell and its 8 neighbours
    assert refined.sum() == 9 and refined[2:5, 3:6].all()
    probes = block_probes(score)  # per 3 x 3 block: its centre (clipped to the map)
    assert probes.sum() == 9 and probes[1, 1] and probes[6, 7]
    blocks = block_values(coarse + np.where(probes, 0.0, np.nan), probes)
    blocks[1, 1] = 0.9
    refined = refine_cells(blocks, score, 0.25)  # per block: the suspect block and the 8 around it (all, here)
    assert refined.all()


# -- the modes on whole slides against the per-window reference -------------------------------------------------

def _maps(slide, root, run=BUNDLED):
    out = {}
    for mode in ("window", "dense", "cascade"):
        summary = analyse(run, slide, root / mode, ScoringOptions(device="cpu", workers=0, tta=False), stride=32, mode=mode)[0]["summary"]
        out[mode] = (summary, np.load(root / mode / "heatmap.npy"))
    out["in_scope"] = np.load(root / "window" / "scope.npy") <= out["window"][0]["scope"]["guard"]["threshold"]
    return out


def _check_agreement(maps):
    ref_summary, ref = maps["window"]
    scored = np.isfinite(ref)
    t = ref_summary["threshold"]
    ref = np.where(maps["in_scope"], ref, 0.0)  # the guarantee is for the cells the guard keeps (the others form no region)
    for mode in ("dense", "cascade"):
        summary, heat = maps[mode]
        assert summary["mode"] == mode
        assert (np.isfinite(heat) == scored).all()  # the same cells scored
        assert np.abs(heat[scored] - maps["window"][1][scored]).mean() < DENSE_TOLERANCE
    summary, heat = maps["cascade"]
    # dense alone may move cells across the threshold and the guard's (docs/slides.md); the cascade may not
    assert summary["size_class"] == ref_summary["size_class"] and summary["scope"]["in_scope"] == ref_summary["scope"]["in_scope"]
    # the cascade's guarantee on this slide: every in-scope cell at the threshold in the per-window map is found, none added
    heat = np.where(maps["in_scope"], heat, 0.0)
    assert not ((ref >= t) & (heat < t)).any() and not ((ref < t) & (heat >= t)).any()
    assert [r["cells"] for r in summary["region_list"]] == [r["cells"] for r in ref_summary["region_list"]]
    assert 0 < summary["cascade"]["refined_share"] <= 1


@pytest.mark.slow
def test_modes_agree_with_the_window_reference_on_a_slide_of_real_patches(tmp_path):
    slide, _ = real_mosaic_slide(tmp_path / "slide", cols=9, rows=7, tumour=(2, 5, 3, 6))
    _check_agreement(_maps(slide, tmp_path))


@pytest.mark.slow
def test_an_ensemble_scans_densely_and_its_modes_agree_with_its_window_reference(ensemble_run, tmp_path):
    slide, _ = real_mosaic_slide(tmp_path / "slide", cols=6, rows=4, tumour=(1, 3, 2, 4))
    maps = _maps(slide, tmp_path, ensemble_run)
    assert maps["window"][0]["scope"]["guard"] is not None  # the guard is checked too
    _check_agreement(maps)  # the summaries record "dense" and "cascade": no fallback to window


@pytest.mark.slow
def test_pcamscan_slides_are_scanned_densely_by_default_and_give_the_window_map(tmp_path, capsys):
    """The committed candidate `pcamscan` (a real trained run: candidates/pcamscan) on a slide of real patches, as a user
    runs it: `pcam slide` without --mode scans densely, and its map is the per-window map to float rounding, with the
    same regions, size class, guard distances and call."""
    run = REPO / "candidates" / "pcamscan"
    slide, _ = real_mosaic_slide(tmp_path / "slide", cols=9, rows=7, tumour=(2, 5, 3, 6))
    for out, mode in (("default", ()), ("window", ("--mode", "window"))):
        done = cli_here(capsys, "slide", "--run", str(run), "--input", str(slide), "--out", str(tmp_path / out), "--workers", "0", *mode)
        assert done.returncode == 0, done.stderr
    default, window = (json.loads((tmp_path / out / "summary.json").read_text()) for out in ("default", "window"))
    assert default["mode"] == "dense" and window["mode"] == "window"
    for name, atol in (("heatmap.npy", EXACT_TOLERANCE), ("scope.npy", 1e-3)):
        a, b = np.load(tmp_path / "default" / name), np.load(tmp_path / "window" / name)
        assert (np.isfinite(a) == np.isfinite(b)).all()
        np.testing.assert_allclose(a[np.isfinite(a)], b[np.isfinite(b)], atol=atol, rtol=1e-4 if name == "scope.npy" else 0)
    assert default["region_list"] and [r["cells"] for r in default["region_list"]] == [r["cells"] for r in window["region_list"]]
    for key in ("size_class", "call"):
        assert default[key] == window[key]
    assert default["scope"]["in_scope"] == window["scope"]["in_scope"]


@pytest.mark.slow
def test_modes_agree_with_the_window_reference_on_a_demo_slide(tmp_path):
    make_demo_slide(tmp_path / "demo", DemoSlideSpec(width=2400, height=1600, seed=0))
    _check_agreement(_maps(tmp_path / "demo" / "slide.tif", tmp_path))


@pytest.mark.slow
def test_cli_mode_dense_is_recorded_and_a_bad_mode_is_refused(tmp_path, capsys):
    make_demo_slide(tmp_path / "demo", DemoSlideSpec(width=1024, height=768, seed=0))
    done = cli_here(capsys, "slide", "--run", BUNDLED, "--input", str(tmp_path / "demo" / "slide.tif"), "--out", str(tmp_path / "out"),
                   "--mode", "dense", "--workers", "0")
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["mode"] == "dense" and summary["tta"] is False  # slides: one pass by default
    bad = cli_here(capsys, "slide", "--run", BUNDLED, "--input", str(tmp_path / "demo" / "slide.tif"), "--out", str(tmp_path / "x"),
                  "--mode", "fast")
    assert bad.returncode != 0 and "invalid choice: 'fast'" in bad.stderr


class _Stop(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["dense", "cascade"])
def test_an_interrupted_analysis_resumes_to_the_uninterrupted_map_in_each_mode(bundled, tmp_path, mode):
    slide, _ = real_mosaic_slide(tmp_path / "slide", cols=6, rows=4, tumour=(1, 3, 2, 4))
    options = dict(checkpoint="bundled", mode=mode, num_workers=0, region_px=256, scope=bundled.scope, model_name="pcamnet",
                   threshold=bundled.threshold)
    writes: list[int] = []
    score_slide(bundled.model, slide, AnalysisFolder(tmp_path / "whole"), progress=writes.append, **options)
    calls = []

    def stop_late(n: int) -> None:  # the last write raises: in the cascade, in its second pass
        calls.append(n)
        if len(calls) == len(writes):
            raise _Stop

    with pytest.raises(_Stop):
        score_slide(bundled.model, slide, AnalysisFolder(tmp_path / "cut"), progress=stop_late, **options)
    cut = AnalysisFolder(tmp_path / "cut")
    # the cascade's second pass scores the cells chosen from the dense map before any was overwritten, resumed or not
    assert cut.cascade_npy.exists() == (mode == "cascade")
    resumed = score_slide(bundled.model, slide, cut, resume=True, **options)
    assert resumed["resumed"] and resumed["mode"] == mode
    assert not cut.cascade_npy.exists() and resumed["cascade" if mode == "cascade" else "mode"]
    for name in ("heatmap.npy", "scope.npy"):
        np.testing.assert_allclose(np.load(tmp_path / "cut" / name), np.load(tmp_path / "whole" / name), atol=1e-6)
