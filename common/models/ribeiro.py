"""Ribeiro et al. 2020 (Nat. Commun.) 1-D ResNet, the baseline of the seed paper.

Stem conv(64) + norm + ReLU, then four pre-activation residual units (128, 196, 256, 320 filters),
each downsampling by 4, then the flattened feature map into one dense layer. The flatten size
follows ``input_length``, so the same code serves 1000 samples at 100 Hz and 4096/5000 at 500 Hz.

Kernel size: the Keras original uses 16 with asymmetric 'same' padding; a strided PyTorch conv
pads symmetrically, so the kernel must be odd. 17 (as in the authors' PyTorch port) keeps every
stage at exactly ceil(L / 4) samples and gives the published ~6.8 M parameters at 4096 samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from common.models.base import ECGClassifier, Inputs, norm1d, scaled

FILTERS = (128, 196, 256, 320)
DOWNSAMPLE = 4


class _Stem(nn.Module):
    def __init__(self, n_leads: int, channels: int, kernel_size: int, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv1d(n_leads, channels, kernel_size, padding="same", bias=False)
        self.norm = norm1d(norm, channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.relu(self.norm(self.conv(x)))
        # Units carry two tensors: the activated path and the pre-activation sum (the skip).
        return x, x


class ResidualUnit(nn.Module):
    """conv-norm-ReLU-dropout-conv(stride 4), plus maxpool(+1x1 conv) skip, then norm-ReLU-dropout.

    Pre-activation design (He et al. 2016): the skip carries the sum before normalisation.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, norm: str, dropout: float) -> None:
        super().__init__()
        pad = (kernel_size - 1) // 2
        self.conv1 = nn.Conv1d(c_in, c_out, kernel_size, padding=pad, bias=False)
        self.norm1 = norm1d(norm, c_out)
        self.conv2 = nn.Conv1d(
            c_out, c_out, kernel_size, stride=DOWNSAMPLE, padding=pad, bias=False
        )
        self.norm2 = norm1d(norm, c_out)
        self.dropout = nn.Dropout(dropout)
        skip: list[nn.Module] = [nn.MaxPool1d(DOWNSAMPLE, DOWNSAMPLE, ceil_mode=True)]
        if c_in != c_out:
            skip.append(nn.Conv1d(c_in, c_out, 1, bias=False))
        self.skip = nn.Sequential(*skip)

    def forward(self, xy: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = xy
        y = self.skip(y)
        x = self.dropout(torch.relu(self.norm1(self.conv1(x))))
        y = self.conv2(x) + y
        x = self.dropout(torch.relu(self.norm2(y)))
        return x, y


@dataclass(frozen=True)
class RibeiroShape:
    """Ribeiro et al.'s defaults: kernel 17, dropout 0.2, filters 64-320 at width 1."""

    width: float = 1.0
    kernel_size: int = 17
    dropout: float = 0.2


class RibeiroResNet(ECGClassifier):
    Shape = RibeiroShape

    def __init__(self, inputs: Inputs, shape: RibeiroShape = RibeiroShape()) -> None:
        super().__init__(inputs.length)
        k, norm = shape.kernel_size, inputs.norm
        if k % 2 == 0:
            raise ValueError(f"kernel_size={k}: must be odd (see module docstring)")
        stem = scaled(64, shape.width)
        widths = [scaled(f, shape.width) for f in FILTERS]
        units = [
            ResidualUnit(c_in, c_out, k, norm, shape.dropout)
            for c_in, c_out in zip([stem, *widths[:-1]], widths, strict=True)
        ]
        self.blocks = nn.ModuleList([_Stem(inputs.n_leads, stem, k, norm), *units])
        length = inputs.length
        for _ in FILTERS:
            length = math.ceil(length / DOWNSAMPLE)
        self.neck = nn.Flatten()
        self.head = nn.Linear(widths[-1] * length, inputs.n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        xy = self.blocks[0](x)
        for unit in self.blocks[1:]:
            xy = unit(xy)
        return xy[0]
