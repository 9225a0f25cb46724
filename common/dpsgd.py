"""Sample-level differential privacy for a site's local training: DP-SGD with Opacus.

Central DP (``server/privacy.py``) protects a whole hospital's contribution to each round; DP-SGD
protects each ECG: every record's gradient is clipped to ``max_grad_norm`` and Gaussian noise of
std ``noise_multiplier * max_grad_norm`` is added to each batch's sum, with batches drawn by Poisson
sampling (rate q = batch_size / n). The model a site sends is then (epsilon, delta)-DP with respect
to any single record of that site, over all the rounds it trained in.

Opacus is an optional extra (``pip install -e '.[dp]'``); it is imported only when DP-SGD is on.
Its per-sample gradients need normalisation that works per record: GroupNorm models only.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from common.config import Range, above, at_least

LEDGER = "dp_sgd_ledger.json"
#: A budget (epsilon, delta) the noise search can meet: below these the noise that spends it is
#: not a number a float holds (DP practice: epsilon 0.1-10, delta 1e-5-1e-9). Central DP too.
Epsilon = Annotated[float, at_least(0.001)]
Delta = Annotated[float, Range(1e-12, 1, high_open=True)]


class SiteBudgetExhausted(RuntimeError):
    """A site refuses to train: the round would take its own epsilon past its budget."""


@dataclass(frozen=True)
class DPSGDSettings:
    """DP-SGD at every site; off unless ``noise_multiplier`` or ``target_epsilon`` is set.

    ``target_epsilon``: each site picks the noise that spends exactly that over all the run's
    rounds at its own sampling rate (a small site needs more noise than a large one).
    """

    noise_multiplier: Annotated[float, at_least(0)] = 0.0
    target_epsilon: Epsilon | None = None
    max_grad_norm: Annotated[float, above(0)] = 1.0  # per-record gradient clipping norm
    delta: Delta = 1e-5
    max_epsilon: Annotated[float, above(0)] | None = None  # per site: no round past it

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier > 0 or self.target_epsilon is not None

    def validate(self) -> None:
        if self.target_epsilon is not None and self.noise_multiplier > 0:
            raise ValueError("dp_sgd: target_epsilon is not given with noise_multiplier")
        if self.max_epsilon is not None and not self.enabled:
            raise ValueError("dp_sgd: max_epsilon needs DP-SGD on")


@dataclass(frozen=True)
class Steps:
    """One stretch of DP-SGD: ``count`` noisy steps at sampling rate ``sample_rate``."""

    noise_multiplier: float
    sample_rate: float
    count: int


def require_opacus():
    try:
        import opacus
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("DP-SGD needs Opacus, an optional extra: pip install -e '.[dp]'") from exc
    return opacus


def epsilon(history: list[Steps], delta: float) -> float:
    """Epsilon at ``delta`` after all of ``history`` (Opacus' RDP accountant, which accounts
    the amplification by Poisson sampling)."""
    if not history:
        return 0.0
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(s.noise_multiplier, s.sample_rate, s.count) for s in history]
    return float(accountant.get_epsilon(delta))


def plan(
    settings: DPSGDSettings, n_records: int, batch_size: int, epochs: int, rounds: int = 1
) -> Steps:
    """One round's DP-SGD: ``epochs`` over ``n_records`` in Opacus' Poisson batches, with the
    noise that ``settings`` asks for (or that spends ``target_epsilon`` over ``rounds``)."""
    batches = math.ceil(n_records / batch_size)
    sigma = settings.noise_multiplier
    if settings.target_epsilon is not None:
        from opacus.accountants.utils import get_noise_multiplier

        sigma = get_noise_multiplier(
            target_epsilon=settings.target_epsilon,
            target_delta=settings.delta,
            sample_rate=1 / batches,
            steps=rounds * epochs * batches,
            accountant="rdp",
        )
    return Steps(float(sigma), 1 / batches, epochs * batches)


def conflicts(
    proximal: bool, class_weights: str, max_grad_norm: float | None, precision: str = "fp32"
) -> list[str]:
    """The training settings DP-SGD cannot account for, by name: it clips per-record gradients
    itself, so a FedProx term, class weights computed from the data, or a batch-level gradient
    norm would each change the update outside its accounting; Opacus computes those gradients
    in float32 only. Checked where an experiment is loaded (naming keys early) and by the
    Trainer (whoever calls it)."""
    found = {
        "a FedProx term (proximal_mu)": proximal,
        "class weights computed from the data (class_weights)": class_weights != "none",
        "a batch gradient norm (max_grad_norm)": max_grad_norm is not None,
        "bf16 training (precision: bf16)": precision == "bf16",
    }
    return [what for what, present in found.items() if present]


def check_model(model: nn.Module) -> None:
    """Refuse models whose layers mix records within a batch (BatchNorm) or that Opacus cannot
    compute per-record gradients for, naming the layers."""
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        reasons = "; ".join(sorted({str(e) for e in errors})[:3])
        raise ValueError(f"DP-SGD needs a GroupNorm model (model.norm: group): {reasons}")


def make_private(
    model: nn.Module, optimizer: Optimizer, loader: DataLoader, steps: Steps, max_grad_norm: float
) -> tuple[nn.Module, Optimizer, DataLoader]:
    """Opacus' per-record clipping, noise and Poisson sampling around a plain training setup.

    The returned module shares its parameters with ``model``: training it trains ``model``.
    """
    require_opacus()
    from opacus import PrivacyEngine

    check_model(model)
    engine = PrivacyEngine(accountant="rdp", secure_mode=False)
    return engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=steps.noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
    )


class Ledger:
    """A site's own record of the DP-SGD steps it has taken in a run, kept on site in its output
    folder: it survives restarts of the client and of the coordinator (a repeated round counts
    again, as the data were used again)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LEDGER

    def read(self) -> list[Steps]:
        if not self.path.exists():
            return []
        return [Steps(**entry) for entry in json.loads(self.path.read_text())]

    def add(self, steps: Steps) -> None:
        entries = [asdict(s) for s in [*self.read(), steps]]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries))
        tmp.replace(self.path)
