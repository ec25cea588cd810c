"""The out-of-scope guard (`pcam_core.scope`): fitted statistics, the threshold's promise, the shipped guard of the
bundled model on real lymph-node patches and on a real skin scan, and the file it is kept in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import REPO
from pcam_core.api import as_patches
from pcam_core.loading import load_run_model
from pcam_core.models import EnsembleModel, create_model
from pcam_core.scope import FeatureTap, ScopeModel, TapFull, fit_scope, scope_features
from pcam_core.slides.reader import PCAM_MPP, open_slide
from pcam_core.slides.tissue import tissue_mask
from pcam_core.transforms import eval_preset

SKIN = REPO / "tests" / "data" / "slides" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="module")
def bundled():
    loaded = load_run_model("bundled", device="cpu")
    return loaded, ScopeModel.load(loaded.run.folder.scope_path)


def skin_windows() -> np.ndarray:
    """96-px windows at PCam scale, at least half tissue, from the real CC0 skin scan."""
    with open_slide(SKIN) as slide:
        width, height = slide.dimensions
        f = PCAM_MPP / slide.mpp
        image = slide.read_scaled(0, 0, width, height, (int(width / f), int(height / f)))
    mask = tissue_mask(image)
    return np.stack([image[y:y + 96, x:x + 96] for y in range(0, image.shape[0] - 95, 96)
                     for x in range(0, image.shape[1] - 95, 96) if mask[y:y + 96, x:x + 96].mean() >= 0.5])


@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_the_bundled_guard_keeps_lymph_node_patches_and_flags_skin(bundled, real_kaggle):
    loaded, scope = bundled
    lymph = as_patches(sorted(str(p) for p in (real_kaggle / "train").glob("*.tif")))
    inside = scope.in_scope(scope.distance(scope_features(loaded.model, loaded.model_name, lymph)))
    skin = skin_windows()
    flagged = ~scope.in_scope(scope.distance(scope_features(loaded.model, loaded.model_name, skin)))
    assert len(lymph) == 160 and len(skin) >= 40
    assert inside.mean() >= 0.9, f"only {inside.mean():.1%} of real lymph-node patches in scope"
    assert flagged.mean() >= 0.9, f"only {flagged.mean():.1%} of skin windows flagged"
    assert scope.model_name == "pcamnet" and scope.layers == ("stage1", "stage2") and 0.03 <= scope.rate <= 0.05


def test_the_threshold_flags_the_asked_share_of_calibration_patches():
    rng = np.random.default_rng(0)
    fit, calibration = rng.normal(size=(2000, 8)), rng.normal(size=(400, 8))
    scope = fit_scope(fit, calibration, model_name="pcamnet", rate=0.1, fitted_on="gaussian")
    assert 0.08 <= np.mean(~scope.in_scope(scope.distance(calibration))) <= 0.1
    far = scope.distance(rng.normal(loc=6.0, size=(100, 8)))
    assert not scope.in_scope(far).any()
    assert not scope.in_scope(np.array([np.nan]))[0]
    with pytest.raises(ValueError, match=r"must be \(N, 8\)"):
        scope.distance(np.zeros((3, 5)))


@pytest.mark.parametrize("kwargs, message", [({"rate": 0.0}, "strictly between 0 and 1"), ({"rate": 1.5}, "strictly between")])
def test_fit_refuses_a_meaningless_rate(kwargs, message):
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match=message):
        fit_scope(rng.normal(size=(100, 4)), rng.normal(size=(50, 4)), model_name="pcamnet", **kwargs)


def test_fit_refuses_too_few_patches():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="more patches to fit than features"):
        fit_scope(rng.normal(size=(5, 8)), rng.normal(size=(50, 8)), model_name="pcamnet")
    with pytest.raises(ValueError, match="at least 20 held-out patches"):
        fit_scope(rng.normal(size=(100, 8)), rng.normal(size=(5, 8)), model_name="pcamnet")


def test_the_guard_round_trips_through_its_file_and_refuses_others(tmp_path: Path):
    rng = np.random.default_rng(3)
    scope = fit_scope(rng.normal(size=(300, 6)), rng.normal(size=(60, 6)), model_name="pcamnet", fitted_on="test")
    scope.save(tmp_path / "scope.npz")
    again = ScopeModel.load(tmp_path / "scope.npz")
    assert again.record() == scope.record()
    assert np.array_equal(again.mean, scope.mean) and np.array_equal(again.precision, scope.precision)
    np.savez(tmp_path / "other.npz", mean=np.zeros(3))
    with pytest.raises(ValueError, match="not an out-of-scope record"):
        ScopeModel.load(tmp_path / "other.npz")
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "pickled.npz").write_bytes((tmp_path / "pickled.npy").read_bytes())
    with pytest.raises(ValueError, match="not an out-of-scope record"):
        ScopeModel.load(tmp_path / "pickled.npz")
    with pytest.raises(FileNotFoundError):
        ScopeModel.load(tmp_path / "missing.npz")


def test_the_tap_reads_the_named_layers_of_one_forward_pass():
    model = create_model("pcamnet").eval()
    pixels = np.random.default_rng(4).integers(0, 256, size=(3, 96, 96, 3), dtype=np.uint8)
    features = scope_features(model, "pcamnet", pixels)
    assert features.shape == (3, 2 * (16 + 32))
    with FeatureTap(model, ["stage1"]) as tap:
        with pytest.raises(RuntimeError, match="no forward pass"):
            tap.take()
    with pytest.raises(ValueError, match="no scope layers"):
        FeatureTap(model, [])


def test_the_features_stop_each_pass_at_the_scope_layers_and_equal_a_whole_pass():
    """`scope_features` ends each forward pass once the scope layers have run (the rest of the network, and an
    ensemble's other members, are not computed: benchmarks/bench_scope_features.py) and gives what the tap reads from
    a whole pass, the one that scores a patch."""
    torch.manual_seed(0)
    members = [create_model("pcamnet").eval() for _ in range(3)]
    pixels = np.random.default_rng(5).integers(0, 256, size=(5, 96, 96, 3), dtype=np.uint8)
    batch = eval_preset()(torch.from_numpy(pixels).permute(0, 3, 1, 2))
    for model in (members[0], EnsembleModel(members)):
        later = []
        hooks = [m.stage3.register_forward_hook(lambda *_: later.append(1)) for m in members]
        features = scope_features(model, "pcamnet", pixels, batch_size=2)
        assert later == []  # no pass went beyond stage2, in any member
        for hook in hooks:
            hook.remove()
        with torch.no_grad(), FeatureTap(model, ["stage1", "stage2"]) as tap:
            model(batch)
            np.testing.assert_allclose(features, tap.take(), rtol=1e-5, atol=1e-6)  # batches of 2 against 5
        with torch.no_grad(), FeatureTap(model, ["stage1", "stage2"], stop=True) as tap, pytest.raises(TapFull):
            model(batch)


@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_a_run_fits_its_own_guard_and_the_loader_carries_it(trained_run, demo_root, tmp_path):
    import shutil

    from pcam_core.data import PCamH5
    from pcam_core.runs import RunDir
    from pcam_core.scope import fit_run_scope

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert (run / "scope.npz").exists()  # training fitted it when the run finished; fitted again here from nothing
    (run / "scope.npz").unlink()
    before = load_run_model(run, device="cpu")
    assert before.scope is None
    scope = fit_run_scope(RunDir(run), before.model, before.config, limit=400)
    loaded = load_run_model(run, device="cpu")
    assert loaded.scope is not None and loaded.scope.record() == scope.record()
    assert scope.n_fit == 400 and scope.model_name == before.model_name
    test = PCamH5(demo_root, "test")
    demo = scope.in_scope(scope.distance(scope_features(loaded.model, loaded.model_name, test.read_pixels(range(200)))))
    assert demo.mean() >= 0.85, f"only {demo.mean():.1%} of the run's own kind of patches in scope"


# -- a slide's scope (slides.scope_map): the words and the rules --------------------------------------------------

def test_a_slide_mostly_out_of_scope_or_too_coarse_or_at_a_guessed_scale_is_not_assessed():
    from pcam_core.slides.scope_map import slide_scope

    guard = {"rate": 0.05, "threshold": 12.0}
    scored = np.ones((10, 10), dtype=bool)
    some, most = np.zeros_like(scored), np.zeros_like(scored)
    some[0, :3], most[:6] = True, True
    fine = slide_scope(scored, some, mpp=0.25, mpp_source="metadata", guard=guard)
    assert fine["in_scope"] and fine["out_of_scope_fraction"] == 0.03 and fine["cells_out_of_scope"] == 3
    assert fine["reason"].startswith("In scope: 3.0% of the scored tissue")
    mostly = slide_scope(scored, most, mpp=0.25, mpp_source="metadata", guard=guard)
    assert not mostly["in_scope"] and "60.0% of the scored tissue is unlike" in mostly["reason"]
    coarse = slide_scope(scored, some, mpp=2.0, mpp_source="metadata", guard=guard)
    assert not coarse["in_scope"] and "coarser than the model's 0.972 µm/px" in coarse["reason"] and "enlarged 2.1x" in coarse["reason"]
    guessed = slide_scope(scored, some, mpp=0.5, mpp_source="dpi guess", guard=guard)
    assert not guessed["in_scope"] and "was guessed" in guessed["reason"]
    unchecked = slide_scope(scored, most, mpp=0.25, mpp_source="given", guard=None)
    assert unchecked["in_scope"] and not unchecked["checked"] and "no out-of-scope guard" in unchecked["reason"].lower()


def test_pcam_scope_replaces_a_damaged_or_mismatched_guard_that_loading_refuses(trained_run, tmp_path, capsys):
    """Loading a run refuses a guard it cannot read or one fitted for another model, and says to refit it with
    `pcam scope`: that command then does (it loads the weights without the guard it replaces)."""
    import shutil

    from pcam_core.cli import main

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    good = load_run_model(run, device="cpu").scope.record()
    (run / "scope.npz").write_bytes(b"damaged")
    with pytest.raises(ValueError, match="scope.npz: not an out-of-scope record"):
        load_run_model(run, device="cpu")
    assert main(["scope", "--run", str(run), "--limit", "100", "--device", "cpu"]) == 0
    assert "wrote" in capsys.readouterr().out
    refitted = load_run_model(run, device="cpu").scope
    assert refitted is not None and refitted.model_name == "pcamnet" and refitted.record()["n_fit"] == 100 != good["n_fit"]
