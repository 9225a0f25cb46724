"""The one training loop: centralized baseline, federated client and local fine-tuning all call it.

Data are ``(x, y, mask)`` items; the loss only sees entries whose mask is 1, so sites that annotate
different label sets train one model together. Records longer than the model's window are
randomly cropped for training and scored by sliding windows (max over windows) for evaluation,
as in Strodthoff et al.'s PTB-XL benchmark.
"""

from __future__ import annotations

import copy
import functools
import math
import random
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from common import dpsgd, precision
from common.config import MAX_WORKERS, Seed, above, at_least, check
from common.metrics import Metrics, compute_metrics
from common.models import ECGClassifier

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "cosine", "onecycle")
CLASS_WEIGHTS = ("none", "balanced")
#: Resource caps (docs/formats.md#configuration-limits): past them a run would not end, or one
#: batch of 12-lead windows would not fit in memory.
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536


def masked_bce(
    logits: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary cross-entropy averaged over annotated entries only; 0 when nothing is annotated."""
    loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight, reduction="none")
    return (loss * mask).sum() / mask.sum().clamp_min(1.0)


def per_record_bce(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each record's masked mean, averaged over the batch: no record's loss depends on another
    record's annotations, as DP-SGD's per-record gradients need (0 for an empty batch)."""
    loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    per_record = (loss * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    return per_record.sum() / max(len(per_record), 1)


@dataclass(frozen=True)
class TrainConfig:
    epochs: Annotated[int, at_least(1, cap=MAX_EPOCHS)] = 30
    batch_size: Annotated[int, at_least(1, cap=MAX_BATCH_SIZE)] = 64
    lr: Annotated[float, above(0)] = 1e-3
    weight_decay: Annotated[float, at_least(0)] = 0.0
    optimizer: str = "adam"
    scheduler: str = "none"
    #: Epochs without a better validation score before stopping; None trains all epochs.
    early_stopping_patience: Annotated[int, at_least(1, cap=MAX_EPOCHS)] | None = None
    seed: Seed = 0
    #: DataLoader worker processes; 0 loads in the training process.
    num_workers: Annotated[int, at_least(0, cap=MAX_WORKERS)] = 0
    #: FedProx strength; only used when ``train`` is given ``proximal_to``.
    proximal_mu: Annotated[float, at_least(0)] = 0.0
    #: 'balanced' weights positives by negatives/positives per label (rare diagnoses).
    class_weights: str = "none"
    max_grad_norm: Annotated[float, above(0)] | None = None
    #: fp32, bf16 (autocast), or auto: bf16 where the hardware does it natively (common/precision).
    precision: str = "fp32"

    def validate(self) -> None:
        for name, allowed in (
            ("optimizer", OPTIMIZERS),
            ("precision", precision.PRECISIONS),
            ("scheduler", SCHEDULERS),
            ("class_weights", CLASS_WEIGHTS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of {allowed}")


@dataclass
class TrainResult:
    """``history`` has one flat, JSON-ready dict per epoch; ``val_metrics`` scores the returned
    model (the best epoch's when early stopping restored it)."""

    history: list[dict] = field(default_factory=list)
    n_train: int = 0
    best_epoch: int | None = None
    best_score: float | None = None
    stopped_early: bool = False
    val_metrics: Metrics | None = None
    dp_steps: dpsgd.Steps | None = None  # what DP-SGD spent, for the site's privacy ledger


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def random_crop(x: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """An independent random window of ``length`` samples from each record of a batch."""
    excess = x.shape[-1] - length
    if excess == 0:
        return x
    start = torch.randint(0, excess + 1, (x.shape[0],), generator=generator)
    index = (start[:, None] + torch.arange(length))[:, None, :].expand(-1, x.shape[1], -1)
    return torch.gather(x, -1, index)


def _require_length(x: torch.Tensor, window: int) -> None:
    if x.shape[-1] < window:
        raise ValueError(
            f"records have {x.shape[-1]} samples, the model needs at least {window}: prepare the "
            "data with the model's input length (or build the model for the shorter input)"
        )


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets covering a record; the last window is aligned to the record's end."""
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


@torch.inference_mode()
def evaluate(
    model: ECGClassifier,
    ds: Dataset,
    device: torch.device | str | None = None,
    batch_size: int = 256,
    window: int | None = None,
    stride: int | None = None,
    num_workers: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sigmoid probabilities (n, K), targets and masks for every item of ``ds``, in order.

    Records longer than ``window`` (default: the model's input length) are cut into windows
    ``stride`` apart (default: half a window) and each label takes its maximum over windows.
    """
    device = torch.device(device) if device is not None else default_device()
    window = window or model.input_length
    stride = stride or max(1, window // 2)
    model.to(device).eval()
    probs, ys, masks = [], [], []
    for x, y, mask in DataLoader(ds, batch_size=batch_size, num_workers=num_workers):
        _require_length(x, window)
        starts = window_starts(x.shape[-1], window, stride)
        crops = torch.stack([x[..., s : s + window] for s in starts], dim=1)
        logits = model(crops.flatten(0, 1).to(device)).float()
        probs.append(torch.sigmoid(logits).view(len(x), len(starts), -1).amax(dim=1).cpu())
        ys.append(y)
        masks.append(mask)
    if not probs:  # a site may have no validation records
        empty = np.zeros((0, model.head.out_features), np.float32)
        return empty, empty.copy(), empty.copy()
    return torch.cat(probs).numpy(), torch.cat(ys).numpy(), torch.cat(masks).numpy()


def _balanced_pos_weight(ds: Dataset, batch_size: int) -> torch.Tensor:
    """negatives / positives per label over annotated entries (1 where either count is 0)."""
    pos = neg = 0
    for _, y, mask in DataLoader(ds, batch_size=max(batch_size, 1024)):
        pos = pos + (y * mask).sum(0)
        neg = neg + ((1 - y) * mask).sum(0)
    weight = neg / pos.clamp_min(1.0)
    return torch.where((pos > 0) & (neg > 0), weight, torch.ones_like(weight))


def _make_optimizer(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)


def _make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Schedulers step once per batch over the whole run."""
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    if cfg.scheduler == "onecycle":
        max_lr = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=steps)
    return None


def _reference_weights(
    model: nn.Module,
    proximal_to: Sequence[torch.Tensor] | Mapping[str, torch.Tensor],
    device: torch.device,
) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """Pair each trainable parameter with its global value (a list in ``parameters()`` order,
    or a state dict by name)."""
    named = list(model.named_parameters())
    if isinstance(proximal_to, Mapping):
        reference = [proximal_to[name] for name, _ in named]
    else:
        reference = list(proximal_to)
        if len(reference) != len(named):
            raise ValueError(f"proximal_to has {len(reference)} tensors, model {len(named)} params")
    return [
        (p, torch.as_tensor(ref).detach().to(device, p.dtype))
        for (_, p), ref in zip(named, reference, strict=True)
        if p.requires_grad
    ]


def _freeze_frozen_batchnorm(model: nn.Module) -> None:
    """A BatchNorm whose affine weights are frozen keeps its running statistics frozen too,
    so a frozen body computes exactly what it computed before fine-tuning."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d) and not any(
            p.requires_grad for p in module.parameters()
        ):
            module.eval()


def _validate(
    model: ECGClassifier,
    ds: Dataset,
    cfg: TrainConfig,
    device: torch.device,
    labels: Sequence[str] | None,
) -> tuple[float, Metrics]:
    """Loss and scores on ``ds``, the loss taken on the window-aggregated probabilities."""
    probs, y, mask = evaluate(
        model, ds, device, batch_size=cfg.batch_size, num_workers=cfg.num_workers
    )
    logits = torch.logit(torch.from_numpy(probs), eps=1e-6)
    loss = masked_bce(logits, torch.from_numpy(y), torch.from_numpy(mask)).item()
    return loss, compute_metrics(probs, y, mask, labels)


class _Objective:
    """One batch's loss: masked BCE (class-weighted if asked), or per-record BCE under DP-SGD,
    plus FedProx's (mu/2)*||w - w_global||^2 pull towards the global weights."""

    def __init__(
        self, net: nn.Module, private: bool, pos_weight, anchors: list, mu: float, forward
    ):
        self.net, self.private, self.pos_weight = net, private, pos_weight
        self.anchors, self.mu = anchors, mu
        self.forward = forward  # the forward pass's context: its number format (autocast)

    def __call__(self, x, y, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """(what to minimise, the data loss alone: comparable with the validation loss)."""
        with self.forward():
            logits = self.net(x).float()
        if self.private:
            loss = per_record_bce(logits, y, mask)
        else:
            loss = masked_bce(logits, y, mask, self.pos_weight)
        if self.anchors and self.mu > 0:
            drift = sum((p - ref).pow(2).sum() for p, ref in self.anchors)
            return loss + self.mu / 2 * drift, loss
        return loss, loss


class _EarlyStopping:
    """Tracks the best epoch by validation macro AUC (or -loss); with a patience, keeps its
    weights and says when to stop."""

    def __init__(self, patience: int | None, result: TrainResult) -> None:
        self.patience, self.result = patience, result
        self.stale, self.best_state = 0, None

    def update(self, epoch: int, val_loss: float, metrics: Metrics, model: nn.Module) -> None:
        score = metrics.macro_auc if metrics.macro_auc is not None else -val_loss
        if self.result.best_score is None or score > self.result.best_score:
            self.result.best_score, self.result.best_epoch, self.stale = score, epoch, 0
            self.result.val_metrics = metrics
            if self.patience is not None:
                self.best_state = copy.deepcopy(model.state_dict())
        else:
            self.stale += 1

    def stop(self) -> bool:
        return self.patience is not None and self.stale >= self.patience


@dataclass
class Trainer:
    """How to train: ``cfg`` plus what a caller adds. One loop serves the centralized baseline,
    federated sites and fine-tuning.

    ``proximal_to`` (the global weights) adds FedProx's term. ``param_groups`` (optimizer
    groups, e.g. per-block learning rates) replaces the default of every parameter that
    requires grad at ``cfg.lr``. ``labels`` names per-class metrics. ``dp`` trains with DP-SGD
    (``common.dpsgd``): per-record clipping, noise, Poisson batches; its ``target_epsilon`` is
    spread over ``dp_rounds`` calls like this one. ``start_competes``: with early stopping, the
    weights training starts from are scored on the validation split too (as epoch 0) and come
    back unchanged if no epoch beats them: fine-tuning never hands a site a model its own
    validation split finds worse than the one it received.
    """

    cfg: TrainConfig
    labels: Sequence[str] | None = None
    progress: bool = True
    proximal_to: Sequence[torch.Tensor] | Mapping[str, torch.Tensor] | None = None
    param_groups: list[dict] | None = None
    dp: dpsgd.DPSGDSettings | None = None
    dp_rounds: int = 1
    start_competes: bool = False

    @property
    def private(self) -> bool:
        return self.dp is not None and self.dp.enabled

    def _check(self, val_ds: Dataset | None) -> None:
        check(self.cfg, "training settings")
        if self.cfg.early_stopping_patience is not None and val_ds is None:
            raise ValueError("early stopping needs a validation set")
        cfg = self.cfg
        found = self.private and dpsgd.conflicts(
            self.proximal_to is not None, cfg.class_weights, cfg.max_grad_norm, cfg.precision
        )
        if found:
            raise ValueError(f"DP-SGD cannot account for {', '.join(found)}: turn those off")

    def _loader(self, train_ds: Dataset, generator: torch.Generator) -> DataLoader:
        return DataLoader(
            train_ds,
            batch_size=self.cfg.batch_size,
            shuffle=True,
            generator=generator,
            num_workers=self.cfg.num_workers,
            # A last batch of one sample would make BatchNorm fail (DP-SGD models have none).
            drop_last=not self.private and len(train_ds) % self.cfg.batch_size == 1,
        )

    def fit(self, model: ECGClassifier, train_ds: Dataset, val_ds: Dataset | None) -> TrainResult:
        """Train ``model`` in place and return its per-epoch history."""
        self._check(val_ds)
        cfg, device = self.cfg, default_device()
        seed_everything(cfg.seed)
        model.to(device)
        generator = torch.Generator().manual_seed(cfg.seed)
        loader = self._loader(train_ds, generator)
        groups = self.param_groups or [
            {"params": [p for p in model.parameters() if p.requires_grad]}
        ]
        optimizer = _make_optimizer(groups, cfg)
        net: nn.Module = model
        result = TrainResult(n_train=len(train_ds))
        if self.private:
            result.dp_steps = dpsgd.plan(
                self.dp, len(train_ds), cfg.batch_size, cfg.epochs, self.dp_rounds
            )
            net, optimizer, loader = dpsgd.make_private(
                model, optimizer, loader, result.dp_steps, self.dp.max_grad_norm
            )
        scheduler = _make_scheduler(optimizer, cfg, max(1, cfg.epochs * len(loader)))
        steps = _Steps(optimizer, scheduler, cfg.max_grad_norm)
        objective = self._objective(net, model, train_ds, device)
        self._epochs(model, (loader, generator), objective, steps, val_ds, result)
        if self.private:
            optimizer.zero_grad(set_to_none=True)  # drops the per-record gradients too
            net.remove_hooks()
        _require_finite_weights(model, cfg)
        return result

    def _objective(self, net, model, train_ds, device) -> _Objective:
        pos_weight = (
            _balanced_pos_weight(train_ds, self.cfg.batch_size).to(device)
            if self.cfg.class_weights == "balanced"
            else None
        )
        anchors = (
            _reference_weights(model, self.proximal_to, device)
            if self.proximal_to is not None
            else []
        )
        number_format = precision.resolve(self.cfg.precision, device, self.private)
        forward = functools.partial(precision.autocast, number_format, device)
        return _Objective(net, self.private, pos_weight, anchors, self.cfg.proximal_mu, forward)

    def _epochs(self, model, data, objective, steps, val_ds, result: TrainResult) -> None:
        """Up to ``cfg.epochs`` epochs, each validated; early stopping restores the best."""
        stopping = _EarlyStopping(self.cfg.early_stopping_patience, result)
        metrics = None
        if self.start_competes and stopping.patience is not None:
            val_loss, start = _validate(model, val_ds, self.cfg, default_device(), self.labels)
            stopping.update(0, val_loss, start, model)
        for epoch in range(1, self.cfg.epochs + 1):
            started = time.perf_counter()
            record = {"epoch": epoch, **self._epoch(model, data, objective, steps, epoch)}
            if val_ds is not None:
                val_loss, metrics = _validate(
                    model, val_ds, self.cfg, default_device(), self.labels
                )
                record.update({"val_loss": val_loss, **metrics.flat("val_")})
                stopping.update(epoch, val_loss, metrics, model)
            record["seconds"] = time.perf_counter() - started
            result.history.append(record)
            if self.progress:
                tqdm.write(_summary(record), file=sys.stderr)
            if stopping.stop():
                result.stopped_early = epoch < self.cfg.epochs
                break
        if stopping.best_state is not None:
            model.load_state_dict(stopping.best_state)
        elif metrics is not None:
            result.val_metrics = metrics

    def _epoch(self, model: ECGClassifier, data, objective, steps, epoch: int) -> dict:
        """One pass over the data (a loader and the generator of its random crops): the mean
        data loss and the learning rate at its end."""
        loader, generator = data
        device = default_device()
        model.train()
        _freeze_frozen_batchnorm(model)
        total, batches = 0.0, 0
        desc = f"epoch {epoch}/{self.cfg.epochs}"
        bar = tqdm(loader, desc=desc, disable=not self.progress, leave=False)
        for x, y, mask in bar:
            _require_length(x, model.input_length)
            x = random_crop(x, model.input_length, generator)
            minimise, loss = objective(x.to(device), y.to(device), mask.to(device))
            total += _finite(loss.item(), f"epoch {epoch}, batch {batches + 1}", self.cfg)
            steps.take(minimise)
            batches += 1
            bar.set_postfix(loss=f"{total / batches:.4f}")
        lr = steps.optimizer.param_groups[0]["lr"]
        return {"train_loss": total / batches if batches else None, "lr": lr}


def _finite(value: float, where: str, cfg: TrainConfig) -> float:
    """``value`` (a loss); a NaN/inf one stops training instead of poisoning the weights (and,
    at a site, the global model)."""
    if math.isfinite(value):
        return value
    hint = "try precision: fp32" if cfg.precision != "fp32" else "try a lower lr"
    raise FloatingPointError(f"training diverged: the loss is {value} at {where}; {hint}")


def _require_finite_weights(model: nn.Module, cfg: TrainConfig) -> None:
    """A step whose loss was finite can still apply NaN/inf gradients (bf16 convolutions on
    tiny inputs do): such a model is never returned."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            _finite(math.nan, f"the end of training ({name} is not finite)", cfg)


class _Steps:
    """Optimizer steps: gradients, optional clipping, the optimizer, the per-batch schedule."""

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler, max_norm: float | None):
        self.optimizer, self.scheduler, self.max_norm = optimizer, scheduler, max_norm
        self.trainable = [p for group in optimizer.param_groups for p in group["params"]]

    def take(self, objective: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if self.max_norm is not None:
            nn.utils.clip_grad_norm_(self.trainable, self.max_norm)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()


def _summary(record: dict) -> str:
    parts = [f"epoch {record['epoch']}"]
    for key in ("train_loss", "val_loss", "val_macro_auc"):
        if record.get(key) is not None:
            parts.append(f"{key} {record[key]:.4f}")
    parts.append(f"{record['seconds']:.1f}s")
    return "  ".join(parts)
