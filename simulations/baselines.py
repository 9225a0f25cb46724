"""The baselines a federated result is judged against, on the very same site splits.

- local-only: each site trains alone on its own training split;
- centralized: all sites' training data pooled (the non-private upper bound), then fine-tuned at
  each site like the federated model.
Both use the one training loop and the same budget of passes over the data as the federation.
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset
from tqdm import tqdm

from common import cpu
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


def _local_only_at(experiment: ExperimentConfig, manifest: Path, index: int) -> Metrics:
    """One site's baseline in a worker process: it opens the site itself (nothing large is
    pickled across) and computes with one thread."""
    cpu.apply(1)
    return local_only(experiment, SiteData.from_manifest(manifest, index, experiment.pipeline))


def local_only_all(
    experiment: ExperimentConfig, manifest: Path, sites: list[SiteData], progress: bool = True
) -> dict[str, Metrics]:
    """Every site's local-only baseline, one single-threaded process per available core: sites
    are independent, and one-thread processes share busy cores far better than one process's
    thread pool does."""
    workers = min(len(sites), cpu.available_cores())
    bar = tqdm(total=len(sites), desc="local-only", unit="site", disable=not progress)
    out: dict[str, Metrics] = {}
    if workers <= 1:
        for site in sites:
            out[site.name] = local_only(experiment, site)
            bar.update()
    else:
        spawn = multiprocessing.get_context("spawn")  # no forked copy of this process's torch
        with ProcessPoolExecutor(workers, mp_context=spawn) as pool:
            jobs = {
                pool.submit(_local_only_at, experiment, manifest, i): site.name
                for i, site in enumerate(sites)
            }
            for job in as_completed(jobs):
                out[jobs[job]] = job.result()
                bar.update()
    bar.close()
    return {site.name: out[site.name] for site in sites}


def centralized(
    experiment: ExperimentConfig, sites: list[SiteData], progress: bool = False
) -> tuple[ECGClassifier, dict[str, Metrics]]:
    """Pretrain on the pooled data; per site: (pooled model, then fine-tuned) test scores.
    ``progress``: a bar per pooled epoch, one per site's fine-tuning."""
    space = LabelSpace.load(experiment.labels)
    model = _fresh_model(experiment, space)
    pooled = ConcatDataset([s.dataset("train", space) for s in sites])
    pooled_val = ConcatDataset([s.dataset("val", space) for s in sites])
    cfg = replace(experiment.local, epochs=_epochs(experiment))
    Trainer(cfg, space.labels, progress=progress).fit(
        model, pooled, pooled_val if len(pooled_val) else None
    )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    target = LabelSpace.load(experiment.finetune.labels) if experiment.finetune.labels else space
    ft = experiment.finetune
    results = {}
    for site in tqdm(sites, desc="fine-tuning the pooled model", disable=not progress):
        local = _fresh_model(experiment, space)
        local.load_state_dict(state)
        _, _, results[site.name] = finetune_at_site(local, site, space, target, ft)
    return model, results
