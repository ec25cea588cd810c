"""pcam_core.models: every registered model, forward and backward, its Grad-CAM layers, local weights."""

from __future__ import annotations

import pytest
import torch

from helpers import model_name_params
from pcam_core.models import (MODELS, EnsembleModel, create_model, get_layer, get_spec, guard_network, load_weights,
                               resolve_model_name)


@pytest.mark.parametrize("name", model_name_params())  # the largest ImageNet models: slow
def test_forward_backward_and_target_layers(name):
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.randn(2, 3, 96, 96)
    sizes = {}
    hooks = [get_layer(model, path).register_forward_hook(lambda m, i, o, p=path: sizes.__setitem__(p, o.shape[-1]))
             for path in get_spec(name).target_layers]
    logits = model(x)
    assert logits.shape == (2,) and logits.dtype == torch.float32  # raw logits, one per patch
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert sizes == get_spec(name).target_layers  # the stated feature-map size of each Grad-CAM layer
    for h in hooks:
        h.remove()


def test_the_guard_reads_an_ensembles_first_member():
    nets = [create_model("pcamnet"), create_model("pcamnet")]
    assert guard_network(EnsembleModel(nets)) is nets[0] and guard_network(nets[1]) is nets[1]
    assert get_layer(EnsembleModel(nets), "stage2") is nets[0].stage2


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError) as err:
        create_model("vgg16")
    for name in MODELS:
        assert name in str(err.value)


def test_auto_resolves_per_device():
    assert resolve_model_name("auto", "cpu") == "pcamnet"
    assert resolve_model_name("auto", "cuda") == "resnet18"
    assert resolve_model_name("densenet121", "cpu") == "densenet121"


def test_local_weights_partial_and_refusals(tmp_path):
    src = create_model("resnet18")
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("net.fc")}
    state["net.fc.1.weight"] = torch.zeros(1000, 512)  # an ImageNet-shaped head: skipped, not an error
    torch.save(state, tmp_path / "backbone.pt")
    model = create_model("resnet18", weights=tmp_path / "backbone.pt")
    assert torch.equal(model.state_dict()["net.layer1.0.conv1.weight"], src.state_dict()["net.layer1.0.conv1.weight"])
    torch.save({"other": torch.zeros(3)}, tmp_path / "unrelated.pt")
    with pytest.raises(ValueError, match="none of its 1 tensors match"):
        load_weights(create_model("pcamnet"), tmp_path / "unrelated.pt")
    with pytest.raises(FileNotFoundError):
        create_model("pcamnet", weights=tmp_path / "missing.pt")


def test_pickled_weights_that_would_run_code_are_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x": Evil()}, tmp_path / "evil.pt", _use_new_zipfile_serialization=True)
    with pytest.raises(ValueError, match="not a loadable weights file"):
        create_model("pcamnet", weights=tmp_path / "evil.pt")
    assert not marker.exists()


def _convolutions(model: torch.nn.Module) -> list[torch.Tensor]:
    """The model's 4-d weights: its convolutions' (P4M's included, which build their kernels from them)."""
    return [p for p in model.parameters() if p.dim() == 4]


@pytest.mark.parametrize("name", ["pcamnet", "pcamnet_p4m", "pcamresnet", "resnet18"])
def test_models_come_channels_last_and_score_as_the_same_weights_in_nchw(name):
    """`create_model` gives every convolution channels-last weights (faster on the CPU: benchmarks/
    bench_channels_last.py); the same weights in NCHW give the same logits, and a state dict saved from either layout
    loads into the other."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    assert _convolutions(model) and all(w.is_contiguous(memory_format=torch.channels_last) for w in _convolutions(model))
    nchw = create_model(name).to(memory_format=torch.contiguous_format).eval()
    nchw.load_state_dict(model.state_dict())
    assert all(w.is_contiguous() for w in _convolutions(nchw))
    x = torch.randn(4, 3, 96, 96)  # inputs stay NCHW, as the loaders give them
    with torch.no_grad():
        torch.testing.assert_close(model(x), nchw(x), rtol=1e-4, atol=1e-5)
        again = create_model(name).eval()
        again.load_state_dict(nchw.state_dict())  # an NCHW checkpoint, as earlier versions wrote them
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _convolutions(again))
        torch.testing.assert_close(again(x), model(x), rtol=1e-4, atol=1e-5)


def test_the_bundled_members_load_channels_last():
    from pcam_core.loading import load_run_model

    ensemble = load_run_model("bundled", device="cpu").model
    assert isinstance(ensemble, EnsembleModel)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _convolutions(ensemble))
