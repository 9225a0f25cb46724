"""The baselines a federated result is judged against, on the very same site splits.

- local-only: each site trains alone on its own training split;
- centralized: all sites' training data pooled (the non-private upper bound), then fine-tuned at
  each site like the federated model (the layers the personalisation method fine-tunes; there are
  no rounds to personalise).
Both use the one training loop and the same budget of passes over the data as the federation.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
from torch.utils.data import ConcatDataset

from common.evaluation import score
from common.experiment import ExperimentConfig
from common.finetune import finetune_at_site
from common.labels import LabelSpace
from common.metrics import Metrics
from common.models import ECGClassifier
from common.site import SiteData
from common.training import Trainer

log = logging.getLogger("ecgfl.baselines")


def _fresh_model(experiment: ExperimentConfig, space: LabelSpace) -> ECGClassifier:
    torch.manual_seed(experiment.local.seed)
    return experiment.model_config().build(n_classes=len(space))


def _epochs(experiment: ExperimentConfig) -> int:
    """As many passes over a site's data as a federated run gives it."""
    return experiment.federation.rounds * experiment.local.epochs


def local_only(experiment: ExperimentConfig, site: SiteData) -> Metrics:
    space = LabelSpace.load(experiment.finetune.labels or experiment.labels)
    model = _fresh_model(experiment, space)
    epochs = _epochs(experiment) + experiment.finetune.train.epochs
    cfg = replace(experiment.local, epochs=epochs)
    val = site.dataset("val", space)
    Trainer(cfg, space.labels, progress=False).fit(model, site.dataset("train", space), val)
    return score(model, val, site.dataset("test", space), space.labels)


def centralized(
    experiment: ExperimentConfig, sites: list[SiteData]
) -> tuple[ECGClassifier, dict[str, Metrics]]:
    """Pretrain on the pooled data; per site: (pooled model, then fine-tuned) test scores."""
    space = LabelSpace.load(experiment.labels)
    model = _fresh_model(experiment, space)
    pooled = ConcatDataset([s.dataset("train", space) for s in sites])
    pooled_val = ConcatDataset([s.dataset("val", space) for s in sites])
    cfg = replace(experiment.local, epochs=_epochs(experiment))
    Trainer(cfg, space.labels, progress=False).fit(
        model, pooled, pooled_val if len(pooled_val) else None
    )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    target = LabelSpace.load(experiment.finetune.labels) if experiment.finetune.labels else space
    ft = replace(experiment.finetune, mode=experiment.finetune.method.layers)
    results = {}
    for site in sites:
        local = _fresh_model(experiment, space)
        local.load_state_dict(state)
        _, _, results[site.name] = finetune_at_site(local, site, space, target, ft)
    return model, results
