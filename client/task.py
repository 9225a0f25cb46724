"""What a site does with each message: train, evaluate, or fine-tune on its own cached data.

Everything here runs inside the hospital (or a simulated one). Only weights and metrics go back;
the fine-tuned model stays in the site's own output folder.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context

from client.policy import POLICY_KEY, check_job, plain_name
from common import config, dpsgd, protocol, training
from common.checkpoint import save_checkpoint
from common.evaluation import score
from common.experiment import ExperimentConfig
from common.finetune import finetune_at_site
from common.hospital import SitePolicy
from common.metrics import compute_metrics
from common.models import ECGClassifier
from common.preprocess import PipelineConfig
from common.protocol import Job
from common.site import SiteData

log = logging.getLogger("ecgfl.client")
PIPELINE_KEY = "pipeline-fingerprint"  # node config: the pipeline hospital.yaml prepared
SITE_DELTA = 1e-5  # the delta at which a hospital's own budget is held
SITE_LEDGER_DIR = "privacy"  # under the hospital's output folder: its lifetime DP-SGD ledger


def site_policy(context: Context) -> SitePolicy | None:
    """The hospital's policy, which its own ClientApp runner puts in the node config; None in a
    simulation (no hospital)."""
    text = context.node_config.get(POLICY_KEY)
    return SitePolicy.from_json(str(text)) if text else None


def read_job(record: ConfigRecord, context: Context) -> Job:
    """The coordinator's job, refused (``PolicyViolation``) where it breaks the site's policy."""
    job = Job.from_record(record)
    policy = site_policy(context)
    if policy is not None:
        spaces = [job.space, job.finetune_space]
        check_job(policy, job.experiment, spaces, job.run_name, job.server_round)
    return job


def open_site(context: Context, experiment: ExperimentConfig) -> SiteData:
    """This node's data: a hospital's folder (deployment) or a manifest entry (simulation)."""
    node = context.node_config
    if "data-dir" in node:
        own = node.get(PIPELINE_KEY)
        if own and own != experiment.pipeline.fingerprint:
            log.info(
                "the run's preprocessing differs from hospital.yaml's pipeline: using (or "
                "building) this site's cache for %s",
                json.dumps(experiment.pipeline.to_dict()),
            )
        return SiteData.from_folder(
            str(node.get("site", "site")),
            Path(str(node["data-dir"])),
            Path(str(node.get("cache-dir", Path(str(node["data-dir"])).parent / "ecgfl-cache"))),
            experiment.pipeline,
            str(node["format"]) if node.get("format") else None,
        )
    manifest = context.run_config.get(protocol.SITE_MANIFEST)
    if not manifest:
        raise config.ConfigError(
            "this node has no 'data-dir' in its node config and the run names no site-manifest"
        )
    return _virtual_site(Path(str(manifest)), int(node["partition-id"]), experiment.pipeline)


@lru_cache(maxsize=256)
def _virtual_site(manifest: Path, partition: int, pipeline: PipelineConfig) -> SiteData:
    """The Simulation Engine reuses ClientApp processes across messages: open each site once."""
    return SiteData.from_manifest(manifest, partition, pipeline)


def output_dir(context: Context, site: SiteData, run_name: str) -> Path:
    """Where this site keeps what must not leave it (the fine-tuned model)."""
    node = context.node_config
    if "output-dir" in node:
        base = Path(str(node["output-dir"]))
    else:
        base = Path(str(context.run_config[protocol.RUN_DIR])) / "sites" / site.name
    path = base / plain_name(run_name, protocol.RUN_NAME)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _nan(value: float | None) -> float:
    """Flower needs the same metric keys from every site; undefined scores travel as NaN."""
    return math.nan if value is None else float(value)


def global_model(job: Job, arrays: ArrayRecord) -> ECGClassifier:
    model = job.experiment.model_config().build(n_classes=len(job.space))
    model.load_state_dict(arrays.to_torch_state_dict())
    return model


@dataclass
class SiteBudget:
    """A hospital's own DP-SGD budget and the ledger of every step it ever took, across runs."""

    max_epsilon: float
    ledger: dpsgd.Ledger


def site_budget(context: Context) -> SiteBudget | None:
    """The hospital's lifetime budget (``policy.dp_max_epsilon``), kept in its output folder."""
    policy = site_policy(context)
    if policy is None or policy.dp_max_epsilon is None:
        return None
    folder = Path(str(context.node_config["output-dir"])) / SITE_LEDGER_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return SiteBudget(policy.dp_max_epsilon, dpsgd.Ledger(folder))


def _dp_limits(job: Job, run_ledger: dpsgd.Ledger, site: SiteBudget | None) -> list[tuple]:
    """(ledger, epsilon, delta) limits a round must respect: the run's budget on the run's ledger,
    and the site's own on its lifetime ledger at delta ``SITE_DELTA`` (so a coordinator cannot
    loosen it with a large delta or reset it with a new run name). A site with its own budget
    refuses to train without DP-SGD."""
    dp = job.experiment.federation.dp_sgd
    if site is not None and not dp.enabled:
        raise dpsgd.SiteBudgetExhausted(
            f"this site trains only with DP-SGD (its own budget: epsilon {site.max_epsilon}), and "
            "the run has federation.dp_sgd off; it does not train"
        )
    limits = [(run_ledger, dp.max_epsilon, dp.delta)] if dp.max_epsilon is not None else []
    return limits + ([(site.ledger, site.max_epsilon, SITE_DELTA)] if site is not None else [])


def train_on_site(
    job: Job,
    site: SiteData,
    arrays: ArrayRecord,
    out_dir: Path,
    flip_labels: bool = False,
    site_budget: SiteBudget | None = None,
) -> tuple[dict, dict]:
    """Local epochs from the global weights; returns (new weights, metrics for the reply).

    With DP-SGD the site keeps its own privacy ledger in ``out_dir``, refuses a round that would
    take its epsilon past the run's budget or the hospital's own (``site_budget``, counted over
    every run), and reports the epsilon
    spent and what one more round would bring it to. ``flip_labels`` is the label-flipping attack
    (simulated sites only).
    """
    model = global_model(job, arrays)
    train_ds = site.dataset("train", job.space)
    if flip_labels:
        train_ds.y = train_ds.mask * (1 - train_ds.y)
    cfg = replace(
        job.experiment.local,
        proximal_mu=job.proximal_mu,
        seed=job.experiment.local.seed + job.server_round,
    )
    anchor = arrays.to_torch_state_dict() if job.proximal_mu > 0 else None
    dp = job.experiment.federation.dp_sgd
    rounds = job.experiment.federation.rounds
    ledger = dpsgd.Ledger(out_dir)
    ledgers = _dp_limits(job, ledger, site_budget)
    if dp.enabled:
        planned = dpsgd.plan(dp, len(train_ds), cfg.batch_size, cfg.epochs, rounds)
        _refuse_past_budget(site.name, planned, ledgers)
    trainer = training.Trainer(
        cfg,
        job.space.labels,
        progress=False,
        proximal_to=anchor,
        dp=dp if dp.enabled else None,
        dp_rounds=rounds,
    )
    result = trainer.fit(model, train_ds, None)
    metrics = {
        protocol.NUM_EXAMPLES: len(train_ds),
        protocol.TRAIN_LOSS: _nan(result.history[-1]["train_loss"]),
        protocol.POSITIVES: train_ds.y.sum(0).tolist(),
        protocol.ANNOTATED: train_ds.mask.sum(0).tolist(),
    }
    if result.dp_steps is not None:
        ledger.add(result.dp_steps)
        if site_budget is not None:
            site_budget.ledger.add(result.dp_steps)
        metrics.update(_dp_metrics(ledger, result.dp_steps, dp.delta))
    clip = job.experiment.federation.update_clip_norm
    if clip is not None:
        return clip_update(model.state_dict(), arrays.to_torch_state_dict(), clip), metrics
    return model.state_dict(), metrics


def _refuse_past_budget(site: str, planned: dpsgd.Steps, ledgers: list[tuple]) -> None:
    """Refuse (``SiteBudgetExhausted``) a round that would take a ledger past its limit."""
    for spent, limit, delta in ledgers:
        after = dpsgd.epsilon([*spent.read(), planned], delta)
        if after > limit:
            raise dpsgd.SiteBudgetExhausted(
                f"site {site}: this round would take its DP-SGD epsilon to {after:.3f}, "
                f"past its budget of {limit} (delta {delta}); it does not train"
            )


def _dp_metrics(ledger: dpsgd.Ledger, steps: dpsgd.Steps, delta: float) -> dict:
    """What the run's ledger has spent, and what one more round like this one would bring it
    to: the coordinator stops before a round past the budget."""
    spent = ledger.read()
    return {
        protocol.DP_EPSILON: dpsgd.epsilon(spent, delta),
        protocol.DP_EPSILON_NEXT: dpsgd.epsilon([*spent, steps], delta),
        protocol.DP_NOISE_MULTIPLIER: steps.noise_multiplier,
    }


def clip_update(new: dict, old: dict, max_norm: float) -> dict:
    """``old + (new - old) * min(1, max_norm / ||new - old||)``: one site's step is bounded.

    The L2 norm runs over every floating-point tensor (weights and normalisation statistics);
    integer buffers (BatchNorm's batch counter) pass through.
    """
    floats = [k for k, v in new.items() if v.is_floating_point()]
    norm = torch.sqrt(sum(((new[k] - old[k]).double() ** 2).sum() for k in floats)).item()
    scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
    clipped = dict(new)
    for k in floats:
        clipped[k] = (old[k] + (new[k] - old[k]) * scale).to(new[k].dtype)
    return clipped


def evaluate_on_site(job: Job, site: SiteData, arrays: ArrayRecord) -> dict:
    """The global model on this site's validation split."""
    model = global_model(job, arrays)
    val_ds = site.dataset("val", job.space)
    if not len(val_ds):
        return {
            protocol.NUM_EXAMPLES: 0,
            protocol.VAL_LOSS: math.nan,
            protocol.MACRO_AUC: math.nan,
            protocol.MICRO_AUC: math.nan,
        }
    probs, y, mask = training.evaluate(model, val_ds)
    loss = training.masked_bce(
        torch.logit(torch.from_numpy(probs), eps=1e-6), torch.from_numpy(y), torch.from_numpy(mask)
    ).item()
    m = compute_metrics(probs, y, mask, job.space.labels)
    return {
        protocol.NUM_EXAMPLES: len(val_ds),
        protocol.VAL_LOSS: loss,
        protocol.MACRO_AUC: _nan(m.macro_auc),
        protocol.MICRO_AUC: _nan(m.micro_auc),
    }


def finetune_on_site(
    job: Job, site: SiteData, arrays: ArrayRecord, out_dir: Path
) -> tuple[dict, Path]:
    """Fine-tune the global model locally and keep it; report test scores before and after."""
    ft = job.experiment.finetune
    model = global_model(job, arrays)
    target = job.finetune_space
    before = score(
        model, site.dataset("val", job.space), site.dataset("test", job.space), job.space.labels
    )
    model, result, after = finetune_at_site(model, site, job.space, target, ft)
    path = save_checkpoint(
        out_dir / "finetuned.pt",
        model,
        job.experiment.model_config(),
        target,
        job.experiment.pipeline.fingerprint,
        job.experiment.pipeline.to_dict(),
        site=site.name,
        run=job.run_name,
        thresholds=after.thresholds(),
        before=before.to_dict(),
        after=after.to_dict(),
        history=result.history,
    )
    metrics = {
        protocol.NUM_EXAMPLES: int(site.counts()["test"]),
        protocol.TRAIN_EXAMPLES: int(site.counts()["train"]),
        protocol.BEFORE_MACRO_AUC: _nan(before.macro_auc),
        protocol.BEFORE_MACRO_F1: _nan(before.macro_f1),
        protocol.AFTER_MACRO_AUC: _nan(after.macro_auc),
        protocol.AFTER_MACRO_F1: _nan(after.macro_f1),
    }
    return metrics, path
