"""Personalisation methods by name: what a site trains in each round, what it keeps, and the
model it ends with. ``finetune.mode`` picks one; the mode names are this registry's keys.

- ``full``, ``head``, ``last_k``, ``discriminative``: plain FedAvg rounds, then a local fine-tune
  of the layers ``common.finetune.LAYERS`` names.
- ``ditto`` (Li et al. 2021): each round also trains a personal model with a proximal pull
  ``lambda/2 ||v - w_global||^2`` towards the global weights just received; the site keeps it.
- ``fedrep`` (Collins et al. 2021): the site's own head is trained first (body frozen), then the
  body (head frozen); only the body is sent, the head never leaves the site.
- ``fedper`` (Arivazhagan et al. 2019): head and body train together; only the body is sent.
- ``fedbabu`` (Oh et al. 2022): the head stays frozen during the rounds (only the body learns and
  is sent), then the whole model is fine-tuned locally.
- ``fedbn`` (Li et al. 2021): plain rounds, but every BatchNorm layer (affine weights and running
  statistics) stays at the site; the rest is sent. The site's own BatchNorm on the final global
  model, then the whole model is fine-tuned locally. Needs a BatchNorm model (``model.norm``).
- ``auto``: Ditto-style rounds when ``ditto`` is a candidate; afterwards each candidate in
  ``finetune.candidates`` is tried and the site keeps the best by its own validation macro AUC.

Every method trains with the one loop (``common.training.Trainer``): Ditto's pull is the
Trainer's proximal term with the global weights as anchor.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import Dataset

from common.evaluation import score
from common.finetune import LAYERS, finetune_at_site, training_only
from common.labels import LabelSpace
from common.metrics import Metrics, compute_metrics
from common.models import ECGClassifier
from common.protocol import (
    CANDIDATE_PICKED,
    CANDIDATE_TEST_AUC,
    CANDIDATE_VAL_AUC,
    candidate_metric,
)
from common.site import SiteData
from common.training import Trainer, TrainResult, evaluate

if TYPE_CHECKING:  # common.experiment validates mode names against this registry
    from common.experiment import FinetuneSettings

HEAD = "head."  # state-dict prefix of the final Linear


@dataclass
class LocalRound:
    """What a method's round works with at a site: the federation's own local training
    (``trainer``: the round's seed, FedProx, DP-SGD), the data, and what the site kept."""

    trainer: Trainer
    train_ds: Dataset
    settings: FinetuneSettings
    personal: dict[str, torch.Tensor] | None = None  # None in round 1


@dataclass
class SiteRun:
    """What a method's last step works with: the site, both label spaces, the settings, and
    what the site kept from the rounds."""

    site: SiteData
    space: LabelSpace
    target: LabelSpace
    settings: FinetuneSettings
    personal: dict[str, torch.Tensor] | None = None


@dataclass
class Personalised:
    """The site's model, its training history, its test scores, and metrics the method adds."""

    model: ECGClassifier
    result: TrainResult
    after: Metrics
    metrics: dict[str, float] = field(default_factory=dict)


Round = Callable[[ECGClassifier, LocalRound], tuple[TrainResult, dict | None]]
Finish = Callable[[ECGClassifier, SiteRun], Personalised]
LocalKeys = Callable[[ECGClassifier], set[str]]


@dataclass(frozen=True)
class Method:
    """``round`` trains the received global model in place and returns what the site keeps;
    ``finish`` turns the final global model into the site's own. ``local_keys``: the state-dict
    keys of a model that never leave the site (None: the whole model is sent). ``site_owned``:
    whether the site trains those keys into parts of its own (FedRep/FedPer's head, FedBN's
    BatchNorm), or leaves them as the coordinator sent them (FedBABU's frozen head: not worth
    sending back, and the coordinator's model is whole). ``layers``: what a plain fine-tune
    trains where this method cannot run (the centralized baseline has no rounds)."""

    name: str
    round: Round
    finish: Finish
    local_keys: LocalKeys | None = None
    site_owned: bool = True
    layers: str = "full"

    @property
    def keeps_parts(self) -> bool:
        """The site's model differs from the coordinator's in parts only the site has."""
        return self.local_keys is not None and self.site_owned


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def body(model: ECGClassifier) -> list[torch.nn.Parameter]:
    return [p for name, p in model.named_parameters() if not name.startswith(HEAD)]


def head_keys(model: ECGClassifier) -> set[str]:
    """The final Linear: what FedRep, FedPer and FedBABU keep at the site."""
    return {k for k in model.state_dict() if k.startswith(HEAD)}


def batchnorm_keys(model: ECGClassifier) -> set[str]:
    """Every BatchNorm's affine weights, running statistics and batch counter: what FedBN keeps
    at the site. Found by module type, so any architecture's BatchNorm layers are."""
    return {
        f"{name}.{key}"
        for name, module in model.named_modules()
        if isinstance(module, _BatchNorm)
        for key in module.state_dict()
    }


def _local_keys(model: ECGClassifier, method: Method) -> set[str]:
    return method.local_keys(model) if method.local_keys else set()


def shared_state(model: ECGClassifier, method: Method) -> dict[str, torch.Tensor]:
    """What the site sends back: the state without what the method keeps at the site."""
    local = _local_keys(model, method)
    return {k: v for k, v in model.state_dict().items() if k not in local}


def site_parts(model: ECGClassifier, method: Method) -> dict[str, torch.Tensor]:
    """What the method keeps at the site, as it is in ``model`` now."""
    local = _local_keys(model, method)
    return {k: v for k, v in model.state_dict().items() if k in local}


def lacks_own_parts(method: Method, personal: dict | None) -> bool:
    """The method keeps parts at the site (a head, BatchNorm) but the site has none yet: it has
    not trained in this run, so the model it would score has the coordinator's untrained ones."""
    return method.keeps_parts and personal is None


def own_parts(model: ECGClassifier, method: Method, personal: dict | None) -> None:
    """The parts the site kept (``site_parts`` of an earlier round) in place of the
    coordinator's; nothing where the method keeps none apart or the site has none yet. Only the
    method's keys are read from ``personal`` (a Ditto site keeps a whole model there)."""
    local = _local_keys(model, method)
    if personal is not None and local:
        model.load_state_dict({**model.state_dict(), **{k: personal[k] for k in local}})


def _plain_round(model: ECGClassifier, r: LocalRound) -> tuple[TrainResult, dict | None]:
    return r.trainer.fit(model, r.train_ds, None), None


def _ditto_round(model: ECGClassifier, r: LocalRound) -> tuple[TrainResult, dict | None]:
    """The global update as in FedAvg, then the personal model's: the same data, pulled
    towards the global weights this round started from."""
    anchor = {k: v.detach().clone() for k, v in model.state_dict().items()}
    personal = copy.deepcopy(model)
    if r.personal is not None:
        personal.load_state_dict(r.personal)
    result = r.trainer.fit(model, r.train_ds, None)
    cfg = replace(r.trainer.cfg, proximal_mu=r.settings.ditto_lambda)
    Trainer(cfg, r.trainer.labels, progress=False, proximal_to=anchor).fit(
        personal, r.train_ds, None
    )
    return result, personal.state_dict()


def _fedrep_round(model: ECGClassifier, r: LocalRound) -> tuple[TrainResult, dict | None]:
    """The site's head first, on the received body, then the body under that head."""
    own_parts(model, r.settings.method, r.personal)
    head_cfg = replace(r.trainer.cfg, epochs=r.settings.head_epochs, proximal_mu=0.0)
    with training_only(model, model.head.parameters()):
        replace(r.trainer, cfg=head_cfg, proximal_to=None).fit(model, r.train_ds, None)
    with training_only(model, body(model)):
        result = r.trainer.fit(model, r.train_ds, None)
    return result, site_parts(model, r.settings.method)


def _own_parts_round(model: ECGClassifier, r: LocalRound) -> tuple[TrainResult, dict | None]:
    """FedPer, FedBN: the site's own parts in place of the coordinator's (none in round 1), then
    a plain round; the site keeps those parts."""
    method = r.settings.method
    own_parts(model, method, r.personal)
    return r.trainer.fit(model, r.train_ds, None), site_parts(model, method)


def _fedbabu_round(model: ECGClassifier, r: LocalRound) -> tuple[TrainResult, dict | None]:
    """The head stays as initialised: every site learns a body for the same classifier."""
    with training_only(model, body(model)):
        return r.trainer.fit(model, r.train_ds, None), None


def _auto_round(model: ECGClassifier, r: LocalRound) -> tuple[TrainResult, dict | None]:
    """Ditto's personal model is trained alongside only when it is a candidate."""
    chosen = _ditto_round if "ditto" in r.settings.candidates else _plain_round
    return chosen(model, r)


def _finetune(layers: str) -> Finish:
    def finish(model: ECGClassifier, run: SiteRun) -> Personalised:
        settings = replace(run.settings, mode=layers)
        return Personalised(*finetune_at_site(model, run.site, run.space, run.target, settings))

    return finish


def _ditto_finish(model: ECGClassifier, run: SiteRun) -> Personalised:
    """The personal model, trained on with the same pull towards the final global weights
    (early stopping on the site's validation split, like a plain fine-tune)."""
    anchor = {k: v.detach().clone() for k, v in model.state_dict().items()}
    personal = copy.deepcopy(model)
    if run.personal is not None:
        personal.load_state_dict(run.personal)
    cfg = replace(run.settings.train, proximal_mu=run.settings.ditto_lambda)
    labels = run.target.labels
    val, test = run.site.dataset("val", run.target), run.site.dataset("test", run.target)
    trainer = Trainer(cfg, labels, progress=False, proximal_to=anchor, start_competes=True)
    result = trainer.fit(personal, run.site.dataset("train", run.target), val)
    return Personalised(personal, result, score(personal, val, test, labels))


def _own_parts_finish(model: ECGClassifier, run: SiteRun) -> Personalised:
    """The site's own parts on the final global model, then a fine-tune of the method's
    ``layers``: FedRep/FedPer refit their own head to the final body (the body stays), FedBN
    fine-tunes the whole model from its own BatchNorm."""
    method = run.settings.method
    own_parts(model, method, run.personal)
    return _finetune(method.layers)(model, run)


def val_macro_auc(model: ECGClassifier, run: SiteRun) -> float | None:
    """The site's own validation split: what ``auto`` chooses by (None: it cannot tell)."""
    val = run.site.dataset("val", run.target)
    if not len(val):
        return None
    return compute_metrics(*evaluate(model, val), run.target.labels).macro_auc


def _auto_finish(model: ECGClassifier, run: SiteRun) -> Personalised:
    """Every candidate from the same global model; the best by validation macro AUC is kept
    (ties and undefined scores: the first in ``finetune.candidates``). Each candidate's
    validation and test macro AUC and the pick go back as metrics."""
    tried, metrics = {}, {}
    for name in run.settings.candidates:
        done = METHODS[name].finish(copy.deepcopy(model), run)
        val = val_macro_auc(done.model, run)
        tried[name] = (-math.inf if val is None else val, done)
        metrics[candidate_metric(name, CANDIDATE_VAL_AUC)] = math.nan if val is None else val
        metrics[candidate_metric(name, CANDIDATE_TEST_AUC)] = _nan(done.after.macro_auc)
    best = max(run.settings.candidates, key=lambda name: tried[name][0])  # first of equals
    for name in run.settings.candidates:
        metrics[candidate_metric(name, CANDIDATE_PICKED)] = float(name == best)
    picked = tried[best][1]
    return replace(picked, metrics=metrics)


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


for _name in LAYERS:
    register(Method(_name, _plain_round, _finetune(_name), layers=_name))
register(Method("ditto", _ditto_round, _ditto_finish))
register(Method("fedrep", _fedrep_round, _own_parts_finish, local_keys=head_keys, layers="head"))
register(Method("fedper", _own_parts_round, _own_parts_finish, local_keys=head_keys, layers="head"))
register(Method("fedbabu", _fedbabu_round, _finetune("full"), head_keys, site_owned=False))
register(Method("fedbn", _own_parts_round, _own_parts_finish, local_keys=batchnorm_keys))
register(Method("auto", _auto_round, _auto_finish))

MODES = tuple(METHODS)
#: What ``auto`` may choose from: methods whose rounds are plain FedAvg (Ditto's personal model
#: trains beside them) and send the whole model, so one federation serves them all.
CANDIDATES = tuple(m for m in METHODS if m != "auto" and METHODS[m].local_keys is None)
