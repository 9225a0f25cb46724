"""The baselines a federated result is judged against, on the very same site splits.

- local-only: each site trains alone on its own training split;
- centralized: all sites' training data pooled (the non-private upper bound), then fine-tuned at
  each site like the federated model (the layers the personalisation method fine-tunes; there are
  no rounds to personalise).
Both use the one training loop and the same budget of passes over the data as the federation,
and run as jobs on one pool of single-threaded processes (``run_baselines``).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
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


def _pooled_at(experiment: ExperimentConfig, manifest: Path, n_sites: int) -> dict:
    """The model pretrained on every site's training data pooled (validation: theirs pooled),
    as a CPU state dict."""
    space = LabelSpace.load(experiment.labels)
    sites = [_open(experiment, manifest, i) for i in range(n_sites)]
    model = _fresh_model(experiment, space)
    pooled = ConcatDataset([s.dataset("train", space) for s in sites])
    pooled_val = ConcatDataset([s.dataset("val", space) for s in sites])
    cfg = replace(experiment.local, epochs=_epochs(experiment))
    Trainer(cfg, space.labels, progress=False).fit(
        model, pooled, pooled_val if len(pooled_val) else None
    )
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _executor(workers: int) -> Executor:
    """One single-threaded process per available core: one-thread processes share busy cores
    gracefully, while one process's thread pool collapses when another job takes a core
    (docs/benchmarks.md: the pooled baseline 10x slower under a 2-thread load). With one core,
    a thread of this process (torch's threads are this process's, one per core)."""
    if workers <= 1:
        return ThreadPoolExecutor(1)
    spawn = multiprocessing.get_context("spawn")  # no forked copy of this process's torch
    return ProcessPoolExecutor(workers, spawn, initializer=cpu.apply, initargs=(1,))


def run_baselines(
    experiment: ExperimentConfig,
    manifest: Path,
    sites: list[str],
    which: set[str],
    progress: bool = True,
) -> dict[str, dict[str, Metrics]]:
    """The baselines in ``which`` ('local', 'central'), per site name (``sites``, in manifest
    order), as jobs on one pool: the pooled model trains beside the sites' local-only runs, then
    is fine-tuned at every site. Each job opens its sites itself: nothing large is pickled."""
    out: dict[str, dict[str, Metrics]] = {kind: {} for kind in which}
    steps = len(sites) * len(which) + ("central" in which)
    bar = tqdm(total=steps, desc="baselines", unit="job", disable=not progress)
    with _executor(min(steps, cpu.available_cores())) as pool:
        pending: dict[Future, tuple[str, str | None]] = {}
        if "central" in which:  # the longest job first
            pending[pool.submit(_pooled_at, experiment, manifest, len(sites))] = ("pooled", None)
        for i, name in enumerate(sites if "local" in which else []):
            pending[pool.submit(_local_only_at, experiment, manifest, i)] = ("local", name)
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for job in done:
                kind, name = pending.pop(job)
                bar.update()
                if kind != "pooled":
                    out[kind][name] = job.result()
                    continue
                state = job.result()
                for i, site in enumerate(sites):
                    args = (experiment, manifest, i, state)
                    pending[pool.submit(_finetune_pooled_at, *args)] = ("central", site)
    bar.close()
    return {kind: {name: results[name] for name in sites} for kind, results in out.items()}
