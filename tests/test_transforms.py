"""pcam_core.transforms: the symmetries, augmentation that keeps the centre, normalisation, presets."""

from __future__ import annotations

import pytest
import torch

from pcam_core.config import AugmentConfig
from pcam_core.transforms import (
    PCAM_MEAN,
    PCAM_STD,
    BatchAugment,
    SampleTransform,
    colour_jitter,
    dihedral,
    dihedral_inverse,
    eval_preset,
    get_preset,
    hed_jitter,
    mixup,
    random_dihedral,
    random_shift,
)


def _batch(b=8, seed=0):
    return torch.randint(0, 256, (b, 3, 96, 96), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_eight_distinct_symmetries_with_inverses():
    x = _batch(1).float()
    outs = [dihedral(x, k) for k in range(8)]
    assert len({o.numpy().tobytes() for o in outs}) == 8
    for k in range(8):
        assert torch.equal(dihedral_inverse(dihedral(x, k), k), x)
    with pytest.raises(ValueError, match="0..7"):
        dihedral(x, 8)


def test_symmetries_map_the_central_region_onto_itself():
    x = torch.zeros(1, 1, 96, 96)
    x[..., 32:64, 32:64] = 1
    for k in range(8):
        assert torch.equal(dihedral(x, k), x)
    y = random_dihedral(_batch(16).float())
    assert y.shape == (16, 3, 96, 96)


def test_shift_moves_by_at_most_max_shift():
    x = torch.zeros(32, 3, 96, 96)
    x[:, :, 48, 48] = 1
    y = random_shift(x, 4)
    pos = y[:, 0].flatten(1).argmax(1)
    rows, cols = pos // 96, pos % 96
    assert ((rows - 48).abs() <= 4).all() and ((cols - 48).abs() <= 4).all()
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 1


def test_stain_and_colour_jitter_stay_in_range_and_vary_per_image():
    torch.manual_seed(0)
    x = _batch(16).float() / 255
    same = x[:1].repeat(16, 1, 1, 1)
    for fn in (lambda t: hed_jitter(t, 0.05), lambda t: colour_jitter(t, 0.2, 0.2, 0.2, 0.05)):
        y = fn(same)
        assert y.min() >= 0 and y.max() <= 1 and y.shape == same.shape
        assert (y - y[:1]).abs().flatten(1).amax(1)[1:].min() > 0  # every image got its own draw
    assert torch.allclose(hed_jitter(x, 0.0), x.clamp(min=1 / 255), atol=1e-4)  # zero strength is the identity


def test_train_preset_randomises_eval_preset_is_deterministic():
    x = _batch(8)
    torch.manual_seed(0)
    a = get_preset("train")(x)
    torch.manual_seed(1)
    b = get_preset("train")(x)
    assert a.dtype == torch.float32 and not torch.equal(a, b)
    e1, e2 = eval_preset()(x), eval_preset()(x)
    assert torch.equal(e1, e2)
    mean = torch.tensor(PCAM_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PCAM_STD).view(1, 3, 1, 1)
    assert torch.allclose(e1, (x.float() / 255 - mean) / std, atol=1e-6)
    with pytest.raises(ValueError, match="valid presets: train, eval, light"):
        get_preset("heavy")


def test_disabled_augmentation_is_identity():
    cfg = AugmentConfig(symmetries=False, stain=0, brightness=0, contrast=0, saturation=0, hue=0, shift=0)
    x = _batch(4)
    assert torch.equal(BatchAugment(cfg)(x), x.float() / 255)


def test_sample_transform_for_torchvision_style_datasets():
    t = SampleTransform("eval")
    img = _batch(1)[0]
    assert t(img).shape == (3, 96, 96) and "eval" in repr(t)


def test_mixup_blends_pairs_of_patches_and_their_labels_by_one_weight():
    torch.manual_seed(0)
    x, targets = _batch(16).float(), torch.tensor([1.0, 0.0] * 8)
    same = mixup(x, targets, 0.0)  # off
    assert same[0] is x and same[1] is targets
    mixed, soft = mixup(x, targets, 0.4)
    # every output is w * its patch + (1 - w) * some patch of the batch, with the same w for its label
    for i in range(16):
        found = False
        for j in range(16):
            if i == j:
                continue
            d = x[i] - x[j]
            w = float(((mixed[i] - x[j]) * d).sum() / (d * d).sum())
            if torch.allclose(mixed[i], w * x[i] + (1 - w) * x[j], atol=1e-3):
                assert 0 <= w <= 1 and float(soft[i]) == pytest.approx(float(w * targets[i] + (1 - w) * targets[j]), abs=1e-4)
                found = True
                break
        assert found or torch.allclose(mixed[i], x[i], atol=1e-3)  # paired with itself
    assert ((soft > 0) & (soft < 1)).any()  # tumour and normal patches blended: soft labels


def test_mixup_out_of_range_is_refused():
    with pytest.raises(ValueError, match="augment.mixup"):
        AugmentConfig(mixup=-0.1)
