"""InceptionTime-style network as in Strodthoff et al.'s PTB-XL benchmark (inception1d: .925).

Each inception block: a 1x1 bottleneck feeding three long convolutions (kernel 39, 19, 9 by
default) beside a maxpool + 1x1 branch, concatenated. A residual shortcut spans every three
blocks; the concat-pooling head follows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from common.models.base import ECGClassifier, Inputs, norm1d, pooling_neck, scaled

#: 20 stages: Strodthoff's benchmark uses 2; building hundreds takes seconds even on the meta
#: device, before the parameter cap could refuse them.
MAX_DEPTH = 60


def _conv(c_in: int, c_out: int, kernel_size: int) -> nn.Conv1d:
    return nn.Conv1d(c_in, c_out, kernel_size, padding=(kernel_size - 1) // 2, bias=False)


class InceptionBlock(nn.Module):
    def __init__(
        self, c_in: int, filters: int, kernel_sizes: tuple[int, ...], bottleneck: int, norm: str
    ) -> None:
        super().__init__()
        self.bottleneck = _conv(c_in, bottleneck, 1)
        self.convs = nn.ModuleList(_conv(bottleneck, filters, k) for k in kernel_sizes)
        self.pool_branch = nn.Sequential(nn.MaxPool1d(3, 1, padding=1), _conv(c_in, filters, 1))
        self.norm = norm1d(norm, filters * (len(kernel_sizes) + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bottled = self.bottleneck(x)
        branches = [conv(bottled) for conv in self.convs] + [self.pool_branch(x)]
        return torch.relu(self.norm(torch.cat(branches, dim=1)))


class InceptionStage(nn.Module):
    """Three inception blocks spanned by one 1x1-conv shortcut."""

    def __init__(
        self, c_in: int, filters: int, kernel_sizes: tuple[int, ...], bottleneck: int, norm: str
    ) -> None:
        super().__init__()
        c_out = filters * (len(kernel_sizes) + 1)
        self.inception = nn.Sequential(
            *[
                InceptionBlock(c_in if i == 0 else c_out, filters, kernel_sizes, bottleneck, norm)
                for i in range(3)
            ]
        )
        self.shortcut = nn.Sequential(_conv(c_in, c_out, 1), norm1d(norm, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.inception(x) + self.shortcut(x))


@dataclass(frozen=True)
class InceptionShape:
    """Strodthoff et al.'s defaults: depth 6 (two stages), kernels 39/19/9, 32 filters."""

    depth: int = 6
    width: float = 1.0
    kernel_size: int = 40
    filters: int = 32
    bottleneck: int = 32
    head_hidden: int | None = 128
    head_dropout: float = 0.5


class Inception1d(ECGClassifier):
    """``blocks`` = the residual stages (depth / 3 of them)."""

    Shape = InceptionShape

    def __init__(self, inputs: Inputs, shape: InceptionShape = InceptionShape()) -> None:
        super().__init__(inputs.length)
        if shape.depth % 3 or not 0 < shape.depth <= MAX_DEPTH:
            raise ValueError(
                f"depth={shape.depth}: must be a positive multiple of 3, at most {MAX_DEPTH}"
            )
        # Strodthoff's rule: kernel_size, /2, /4, each made odd so 'same' padding is symmetric.
        k = shape.kernel_size
        kernel_sizes = tuple(k - 1 if k % 2 == 0 else k for k in (k, k // 2, k // 4))
        filters, bottleneck = (
            scaled(shape.filters, shape.width),
            scaled(shape.bottleneck, shape.width),
        )
        c_out = filters * (len(kernel_sizes) + 1)
        norm = inputs.norm
        self.blocks = nn.ModuleList(
            InceptionStage(
                inputs.n_leads if i == 0 else c_out, filters, kernel_sizes, bottleneck, norm
            )
            for i in range(shape.depth // 3)
        )
        self.neck, features = pooling_neck(c_out, shape.head_hidden, shape.head_dropout, norm)
        self.head = nn.Linear(features, inputs.n_classes)
