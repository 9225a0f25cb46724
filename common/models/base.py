"""The shape every ecgfl network shares: body ``blocks`` -> ``neck`` -> ``head`` (final Linear).

Fine-tuning, head growth and FedProx address parts of a model by these names, whatever the
architecture, so each model builds from them and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

NORMS = ("batch", "group")


@dataclass(frozen=True)
class Inputs:
    """What a network is built for, whatever its architecture: leads in, classes out, samples per
    input window, and the normalisation (BatchNorm, or GroupNorm where DP needs it)."""

    n_leads: int
    n_classes: int
    length: int
    norm: str = "batch"


def norm1d(kind: str, channels: int) -> nn.Module:
    """BatchNorm, or GroupNorm where per-sample gradients are needed (DP-SGD forbids BatchNorm).

    GroupNorm keeps at least 8 channels per group (at most 32 groups, Wu & He 2018), taking the
    largest group count that divides ``channels`` so any width works. One channel per group would
    be instance norm, which erases each filter's response amplitude: such models barely learn.
    """
    if kind == "batch":
        return nn.BatchNorm1d(channels)
    if kind == "group":
        most = max(1, min(32, channels // 8))
        groups = max(g for g in range(1, most + 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"norm={kind!r}: expected one of {NORMS}")


def norm_flat(kind: str, features: int) -> nn.Module:
    """The norm for pooled feature vectors: LayerNorm stands in for GroupNorm there, being the
    same per-sample normalisation and exporting to ONNX correctly for 2-D input."""
    return nn.BatchNorm1d(features) if kind == "batch" else nn.LayerNorm(features)


def scaled(channels: int, width: float) -> int:
    """Channel count under a width multiplier; at least 4 so GroupNorm and 1x1 skips stay valid."""
    return max(4, int(round(channels * width)))


class ConcatPool1d(nn.Module):
    """Max and mean over time side by side (fastai's AdaptiveConcatPool), any input length."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.amax(dim=-1), x.mean(dim=-1)], dim=1)


def pooling_neck(
    channels: int, hidden: int | None, dropout: float, norm: str
) -> tuple[nn.Module, int]:
    """Strodthoff's ``create_head1d`` up to (not including) the final Linear.

    Concat pooling, then norm + dropout + Linear + ReLU when ``hidden`` is set, then norm +
    dropout in front of the head. Returns the neck and its output width.
    """
    layers: list[nn.Module] = [ConcatPool1d()]
    width = 2 * channels
    if hidden:
        layers += [norm_flat(norm, width), nn.Dropout(dropout / 2), nn.Linear(width, hidden)]
        layers.append(nn.ReLU())
        width = hidden
    layers += [norm_flat(norm, width), nn.Dropout(dropout)]
    return nn.Sequential(*layers), width


class ECGClassifier(nn.Module):
    """Base of every model: logits = head(neck(features(x))) for x shaped (batch, leads, time).

    Subclasses set ``blocks`` (ordered body stages, input side first), ``neck`` and ``head``
    and may override ``features`` when stages pass more than one tensor between them.
    ``input_length`` is the window the model was built for: longer records are cropped
    (training) or scored by sliding windows (evaluation).
    """

    #: The architecture's own hyperparameters (a frozen dataclass): an experiment's
    #: ``model.kwargs`` are its fields.
    Shape: ClassVar[type]

    blocks: nn.ModuleList
    neck: nn.Module
    head: nn.Linear

    def __init__(self, input_length: int) -> None:
        super().__init__()
        self.input_length = input_length

    @classmethod
    def from_kwargs(cls, inputs: Inputs, **kwargs: Any) -> ECGClassifier:
        """Built from ``model.kwargs``; an unknown keyword is a TypeError naming it."""
        return cls(inputs, cls.Shape(**kwargs))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.neck(self.features(x)))
