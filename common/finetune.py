"""Local fine-tuning of a pretrained (federated) model on one site's data and label space.

The head can grow: labels the pretrained model knows keep their trained outputs, labels only
this site annotates get fresh ones (the seed paper's "more diseases"). Training itself is the
shared ``Trainer``; this module only decides which weights move and how fast (``LAYERS``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import Dataset

from common.evaluation import score
from common.labels import LabelSpace
from common.metrics import Metrics
from common.models import ECGClassifier
from common.site import SiteData
from common.training import Trainer, TrainResult

if TYPE_CHECKING:  # common.experiment names the modes from this module's registry
    from common.experiment import FinetuneSettings


def adapt_head(model: ECGClassifier, old_space: LabelSpace, new_space: LabelSpace) -> ECGClassifier:
    """Replace ``model.head`` with one output per label of ``new_space``, in its order.

    Rows of labels in both spaces are copied exactly; new labels get PyTorch's default Linear
    initialisation; labels missing from ``new_space`` are dropped.
    """
    old = model.head
    if old.out_features != len(old_space):
        raise ValueError(
            f"model head has {old.out_features} outputs, old label space {len(old_space)}"
        )
    new = nn.Linear(old.in_features, len(new_space)).to(old.weight.device, old.weight.dtype)
    with torch.no_grad():
        for i, label in enumerate(new_space.labels):
            if label in old_space.labels:
                j = old_space.index(label)
                new.weight[i] = old.weight[j]
                new.bias[i] = old.bias[j]
    model.head = new
    return model


def _params(modules: Sequence[nn.Module]) -> list[nn.Parameter]:
    return [p for module in modules for p in module.parameters()]


#: Which weights a local fine-tune trains, by name: each builds the optimizer's groups.
LayerChoice = Callable[[ECGClassifier, float, int, float], list[dict]]
LAYERS: dict[str, LayerChoice] = {}


def _layers(name: str) -> Callable[[LayerChoice], LayerChoice]:
    def register(build: LayerChoice) -> LayerChoice:
        LAYERS[name] = build
        return build

    return register


@_layers("full")
def _full(model: ECGClassifier, lr: float, k: int, lr_decay: float) -> list[dict]:
    return [{"params": list(model.parameters()), "lr": lr}]


@_layers("head")
def _head(model: ECGClassifier, lr: float, k: int, lr_decay: float) -> list[dict]:
    return [{"params": _params([model.neck, model.head]), "lr": lr}]


@_layers("last_k")
def _last_k(model: ECGClassifier, lr: float, k: int, lr_decay: float) -> list[dict]:
    blocks = list(model.blocks)
    if not 1 <= k <= len(blocks):
        raise ValueError(f"k={k}: the model has {len(blocks)} blocks")
    return [{"params": _params(blocks[-k:] + [model.neck, model.head]), "lr": lr}]


@_layers("discriminative")
def _discriminative(model: ECGClassifier, lr: float, k: int, lr_decay: float) -> list[dict]:
    return [{"params": _params([model.neck, model.head]), "lr": lr}] + [
        {"params": list(block.parameters()), "lr": lr / lr_decay ** (depth + 1)}
        for depth, block in enumerate(reversed(list(model.blocks)))
    ]


def param_groups(
    model: ECGClassifier, mode: str, lr: float, k: int = 1, lr_decay: float = 2.6
) -> list[dict]:
    """Optimizer groups for ``mode`` (a name in ``LAYERS``); parameters in no group stay frozen.

    ``head`` trains everything after the body (the neck, if any, and the final Linear);
    ``last_k`` adds the last ``k`` body blocks; ``discriminative`` trains all, the head at
    ``lr`` and each block below at ``lr_decay`` times less than the one above (ULMFiT).
    """
    if mode not in LAYERS:
        raise ValueError(f"mode={mode!r}: expected one of {tuple(LAYERS)}")
    top = _params([model.neck, model.head])
    if len(_params(list(model.blocks))) + len(top) != len(list(model.parameters())):
        raise ValueError(f"{type(model).__name__} has parameters outside blocks, neck and head")
    return LAYERS[mode](model, lr, k, lr_decay)


@contextmanager
def training_only(model: nn.Module, params: Iterable[nn.Parameter]) -> Iterator[None]:
    """Within the block only ``params`` require gradients (the Trainer trains what requires
    them, and a BatchNorm with frozen weights keeps its statistics); all do again after."""
    chosen = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    try:
        yield
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


def finetune(
    model: ECGClassifier,
    old_space: LabelSpace,
    new_space: LabelSpace,
    train_ds: Dataset,
    val_ds: Dataset | None,
    settings: FinetuneSettings,
    progress: bool = True,
) -> tuple[ECGClassifier, TrainResult]:
    """Adapt the head to ``new_space``, then train the parts ``settings.mode`` selects."""
    adapt_head(model, old_space, new_space)
    groups = param_groups(model, settings.mode, settings.train.lr, settings.k)
    trainer = Trainer(
        settings.train, new_space.labels, progress, param_groups=groups, start_competes=True
    )
    with training_only(model, [p for group in groups for p in group["params"]]):
        result = trainer.fit(model, train_ds, val_ds)
    return model, result


def finetune_at_site(
    model: ECGClassifier,
    site: SiteData,
    old_space: LabelSpace,
    new_space: LabelSpace,
    settings: FinetuneSettings,
) -> tuple[ECGClassifier, TrainResult, Metrics]:
    """Fine-tune on a site's training split (validation split for early stopping and F1
    thresholds) and score the result on its test split."""
    val = site.dataset("val", new_space)
    model, result = finetune(
        model,
        old_space,
        new_space,
        site.dataset("train", new_space),
        val,
        settings,
        progress=False,
    )
    return model, result, score(model, val, site.dataset("test", new_space), new_space.labels)
