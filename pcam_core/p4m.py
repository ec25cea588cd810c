"""Group convolutions over p4m: the four 90-degree rotations of the pixel grid, with and without a mirror (D4, 8
elements), after Cohen and Welling (2016) and Veeling et al. (2018), who found them to help on PCam.

A p4m feature map has `fields` fields of 8 channels, one channel per element of D4: the response of one filter
turned by that element. Rotating or mirroring the input rotates or mirrors each channel's map and permutes the 8
channels of every field in a fixed way, so a net of these layers ends in features that do not change when a patch is
turned or mirrored (`P4MNet`): it answers one pass what the 8-view TTA of an ordinary net averages. These rotations
and mirrors of the grid are exact (no interpolation), and with 2x2 pooling on even sides and symmetric zero padding
the whole net keeps them exactly, to float rounding.

Written in plain PyTorch because `escnn`, the maintained library for such layers, does not install on a machine
without a Fortran compiler (its `py3nj` dependency builds Fortran code); each layer here expands its weights into an
ordinary `nn.Conv2d` kernel, so a trained net exports to ONNX and TorchScript like any other.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ORDER = 8  # |D4|


def transform(x: torch.Tensor, element: int) -> torch.Tensor:
    """Element `element` of D4 applied to the last two (spatial) axes: mirror left-right when element >= 4, then turn
    by (element % 4) quarter turns."""
    if element >= 4:
        x = torch.flip(x, (-1,))
    return torch.rot90(x, element % 4, (-2, -1))


def _cayley() -> torch.Tensor:
    """table[a, b] = the element a∘b (b applied first, then a), read off the action on an asymmetric probe."""
    probe = torch.arange(9.0).reshape(3, 3)
    images = [transform(probe, e) for e in range(ORDER)]
    table = torch.empty(ORDER, ORDER, dtype=torch.long)
    for a in range(ORDER):
        for b in range(ORDER):
            composed = transform(transform(probe, b), a)
            table[a, b] = next(e for e, image in enumerate(images) if torch.equal(image, composed))
    return table


CAYLEY = _cayley()
INVERSE = torch.tensor([int((CAYLEY[a] == 0).nonzero()) for a in range(ORDER)])
# PERMUTE[g, h] = g^-1 h: which input channel's filter the output channel g applies to input channel h
PERMUTE = torch.stack([CAYLEY[INVERSE[g]] for g in range(ORDER)])


class _ExpandedConv(nn.Module):
    """A convolution whose kernel `expanded()` builds from its own weights on every call (stored in `weight`, an
    ordinary 4-d tensor, so that `channels_last` applies to it)."""

    def __init__(self, shape: tuple[int, int, int, int], padding: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(shape))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.padding = padding

    def expanded(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.expanded(), padding=self.padding)


class LiftingConv(_ExpandedConv):
    """An image (plain channels) to a p4m map: each filter applied turned by each of the 8 elements."""

    def __init__(self, cin: int, fields: int, kernel: int = 3, padding: int = 1) -> None:
        super().__init__((fields, cin, kernel, kernel), padding)

    def expanded(self) -> torch.Tensor:
        """The ordinary conv kernel: (fields * 8, cin, k, k), output channel f * 8 + g the filter f turned by g."""
        return torch.stack([transform(self.weight, g) for g in range(ORDER)], 1).flatten(0, 1)


class GroupConv(_ExpandedConv):
    """A p4m map to a p4m map: output channel (f, g) sums, over the input fields and their channels h, the filter
    f's slice for g^-1 h, turned by g."""

    def __init__(self, fields_in: int, fields_out: int, kernel: int = 3, padding: int = 1) -> None:
        # stored as (fields_out, fields_in * 8, k, k), read as (fields_out, fields_in, 8, k, k)
        super().__init__((fields_out, fields_in * ORDER, kernel, kernel), padding)

    def expanded(self) -> torch.Tensor:
        """The ordinary conv kernel: (fields_out * 8, fields_in * 8, k, k)."""
        out, cin, k, _ = self.weight.shape
        weight = self.weight.reshape(out, cin // ORDER, ORDER, k, k)
        turned = [transform(weight[:, :, PERMUTE[g]], g) for g in range(ORDER)]  # each (out, in, 8, k, k)
        return torch.stack(turned, 1).flatten(0, 1).flatten(1, 2)


class FieldBatchNorm(nn.BatchNorm3d):
    """Batch normalisation with one mean, variance, scale and shift per field (shared by its 8 channels), as keeping
    the symmetry requires."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return super().forward(x.reshape(b, c // ORDER, ORDER, h, w)).reshape(b, c, h, w)


def _block(conv: nn.Module, fields: int) -> nn.Sequential:
    return nn.Sequential(conv, FieldBatchNorm(fields), nn.ReLU(inplace=True))


class P4MNet(nn.Module):
    """`pcamnet` with p4m group convolutions: four stages of two 3x3 convolutions, batch norm and ReLU, each followed
    by 2x2 max-pooling (96 -> 48 -> 24 -> 12 -> 6), with 2-4-8-16 fields (the same 16-32-64-128 channels, so the same
    cost per patch, from 8x fewer weights); the mean over each field's 8 channels and the whole map, dropout and one
    logit. Turning or mirroring a patch leaves its logit unchanged."""

    def __init__(self, fields: tuple[int, ...] = (2, 4, 8, 16), dropout: float = 0.0) -> None:
        super().__init__()
        fin = 0
        for i, f in enumerate(fields, start=1):
            first = LiftingConv(3, f) if i == 1 else GroupConv(fin, f)
            setattr(self, f"stage{i}", nn.Sequential(_block(first, f), _block(GroupConv(f, f), f)))
            fin = f
        self.n_stages = len(fields)
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(fin, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.n_stages + 1):
            x = self.pool(getattr(self, f"stage{i}")(x))
        b, c, h, w = x.shape
        pooled = x.reshape(b, c // ORDER, ORDER * h * w).mean(2)  # invariant: the mean over each field's turns and the map
        return self.fc(self.dropout(pooled)).squeeze(1)
