"""pcam_core.p4m: the group of the grid's turns and mirrors, layers that turn their maps with the input, and a net whose
logit does not change when a patch is turned or mirrored."""

from __future__ import annotations

import pytest
import torch

from pcam_core.models import create_model
from pcam_core.p4m import CAYLEY, INVERSE, ORDER, GroupConv, LiftingConv, transform


def _turned_map(y: torch.Tensor, g: int) -> torch.Tensor:
    """What a p4m map must become when the input is turned by g: each channel's map turned by g, and channel k of each
    field taken from channel g^-1 k."""
    b, c, h, w = y.shape
    fields = y.reshape(b, c // ORDER, ORDER, h, w)
    out = torch.stack([transform(fields[:, :, int(CAYLEY[INVERSE[g], k])], g) for k in range(ORDER)], 2)
    return out.reshape(b, c, h, w)


def test_the_eight_elements_form_the_group_of_the_squares_symmetries():
    probe = torch.arange(16.0).reshape(4, 4)
    images = {tuple(transform(probe, g).flatten().tolist()) for g in range(ORDER)}
    assert len(images) == ORDER  # 8 different views of an asymmetric square
    assert torch.equal(CAYLEY[0], torch.arange(ORDER)) and torch.equal(CAYLEY[:, 0], torch.arange(ORDER))  # 0: identity
    assert all(int(CAYLEY[g, INVERSE[g]]) == 0 for g in range(ORDER))
    assert not torch.equal(CAYLEY, CAYLEY.T)  # a turn then a mirror is not the mirror then the turn
    for a in range(ORDER):  # the table is the action's: turning by b then a is turning by a∘b
        for b in range(ORDER):
            assert torch.equal(transform(transform(probe, b), a), transform(probe, int(CAYLEY[a, b])))


@pytest.mark.parametrize("g", range(ORDER))
def test_the_layers_turn_their_maps_with_the_input(g):
    torch.manual_seed(g)
    x = torch.randn(2, 3, 20, 20)
    lift, conv = LiftingConv(3, 2), GroupConv(2, 3)
    with torch.no_grad():
        assert torch.allclose(lift(transform(x, g)), _turned_map(lift(x), g), atol=1e-5)
        y = lift(x)
        assert torch.allclose(conv(_turned_map(y, g)), _turned_map(conv(y), g), atol=1e-5)


def test_the_net_gives_a_patch_one_logit_whichever_way_it_is_turned():
    torch.manual_seed(0)
    model = create_model("pcamnet_p4m")
    for layer in model.modules():  # running statistics = one batch's, so that the untrained net is not flat in eval mode
        if isinstance(layer, torch.nn.BatchNorm3d):
            layer.momentum = 1.0
    model.train()(torch.randn(8, 3, 96, 96))
    model.eval()
    x = torch.randn(4, 3, 96, 96)
    with torch.no_grad():
        logits = model(x)
        assert logits.std() > 1e-4  # different patches, different logits
        for g in range(1, ORDER):
            assert torch.allclose(model(transform(x, g)), logits, atol=1e-5)
    ordinary = create_model("pcamnet").eval()
    with torch.no_grad():  # an ordinary net has no such symmetry: that is what its 8-view TTA averages over
        assert not torch.allclose(ordinary(transform(x, 1)), ordinary(x), atol=1e-5)


def test_the_same_cost_from_eight_times_fewer_weights():
    p4m, plain = create_model("pcamnet_p4m"), create_model("pcamnet")
    n_p4m, n_plain = (sum(p.numel() for p in m.parameters()) for m in (p4m, plain))
    assert 6 < n_plain / n_p4m < 9
    x = torch.zeros(1, 3, 96, 96)
    channels = {}
    for name, model in (("p4m", p4m), ("plain", plain)):
        model.stage4.register_forward_hook(lambda m, i, o, n=name: channels.__setitem__(n, o.shape))
        model(x)
    assert channels["p4m"] == channels["plain"] == (1, 128, 12, 12)  # the same maps, so the same convolutions' cost
