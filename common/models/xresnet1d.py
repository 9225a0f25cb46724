"""fastai-style XResNet in 1-D as in Strodthoff et al.'s PTB-XL benchmark (xresnet1d101: .925).

Bag-of-tricks ResNet (He et al. 2019): a three-conv stem, average-pool shortcuts when striding,
the last norm of every residual branch initialised to zero, and the concat-pooling head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from common.models.base import ECGClassifier, Inputs, norm1d, pooling_neck, scaled

#: depth -> (expansion, residual blocks per stage); the names torchvision/fastai use.
VARIANTS: dict[int, tuple[int, tuple[int, ...]]] = {
    18: (1, (2, 2, 2, 2)),
    34: (1, (3, 4, 6, 3)),
    50: (4, (3, 4, 6, 3)),
    101: (4, (3, 4, 23, 3)),
}
#: Strodthoff's benchmark keeps every stage 64 wide (fastai's 2-D default is 64, 128, 256, 512),
#: which makes xresnet1d101 a narrow, deep ~2 M-parameter network.
STAGE_WIDTHS = (64, 64, 64, 64)
STEM_WIDTHS = (32, 32, 64)


def _conv_norm(
    c_in: int, c_out: int, kernel_size: int, norm: str, stride: int = 1, act: bool = True
) -> nn.Sequential:
    layers = [
        nn.Conv1d(c_in, c_out, kernel_size, stride, padding=kernel_size // 2, bias=False),
        norm1d(norm, c_out),
    ]
    if act:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """Basic (expansion 1: two k-convs) or bottleneck (1x1, k, 1x1) block with a shortcut."""

    def __init__(
        self,
        c_in: int,
        c_mid: int,
        c_out: int,
        stride: int,
        kernel_size: int,
        norm: str,
        bottleneck: bool,
    ) -> None:
        super().__init__()
        if bottleneck:
            convs = [
                _conv_norm(c_in, c_mid, 1, norm),
                _conv_norm(c_mid, c_mid, kernel_size, norm, stride),
                _conv_norm(c_mid, c_out, 1, norm, act=False),
            ]
        else:
            convs = [
                _conv_norm(c_in, c_mid, kernel_size, norm, stride),
                _conv_norm(c_mid, c_out, kernel_size, norm, act=False),
            ]
        self.convs = nn.Sequential(*convs)
        # Zero-init the branch's last norm: every block starts as the identity, which trains
        # deep variants stably without warm-up.
        nn.init.zeros_(convs[-1][1].weight)
        shortcut: list[nn.Module] = []
        if stride != 1:
            shortcut.append(nn.AvgPool1d(stride, ceil_mode=True))
        if c_in != c_out:
            shortcut.append(_conv_norm(c_in, c_out, 1, norm, act=False))
        self.shortcut = nn.Sequential(*shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.convs(x) + self.shortcut(x))


def _stem(n_leads: int, shape: XResNetShape, norm: str) -> nn.Sequential:
    """Three convolutions (the first with stride 2), then a stride-2 max pool."""
    widths = [scaled(c, shape.width) for c in STEM_WIDTHS]
    return nn.Sequential(
        *[
            _conv_norm(c_in, c_out, shape.kernel_size_stem, norm, stride=2 if i == 0 else 1)
            for i, (c_in, c_out) in enumerate(zip([n_leads, *widths[:-1]], widths, strict=True))
        ],
        nn.MaxPool1d(3, stride=2, padding=1),
    )


@dataclass(frozen=True)
class XResNetShape:
    """fastai's xresnet, 1-D: ``depth`` picks the variant (the registry fixes it by name)."""

    depth: int = 101
    width: float = 1.0
    kernel_size: int = 5
    kernel_size_stem: int = 5
    head_hidden: int | None = 128
    head_dropout: float = 0.5


class XResNet1d(ECGClassifier):
    """``blocks`` = [stem (+ maxpool), stage 1, ..., stage 4]."""

    Shape = XResNetShape

    def __init__(self, inputs: Inputs, shape: XResNetShape = XResNetShape()) -> None:
        super().__init__(inputs.length)
        if shape.depth not in VARIANTS:
            raise ValueError(f"depth={shape.depth}: expected one of {sorted(VARIANTS)}")
        norm = inputs.norm
        stages: list[nn.Module] = [_stem(inputs.n_leads, shape, norm)]
        expansion, counts = VARIANTS[shape.depth]
        c_in = scaled(STEM_WIDTHS[-1], shape.width)
        for i, (base, count) in enumerate(zip(STAGE_WIDTHS, counts, strict=True)):
            c_mid = scaled(base, shape.width)
            c_out = c_mid * expansion
            blocks = []
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(
                    ResBlock(c_in, c_mid, c_out, stride, shape.kernel_size, norm, expansion > 1)
                )
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.ModuleList(stages)
        self.neck, features = pooling_neck(c_in, shape.head_hidden, shape.head_dropout, norm)
        self.head = nn.Linear(features, inputs.n_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv1d | nn.Linear):
                nn.init.kaiming_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
