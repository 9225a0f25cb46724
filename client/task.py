"""What a site does with each message: train, evaluate, or fine-tune on its own cached data.

Everything here runs inside the hospital (or a simulated one). Only weights and metrics go back;
what personalisation keeps between rounds (``personal.pt``: a Ditto model, a FedRep/FedPer head,
FedBN's BatchNorm layers) and the fine-tuned model stay in the site's own output folder.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from flwr.app import ArrayRecord
from torch.utils.data import Dataset

from client.budget import SiteBudget, dp_limits, dp_metrics, refuse_past_budget
from common import dpsgd, personalise, protocol, training
from common.checkpoint import save_checkpoint
from common.evaluation import nothing_scored, score
from common.metrics import Metrics, compute_metrics
from common.models import ECGClassifier
from common.protocol import Job
from common.site import SiteData


def _nan(value: float | None) -> float:
    """Flower needs the same metric keys from every site; undefined scores travel as NaN."""
    return math.nan if value is None else float(value)


PERSONAL = "personal.pt"  # in the site's output folder: what a method keeps between rounds


def _interval(metrics: Metrics) -> list[float]:
    """A bootstrap interval as it travels: ``[low, high]``, NaN where undefined."""
    return list(metrics.macro_auc_ci) if metrics.macro_auc_ci else [math.nan, math.nan]


def global_model(job: Job, arrays: ArrayRecord) -> ECGClassifier:
    model = job.experiment.model_config().build(n_classes=len(job.space))
    model.load_state_dict(arrays.to_torch_state_dict())
    return model


def kept(out_dir: Path, job: Job) -> dict[str, torch.Tensor] | None:
    """What this site kept from an earlier round of this run, if anything: a file another run
    of the same name left (its ``run_id`` differs) is not read."""
    path = out_dir / PERSONAL
    if not path.exists():
        return None
    saved = torch.load(path, weights_only=True)
    return saved["state"] if saved.get("run_id") == job.run_id else None


def keep(out_dir: Path, job: Job, state: dict[str, torch.Tensor]) -> None:
    """Atomically, readable by the site's own user only (mode 0600, like ``finetuned.pt``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{PERSONAL}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({"run_id": job.run_id, "state": state}, fh)
        os.replace(tmp, out_dir / PERSONAL)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def train_on_site(
    job: Job,
    site: SiteData,
    arrays: ArrayRecord,
    out_dir: Path,
    site_budget: SiteBudget | None = None,
) -> tuple[dict, dict]:
    """Local epochs from the global weights; returns (new weights, metrics for the reply).

    With DP-SGD the site keeps its own privacy ledger in ``out_dir``, refuses a round that would
    take its epsilon past the run's budget or the hospital's own (``site_budget``, counted over
    every run), and reports the epsilon spent and what one more round would bring it to.
    """
    model = global_model(job, arrays)
    train_ds = site.dataset("train", job.space)
    local = job.experiment.local
    cfg = replace(
        local,
        lr=job.experiment.federation.lr_at(local.lr, job.server_round),
        proximal_mu=job.proximal_mu,
        seed=local.seed + job.server_round,
    )
    anchor = arrays.to_torch_state_dict() if job.proximal_mu > 0 else None
    dp = job.experiment.federation.dp_sgd
    rounds = job.experiment.federation.rounds
    ledger = dpsgd.Ledger(out_dir)
    ledgers = dp_limits(job, ledger, site_budget)
    if dp.enabled:
        planned = dpsgd.plan(dp, len(train_ds), cfg.batch_size, cfg.epochs, rounds)
        refuse_past_budget(site.name, planned, ledgers)
    trainer = training.Trainer(
        cfg,
        job.space.labels,
        progress=False,
        proximal_to=anchor,
        dp=dp if dp.enabled else None,
        dp_rounds=rounds,
    )
    result, sent = _local_update(job, model, trainer, train_ds, out_dir)
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
        metrics.update(dp_metrics(ledger, result.dp_steps, dp.delta))
    clip = job.experiment.federation.update_clip_norm
    if clip is not None:
        return clip_update(sent, arrays.to_torch_state_dict(), clip), metrics
    return sent, metrics


def _local_update(
    job: Job, model: ECGClassifier, trainer: training.Trainer, train_ds: Dataset, out_dir: Path
) -> tuple[training.TrainResult, dict]:
    """The personalisation method's round (``finetune.mode``): trains ``model`` in place, keeps
    what the method keeps in ``out_dir``, and returns what is sent (all but the method's
    ``local_keys``)."""
    method = job.experiment.finetune.method
    own = None if job.server_round == 1 else kept(out_dir, job)  # round 1 afresh, also if redone
    local = personalise.LocalRound(trainer, train_ds, job.experiment.finetune, own)
    result, own = method.round(model, local)
    if own is not None:
        keep(out_dir, job, own)
    return result, personalise.shared_state(model, method)


def clip_update(new: dict, old: dict, max_norm: float) -> dict:
    """``old + (new - old) * min(1, max_norm / ||new - old||)``: one site's step is bounded.

    The L2 norm runs over every floating-point tensor (weights and normalisation statistics);
    integer buffers (BatchNorm's batch counter) pass through. Computed on the CPU, where the
    received weights are: a site that trained on a GPU holds ``new`` there.
    """
    new = {k: v.detach().cpu() for k, v in new.items()}
    floats = [k for k, v in new.items() if v.is_floating_point()]
    norm = torch.sqrt(sum(((new[k] - old[k]).double() ** 2).sum() for k in floats)).item()
    scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
    clipped = dict(new)
    for k in floats:
        clipped[k] = (old[k] + (new[k] - old[k]) * scale).to(new[k].dtype)
    return clipped


def evaluate_on_site(job: Job, site: SiteData, arrays: ArrayRecord, out_dir: Path) -> dict:
    """The global model on this site's validation split, with the parts the method keeps at
    the site (FedRep/FedPer's head, FedBN's BatchNorm: the coordinator's never train). A site
    that keeps such parts but has not trained in this run yet (a sampled run) has no model to
    score and reports none, as a site without a validation split does."""
    method = job.experiment.finetune.method
    own = kept(out_dir, job)
    val_ds = site.dataset("val", job.space)
    if not len(val_ds) or personalise.lacks_own_parts(method, own):
        return {
            protocol.NUM_EXAMPLES: 0,
            protocol.VAL_LOSS: math.nan,
            protocol.MACRO_AUC: math.nan,
            protocol.MICRO_AUC: math.nan,
        }
    model = global_model(job, arrays)
    personalise.own_parts(model, method, own)
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
    """Personalise the global model locally (``finetune.mode``) and keep it; report test
    scores before and after, with bootstrap intervals and per-label counts of the test split
    computed here, at the site (and what ``auto`` tried and picked).

    "Before" is the final global model as the site evaluated it in the rounds: with the parts
    the method keeps at the site (FedRep/FedPer's head, FedBN's BatchNorm), without which it is
    not a model anyone uses (the coordinator's head and BatchNorm never train); a site that never
    trained in this run (sampled out) has no "before" score."""
    ft = job.experiment.finetune
    model = global_model(job, arrays)
    personal = kept(out_dir, job)
    personalise.own_parts(model, ft.method, personal)
    target = job.finetune_space
    if personalise.lacks_own_parts(ft.method, personal):
        before = nothing_scored(job.space.labels)
    else:
        val_ds, test_ds = site.dataset("val", job.space), site.dataset("test", job.space)
        before = score(model, val_ds, test_ds, job.space.labels)
    run = personalise.SiteRun(site, job.space, target, ft, personal)
    done = ft.method.finish(model, run)
    path = save_checkpoint(
        out_dir / "finetuned.pt",
        done.model,
        job.experiment.model_config(),
        target,
        job.experiment.pipeline.fingerprint,
        job.experiment.pipeline.to_dict(),
        site=site.name,
        run=job.run_name,
        thresholds=done.after.thresholds(),
        before=before.to_dict(),
        after=done.after.to_dict(),
        history=done.result.history,
        personalisation={"mode": ft.mode, **done.metrics},
    )
    metrics = {
        protocol.NUM_EXAMPLES: int(site.counts()["test"]),
        protocol.TRAIN_EXAMPLES: int(site.counts()["train"]),
        protocol.BEFORE_MACRO_AUC: _nan(before.macro_auc),
        protocol.BEFORE_MACRO_F1: _nan(before.macro_f1),
        protocol.AFTER_MACRO_AUC: _nan(done.after.macro_auc),
        protocol.AFTER_MACRO_F1: _nan(done.after.macro_f1),
        protocol.BEFORE_MACRO_AUC_CI: _interval(before),
        protocol.AFTER_MACRO_AUC_CI: _interval(done.after),
        protocol.BEFORE_MACRO_AUC_SE: _nan(before.macro_auc_se),
        protocol.AFTER_MACRO_AUC_SE: _nan(done.after.macro_auc_se),
        protocol.TEST_POSITIVES: [
            float(done.after.per_class[k]["positives"]) for k in target.labels
        ],
        protocol.TEST_ANNOTATED: [
            float(done.after.per_class[k]["annotated"]) for k in target.labels
        ],
        **done.metrics,
    }
    return metrics, path
