"""The baselines a federated result is judged against, on the very same site splits.

- local-only: each site trains alone on its own training split;
- centralized: all sites' training data pooled (the non-private upper bound), then fine-tuned at
  each site like the federated model (the layers the personalisation method fine-tunes; there are
  no rounds to personalise).
Both use the one training loop and the same budget of passes over the data as the federation.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable
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


def _open(experiment: ExperimentConfig, manifest: Path, index: int) -> SiteData:
    return SiteData.from_manifest(manifest, index, experiment.pipeline)


def _local_only_at(experiment: ExperimentConfig, manifest: Path, index: int) -> Metrics:
    return local_only(experiment, _open(experiment, manifest, index))


def _finetune_pooled_at(
    experiment: ExperimentConfig, manifest: Path, index: int, state: dict
) -> Metrics:
    """The pooled model fine-tuned at one site like the federated model (the layers the
    personalisation method fine-tunes; there are no rounds to personalise)."""
    space = LabelSpace.load(experiment.labels)
    target = LabelSpace.load(experiment.finetune.labels) if experiment.finetune.labels else space
    model = _fresh_model(experiment, space)
    model.load_state_dict(state)
    ft = replace(experiment.finetune, mode=experiment.finetune.method.layers)
    site = _open(experiment, manifest, index)
    return finetune_at_site(model, site, space, target, ft)[2]


def _per_site(task: Callable[..., Metrics], jobs: dict[str, tuple], desc: str, progress: bool):
    """``task(*job)`` for every site's job, by site name, in one single-threaded process per
    available core: sites are independent, and one-thread processes share busy cores far better
    than one process's thread pool does. Each opens its site itself (nothing large is pickled
    across); with one core, they run here in turn."""
    workers = min(len(jobs), cpu.available_cores())
    bar = tqdm(total=len(jobs), desc=desc, unit="site", disable=not progress)
    out: dict[str, Metrics] = {}
    if workers <= 1:
        for name, job in jobs.items():
            out[name] = task(*job)
            bar.update()
    else:
        spawn = multiprocessing.get_context("spawn")  # no forked copy of this process's torch
        with ProcessPoolExecutor(workers, spawn, initializer=cpu.apply, initargs=(1,)) as pool:
            running = {pool.submit(task, *job): name for name, job in jobs.items()}
            for done in as_completed(running):
                out[running[done]] = done.result()
                bar.update()
    bar.close()
    return {name: out[name] for name in jobs}


def local_only_all(
    experiment: ExperimentConfig, manifest: Path, sites: list[SiteData], progress: bool = True
) -> dict[str, Metrics]:
    """Every site's local-only baseline, by site name."""
    jobs = {site.name: (experiment, manifest, i) for i, site in enumerate(sites)}
    return _per_site(_local_only_at, jobs, "local-only", progress)


def centralized(
    experiment: ExperimentConfig, manifest: Path, sites: list[SiteData], progress: bool = False
) -> dict[str, Metrics]:
    """Pretrain on the pooled data (this process, all its threads), then fine-tune that model
    at every site; per site, its test scores. ``progress``: a bar per pooled epoch and one over
    the sites' fine-tuning."""
    space = LabelSpace.load(experiment.labels)
    model = _fresh_model(experiment, space)
    pooled = ConcatDataset([s.dataset("train", space) for s in sites])
    pooled_val = ConcatDataset([s.dataset("val", space) for s in sites])
    cfg = replace(experiment.local, epochs=_epochs(experiment))
    Trainer(cfg, space.labels, progress=progress).fit(
        model, pooled, pooled_val if len(pooled_val) else None
    )
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    jobs = {site.name: (experiment, manifest, i, state) for i, site in enumerate(sites)}
    return _per_site(_finetune_pooled_at, jobs, "fine-tuning the pooled model", progress)
