"""Transforms: the 8 symmetries of the square, stain and colour augmentation, normalisation, presets.

The trainer augments whole batches on the training device (GPU or CPU), which is far cheaper than
per-image transforms in loader workers. Every augmentation keeps the central 32x32 region, where the
label is defined, in the centre: symmetries map the centre onto itself and shifts are a few pixels.

Batch transforms take a ``(B, 3, H, W)`` tensor, uint8 in [0, 255] or float in [0, 1], and the
presets return float tensors normalised with the PCam channel statistics.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import AugmentConfig

# Channel mean and standard deviation of real PCam patches (pixel values scaled to [0, 1]),
# measured on 4,000 real patches of the Kaggle training set.
PCAM_MEAN = (0.7058, 0.5510, 0.6987)
PCAM_STD = (0.2381, 0.2823, 0.2161)

# Ruifrok & Johnston stain vectors (haematoxylin, eosin, DAB) as rows, the matrix skimage's rgb2hed uses.
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; float input is returned as float32 unchanged."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 symmetries of the square (k in 0..7): rotate by (k % 4) * 90 degrees, then
    flip left-right when k >= 4. `dihedral_inverse(dihedral(x, k), k) == x`."""
    if not 0 <= k < 8:
        raise ValueError(f"symmetry index k={k} must be in 0..7")
    y = torch.rot90(x, k % 4, dims=(-2, -1))
    return y.flip(-1) if k >= 4 else y


def dihedral_inverse(x: torch.Tensor, k: int) -> torch.Tensor:
    y = x.flip(-1) if k >= 4 else x
    return torch.rot90(y, -(k % 4), dims=(-2, -1))


def random_dihedral(x: torch.Tensor) -> torch.Tensor:
    """Apply an independent random symmetry of the square to each image of the batch."""
    b = x.shape[0]
    k = torch.randint(0, 8, (b,), device=x.device)
    out = torch.empty_like(x)
    for sym in range(8):
        mask = k == sym
        if mask.any():
            out[mask] = dihedral(x[mask], sym)
    return out


def _uniform(b: int, strength: float, device: torch.device) -> torch.Tensor:
    """Per-image factors 1 + U(-strength, strength), shaped (B, 1, 1, 1)."""
    return 1.0 + (torch.rand(b, 1, 1, 1, device=device) * 2 - 1) * strength


def hed_jitter(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Stain augmentation (Tellez et al. 2018): perturb each image's haematoxylin, eosin and DAB
    concentrations by a random scale and offset in optical-density space. `x` is float in [0, 1]."""
    b = x.shape[0]
    hed_from_rgb = _HED_FROM_RGB.to(x.device, x.dtype)
    rgb_from_hed = _RGB_FROM_HED.to(x.device, x.dtype)
    od = -torch.log(x.clamp(min=1.0 / 255))
    hed = torch.einsum("bchw,cd->bdhw", od, hed_from_rgb)
    alpha = 1.0 + (torch.rand(b, 3, 1, 1, device=x.device) * 2 - 1) * strength
    beta = (torch.rand(b, 3, 1, 1, device=x.device) * 2 - 1) * strength
    od = torch.einsum("bdhw,dc->bchw", hed * alpha + beta, rgb_from_hed)
    return torch.exp(-od).clamp(0, 1)


def colour_jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float, hue: float) -> torch.Tensor:
    """Per-image brightness, contrast, saturation and hue changes (torchvision's definitions, batched
    with an independent draw for every image). `x` is float in [0, 1]."""
    b, device = x.shape[0], x.device
    gray_weights = torch.tensor([0.299, 0.587, 0.114], device=device, dtype=x.dtype).view(1, 3, 1, 1)
    if brightness > 0:
        x = x * _uniform(b, brightness, device)
    if contrast > 0:
        mean = (x * gray_weights).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
        x = (x - mean) * _uniform(b, contrast, device) + mean
    if saturation > 0:
        gray = (x * gray_weights).sum(1, keepdim=True)
        x = (x - gray) * _uniform(b, saturation, device) + gray
    if hue > 0:
        x = _rotate_hue(x, (torch.rand(b, device=device) * 2 - 1) * hue)
    return x.clamp(0, 1)


def _rotate_hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate hue by `turns` (fraction of a full turn per image) in YIQ space; a linear, batched op."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=x.device, dtype=x.dtype)
    from_yiq = torch.linalg.inv(to_yiq)
    theta = turns * 2 * torch.pi
    cos, sin = torch.cos(theta), torch.sin(theta)
    b = x.shape[0]
    rot = torch.zeros(b, 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = from_yiq @ rot @ to_yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", m, x)


def mixup(x: torch.Tensor, targets: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al., ICLR 2018) of an augmented float batch: each patch blended with another of the batch
    (a random pairing) by one weight w ~ Beta(alpha, alpha) drawn for the batch, and its label with the other's by
    the same weight, so a pair of a tumour and a normal patch learns w of tumour. alpha 0 returns the batch as is.
    Both patches keep the centre in the centre, so the blended label still describes the central region."""
    if alpha <= 0:
        return x, targets
    weight = torch.distributions.Beta(alpha, alpha).sample().to(x.device)
    pair = torch.randperm(x.shape[0], device=x.device)
    return weight * x + (1 - weight) * x[pair], weight * targets + (1 - weight) * targets[pair]


def random_shift(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels in each direction (reflect padding)."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="reflect")
    dy = torch.randint(0, 2 * max_shift + 1, (b,), device=x.device)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), device=x.device)
    rows = (dy.view(b, 1) + torch.arange(h, device=x.device).view(1, h)).view(b, 1, h, 1).expand(b, 3, h, w + 2 * max_shift)
    out = padded.gather(2, rows)
    cols = (dx.view(b, 1) + torch.arange(w, device=x.device).view(1, w)).view(b, 1, 1, w).expand(b, 3, h, w)
    return out.gather(3, cols)


class Normalize(nn.Module):
    """(x - mean) / std with the PCam channel statistics, for [0, 1] float or uint8 [0, 255] input.

    Computed as one in-place affine map (x * scale + shift) on a single fresh float tensor (or on `out`,
    e.g. a loader's shared memory). On a channels-last batch the per-channel constants are tiled along
    an image row so that the innermost loop runs over 288 contiguous values rather than 3, which is
    much faster on the CPU than broadcasting (1, 3, 1, 1) constants."""

    accepts_out = True  # forward(x, out=...) writes into a given float32 tensor

    def __init__(self, mean: tuple[float, ...] = PCAM_MEAN, std: tuple[float, ...] = PCAM_STD) -> None:
        super().__init__()
        mean_t, std_t = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / std_t, persistent=False)
        self.register_buffer("shift", -mean_t / std_t, persistent=False)

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        y = x.to(torch.float32, copy=True) if out is None else out.copy_(x)
        scale = self.scale / 255.0 if x.dtype == torch.uint8 else self.scale  # uint8 holds [0, 255]
        return _affine_(y, scale.to(y.device), self.shift.to(y.device))


def _affine_(y: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """y = y * scale + shift in place, with (1, C, 1, 1) constants."""
    if y.dim() == 4 and not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last):
        _, c, _, w = y.shape
        rows = y.permute(0, 2, 3, 1).view(-1, w * c)  # one image row per line: (x0 c0, x0 c1, x0 c2, x1 c0, ...)
        torch.addcmul(shift.reshape(c).repeat(w), rows, scale.reshape(c).repeat(w), out=rows)
    else:
        torch.addcmul(shift, y, scale, out=y)
    return y


class BatchAugment(nn.Module):
    """Random training augmentation of a batch per `AugmentConfig`; returns float in [0, 1]."""

    def __init__(self, config: AugmentConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        x = to_float(x)
        if c.symmetries:
            x = random_dihedral(x)
        if c.shift:
            x = random_shift(x, c.shift)
        if c.stain > 0:
            x = hed_jitter(x, c.stain)
        if c.brightness or c.contrast or c.saturation or c.hue:
            x = colour_jitter(x, c.brightness, c.contrast, c.saturation, c.hue)
        return x


def train_preset(config: AugmentConfig | None = None) -> nn.Module:
    """uint8 batch -> augmented, normalised float batch."""
    return nn.Sequential(BatchAugment(config or AugmentConfig()), Normalize())


def eval_preset() -> nn.Module:
    """uint8 batch -> normalised float batch, no randomness."""
    return Normalize()


PRESETS: dict[str, Callable[[], nn.Module]] = {
    "train": train_preset,
    "eval": eval_preset,
    "light": lambda: train_preset(AugmentConfig(stain=0.0, brightness=0.1, contrast=0.1, saturation=0.1, hue=0.0, shift=0)),
}


def get_preset(name: str) -> nn.Module:
    """A named batch transform: "train", "eval" or "light" (symmetries and mild colour only)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown transform preset {name!r}; valid presets: {', '.join(PRESETS)}") from None


class SampleTransform:
    """A per-sample version of a preset, for `PCamH5(transform=...)` users who want torchvision-style
    datasets: takes one uint8 ``(3, 96, 96)`` image, returns a normalised float tensor."""

    def __init__(self, preset: str = "eval") -> None:
        self.preset_name = preset
        self.module = get_preset(preset)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.module(image.unsqueeze(0))[0]

    def __repr__(self) -> str:
        return f"SampleTransform({self.preset_name!r})"
