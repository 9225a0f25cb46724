"""Model registry: every network is chosen by name and built from a small, serialisable config."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial

import torch
from torch.utils.flop_counter import FlopCounterMode

from common.config import CAPS_DOC
from common.models.base import NORMS, ECGClassifier, Inputs
from common.models.inception1d import Inception1d
from common.models.ribeiro import RibeiroResNet
from common.models.xresnet1d import VARIANTS, XResNet1d

#: Every network by name: (Inputs, **model.kwargs) -> the model.
MODELS: dict[str, Callable[..., ECGClassifier]] = {
    "ribeiro_resnet": RibeiroResNet.from_kwargs,
    **{f"xresnet1d{d}": partial(XResNet1d.from_kwargs, depth=d) for d in VARIANTS},
    "inception1d": Inception1d.from_kwargs,
}


#: Resource cap (docs/formats.md#configuration-limits): 400 MB of float32 weights per copy; a
#: site holds several copies (model, optimizer state, the global model) and every round sends one
#: each way. The shipped models at width 1 have 0.5-10 M.
MAX_PARAMETERS = 100_000_000


def build_model(
    name: str,
    *,
    n_classes: int,
    input_length: int,
    n_leads: int = 12,
    norm: str = "batch",
    **kwargs,
) -> ECGClassifier:
    """Build registered model ``name``; ``kwargs`` go to its constructor (``width``, ``depth``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r}: expected one of {NORMS}")
    return MODELS[name](Inputs(n_leads, n_classes, input_length, norm), **kwargs)


@dataclass(frozen=True)
class ModelSettings:
    """A registered network by name, as an experiment's ``model:`` section gives it; the input
    geometry comes from the preprocessing pipeline (``at``)."""

    name: str = "ribeiro_resnet"
    norm: str = "batch"
    kwargs: dict = field(default_factory=dict)  # the constructor's own: width, depth...

    def validate(self) -> None:
        if self.name not in MODELS:
            raise ValueError(f"name={self.name!r}: expected one of {', '.join(MODELS)}")
        if self.norm not in NORMS:
            raise ValueError(f"norm={self.norm!r}: expected one of {', '.join(NORMS)}")

    def at(self, input_length: int, fs: float) -> ModelConfig:
        """These settings for inputs of ``input_length`` samples at ``fs`` Hz."""
        return ModelConfig(self.name, self.norm, dict(self.kwargs), input_length, fs)


@dataclass(frozen=True)
class ModelConfig(ModelSettings):
    """What a checkpoint needs to rebuild a network; the class count comes from the label space.

    ``fs`` is the rate the input is expected at: with ``input_length`` it fixes the window in
    seconds that sliding-window evaluation uses.
    """

    input_length: int = 1000
    fs: float = 100.0
    n_leads: int = 12

    def validate(self) -> None:
        super().validate()
        if self.input_length <= 0 or self.fs <= 0 or self.n_leads <= 0:
            raise ValueError("input_length, fs and n_leads must be positive")

    def build(self, n_classes: int) -> ECGClassifier:
        return build_model(
            self.name,
            n_classes=n_classes,
            input_length=self.input_length,
            n_leads=self.n_leads,
            norm=self.norm,
            **self.kwargs,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def check_size(self, n_classes: int) -> int:
        """Build the model on the meta device (nothing is allocated) and count its parameters, so
        unknown kwargs and absurd sizes are refused, with the model's own message, before any
        data is read. Returns the count."""
        try:
            with torch.device("meta"):
                model = self.build(n_classes=n_classes)
        except (TypeError, ValueError, OverflowError, RuntimeError) as exc:
            raise ValueError(
                f"{self.name} does not build with kwargs {self.kwargs}: {exc}"
            ) from exc
        n = sum(p.numel() for p in model.parameters())
        if n > MAX_PARAMETERS:
            raise ValueError(
                f"{self.name} with kwargs {self.kwargs} has {n:,} parameters, past the resource "
                f"cap {MAX_PARAMETERS:,} ({CAPS_DOC})"
            )
        return n


def describe(model: torch.nn.Module, input_length: int, n_leads: int = 12) -> tuple[int, int]:
    """(parameter count, forward FLOPs for one sample), FLOPs as counted by PyTorch itself."""
    n_params = sum(p.numel() for p in model.parameters())
    was_training = model.training
    model.eval()  # one sample through BatchNorm in train mode would fail and touch its statistics
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, n_leads, input_length, device=device))
    model.train(was_training)
    return n_params, counter.get_total_flops()


__all__ = [
    "MAX_PARAMETERS",
    "MODELS",
    "ECGClassifier",
    "ModelConfig",
    "ModelSettings",
    "build_model",
    "describe",
]
