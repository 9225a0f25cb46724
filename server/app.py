"""ecgfl's Flower ServerApp: federated pretraining rounds, then local fine-tuning at every site
(or a seeded sample of them: ``finetune.fraction``).

Run settings come from the run config: ``run-dir`` (absolute; checkpoints, metrics, report),
``experiment`` (an experiment YAML; empty = defaults), ``resume`` (continue from the last
complete round in ``run-dir``).
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from common import protocol
from common.checkpoint import load_checkpoint, save_checkpoint
from common.experiment import ExperimentConfig
from common.finetune import adapt_head
from common.labels import LabelSpace
from common.protocol import Job
from server import privacy, report, runs, tracking
from server.inflight import InFlightLimit
from server.rounds import (
    MetricsLog,
    RoundLoop,
    RoundState,
    RunStopped,
    checkpoint_path,
    exchange,
    latest_checkpoint,
)
from server.runs import record_flower_run
from server.strategies import build_strategy, required_sites

log = logging.getLogger("ecgfl.server")
app = ServerApp()


def initial_state(experiment: ExperimentConfig, space: LabelSpace) -> RoundState:
    """Round 0: fresh weights from the seed, or a pretrained checkpoint adapted to this space."""
    torch.manual_seed(experiment.local.seed)
    init = experiment.federation.init_checkpoint
    if not init:
        model = experiment.model_config().build(n_classes=len(space))
    else:
        ckpt = load_checkpoint(init)
        ckpt.require_pipeline(experiment.pipeline.fingerprint)
        model = adapt_head(ckpt.build_model(), ckpt.space, space)
    return RoundState(0, {k: v.detach().clone() for k, v in model.state_dict().items()})


def log_through_flower() -> None:
    """ecgfl's log lines take the way Flower's own do, so ``flwr run --stream`` and ``flwr log``
    show the rounds, the privacy budget and the failed sites too."""
    ours = logging.getLogger("ecgfl")
    ours.setLevel(logging.INFO)
    for handler in logging.getLogger("flwr").handlers:
        if handler not in ours.handlers:
            ours.addHandler(handler)


def start_state(context: Context, run_dir: Path, experiment, space, metrics) -> RoundState:
    """Round 0 of a new run, or the last complete round of a resumed one; with the site names
    provisioning learnt (deployment: node id -> site, from registered keys)."""
    last = latest_checkpoint(run_dir) if context.run_config.get(protocol.RESUME) else None
    if last:
        state = RoundState.load(last)
        log.info("resuming %s after round %d", run_dir, state.round)
    else:
        state = initial_state(experiment, space)
        state.save(checkpoint_path(run_dir, 0))
    metrics.truncate_after(state.round)
    provisioned = run_dir / runs.SITES
    if provisioned.exists():
        state.sites.update({int(k): v for k, v in json.loads(provisioned.read_text()).items()})
    return state


def global_model_saver(run_dir: Path, experiment: ExperimentConfig, space: LabelSpace):
    """What the loop calls after each round: ``global_model.pt``, a checkpoint any tool opens."""

    def save(rnd: int, arrays: dict) -> None:
        model = experiment.model_config().build(n_classes=len(space))
        model.load_state_dict(arrays)
        save_checkpoint(
            run_dir / runs.GLOBAL_MODEL,
            model,
            experiment.model_config(),
            space,
            experiment.pipeline.fingerprint,
            experiment.pipeline.to_dict(),
            round=rnd,
            run=run_dir.name,
        )

    return save


def finetune_sample(
    sites: dict[int, str], nodes: list[int], fraction: float, seed: int
) -> list[int]:
    """The nodes that fine-tune: all of them, or ``fraction`` of them (at least one) drawn with
    ``seed`` in the order of their site names, so a rerun picks the same sites."""
    if fraction >= 1:
        return list(nodes)
    ordered = sorted(nodes, key=lambda n: (sites.get(n, ""), n))
    return random.Random(seed).sample(ordered, required_sites(len(ordered), fraction))


def finetune_at(grid: Grid, nodes: list[int], state: RoundState, config, timeout: float, run_dir):
    """The sites at ``nodes`` fine-tune the final global model and keep it; (per-site scores,
    failures)."""
    log.info("fine-tuning the global model at %d site(s)", len(nodes))
    content = RecordDict(
        {protocol.ARRAYS_RECORD: ArrayRecord(state.arrays), protocol.CONFIG_RECORD: config}
    )
    messages = [
        Message(content=content, dst_node_id=node, message_type=protocol.FINETUNE) for node in nodes
    ]
    _, per_site, failed = exchange(grid, messages, timeout, state.sites, run_dir / runs.FAILURES)
    return per_site, failed


@app.main()
def main(grid: Grid, context: Context) -> None:
    log_through_flower()
    if limit := int(context.run_config.get(protocol.MAX_IN_FLIGHT, 0)):
        grid = InFlightLimit(grid, limit)
    run_dir = Path(str(context.run_config[protocol.RUN_DIR]))
    pinned = str(context.run_config.get(protocol.EXPERIMENT_FILE, ""))
    experiment = ExperimentConfig.load(pinned or None)
    space = LabelSpace.load(experiment.labels)
    (run_dir / runs.CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    record_flower_run(run_dir, context.run_id)
    tracker = tracking.Tracker(experiment, run_dir)
    metrics = MetricsLog(run_dir / runs.METRICS, tracker.entry)
    state = start_state(context, run_dir, experiment, space, metrics)
    config = Job.for_run(experiment, run_dir.name, state.run_id).to_record()
    fed = experiment.federation
    save_global = global_model_saver(run_dir, experiment, space)
    loop = RoundLoop(grid, build_strategy(fed), fed, config, run_dir, metrics, save_global)
    try:
        state = loop.run(state)
    except RunStopped:  # a site always fails, or too few are left: nothing comparable to tune
        report.write(run_dir, metrics.read(), experiment)
        tracker.finish(run_dir, stopped=True)
        return
    nodes = list(grid.get_node_ids())
    ft = experiment.finetune
    chosen = finetune_sample(state.sites, nodes, ft.fraction, experiment.local.seed)
    per_site, failed = finetune_at(grid, chosen, state, config, fed.round_timeout_s, run_dir)
    metrics.write(
        {
            "round": state.round,
            "phase": protocol.Phase.FINETUNE,
            "sites": per_site,
            "failed": failed,
            "sampled": {"sites": len(chosen), "of": len(nodes), "fraction": ft.fraction},
        }
    )
    report.write(run_dir, metrics.read(), experiment)
    privacy.append_to_report(run_dir, metrics.read())
    tracker.finish(run_dir)
