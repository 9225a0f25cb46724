"""The pretraining rounds: Flower's strategy does the sampling and aggregation; this loop adds
what a federation of hospitals needs around it: per-site metrics, a record of which sites failed,
and a checkpoint after every round so a stopped coordinator resumes where it was.

It replaces ``Strategy.start`` (which counts rounds from 1 and keeps no state) with the same calls
in the same order.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common import protocol
from common.experiment import FederationSettings
from common.flower_process import plain
from common.transport import from_wire, nbytes, to_wire
from server import privacy, runs
from server.metricslog import MetricsLog
from server.strategies import required_sites, restore_strategy_state, strategy_state

log = logging.getLogger("ecgfl.server")
# The site itself answered with an error (its code raised, or could not load), as opposed to
# Flower reporting it gone.
SITE_ERRORS = (ErrorCode.LOAD_CLIENT_APP_EXCEPTION, ErrorCode.CLIENT_APP_RAISED_EXCEPTION)
MAX_REASON = 240


class RunStopped(RuntimeError):
    """The federation cannot go on comparably: too few sites, or one that always fails."""


def reason_line(reason: str) -> str:
    """One readable line from a failure's reason (a traceback's last line, without colours)."""
    lines = [
        line.strip()
        for line in plain(reason).splitlines()
        if line.strip() and not line.startswith("  ") and not line.startswith("Traceback")
    ]
    line = lines[-1] if lines else "no reason given"
    return line if len(line) <= MAX_REASON else line[: MAX_REASON - 3] + "..."


@dataclass
class RoundState:
    """What a resumed run needs: the global arrays after ``round`` and the strategy's state."""

    round: int
    arrays: dict[str, torch.Tensor]
    strategy: dict = field(default_factory=dict)
    sites: dict[int, str] = field(default_factory=dict)  # node id -> site name
    run_id: str = field(default_factory=lambda: secrets.token_hex(8))  # protocol.RUN_ID

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        payload = {
            "round": self.round,
            "arrays": self.arrays,
            "strategy": {a: _to_torch(v) for a, v in self.strategy.items()},
            "sites": {str(k): v for k, v in self.sites.items()},
            "run_id": self.run_id,
        }
        torch.save(payload, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> RoundState:
        payload = torch.load(path, weights_only=True)
        return cls(
            round=payload["round"],
            arrays=payload["arrays"],
            strategy={a: _to_numpy(v) for a, v in payload["strategy"].items()},
            sites={int(k): v for k, v in payload["sites"].items()},
            run_id=payload.get("run_id", ""),
        )


def _to_torch(value):
    if isinstance(value, dict):
        return {k: torch.from_numpy(np.asarray(v)) for k, v in value.items()}
    return [torch.from_numpy(np.asarray(v)) for v in value]


def _to_numpy(value):
    if isinstance(value, dict):
        return {k: v.numpy() for k, v in value.items()}
    return [v.numpy() for v in value]


def checkpoint_path(run_dir: Path, rnd: int) -> Path:
    return run_dir / runs.CHECKPOINTS / f"round-{rnd:04d}.pt"


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((run_dir / runs.CHECKPOINTS).glob("round-*.pt"))
    return found[-1] if found else None


def site_name(reply: Message, node: int, known: dict[int, str]) -> str:
    if not reply.has_error() and protocol.SITE_RECORD in reply.content.config_records:
        known[node] = str(reply.content.config_records[protocol.SITE_RECORD][protocol.SITE_NAME])
    return known.get(node, f"node-{node}")


def ask_names(
    grid: Grid, nodes: list[int], config: ConfigRecord, timeout: float, known: dict[int, str]
) -> None:
    """Ask ``nodes`` which site they are (``known`` learns the answers). Only nodes whose first
    reply was an error need it (every other reply names its site): asking every node before
    round 1 cost a 1,000-site simulation 1,000 messages, as many as its sampled rounds."""
    content = RecordDict({protocol.CONFIG_RECORD: config})
    messages = [Message(content, dst_node_id=n, message_type=protocol.QUERY) for n in nodes]
    for reply in grid.send_and_receive(messages, timeout=timeout):
        site_name(reply, reply.metadata.src_node_id, known)


def exchange(
    grid: Grid,
    messages: list[Message],
    timeout: float,
    known: dict[int, str],
    failures_log: Path | None = None,
) -> tuple[list[Message], dict[str, dict], list[dict]]:
    """Send, wait, and sort the outcome per site: metrics of those that replied, the others' why
    (one line each; the full reason goes to ``failures_log``). A site that fails before any reply
    named it is asked its name (``ask_names``), so failures name sites, not node ids.

    Replies come back in site-name order, not arrival order: aggregation sums them in that
    order, and a floating-point sum's last bits depend on it, which over a few rounds of
    training made two runs of the same seed end with different models."""
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    # A dead node's error reply comes from the SuperLink itself (src_node_id 1): match replies
    # to what was sent instead (send_and_receive has filled in the message ids).
    sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
    unnamed = {sent_to.get(r.metadata.reply_to_message_id) for r in replies if r.has_error()}
    unnamed -= {None, *known}
    config = messages[0].content.config_records.get(protocol.CONFIG_RECORD) if messages else None
    if unnamed and config is not None:
        ask_names(grid, sorted(unnamed), config, timeout, known)
    per_site, failed = {}, []
    answered = set()
    named = []
    for reply in replies:
        node = sent_to.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
        name = site_name(reply, node, known)
        named.append((name, reply))
        answered.add(node)
        if reply.has_error():
            failed.append(
                {"site": name, "reason": reason_line(reply.error.reason), "code": reply.error.code}
            )
            if failures_log is not None:
                kind = messages[0].metadata.message_type if messages else "?"
                with open(failures_log, "a") as fh:
                    fh.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {kind} {name}\n")
                    fh.write(plain(reply.error.reason).rstrip() + "\n")
            continue
        per_site[name] = dict(next(iter(reply.content.metric_records.values())))
        for key, record in list(reply.content.array_records.items()):
            per_site[name][protocol.BYTES_UP] = nbytes(record)
            reply.content[key] = from_wire(record)
    for msg in messages:
        if msg.metadata.dst_node_id not in answered:
            node = msg.metadata.dst_node_id
            failed.append(
                {
                    "site": known.get(node, f"node-{node}"),
                    "reason": f"no reply within {timeout:.0f} s",
                }
            )
    replies = [reply for _, reply in sorted(named, key=lambda pair: pair[0])]
    return replies, dict(sorted(per_site.items())), failed


def placements(replies: list[Message]) -> dict[str, dict[str, str]]:
    """Where each site ran, from the replies that say so: a simulation's sites on Ray
    (simulations/site_app.py): its Ray node and GPUs, short text each."""
    out = {}
    for reply in replies:
        records = {} if reply.has_error() else reply.content.config_records
        if protocol.PLACEMENT_RECORD in records and protocol.SITE_RECORD in records:
            where = records[protocol.PLACEMENT_RECORD]
            out[str(records[protocol.SITE_RECORD][protocol.SITE_NAME])] = {
                key: str(where.get(key, ""))[:64] for key in (protocol.RAY_NODE, protocol.GPUS)
            }
    return out


def next_global(new: ArrayRecord, old: ArrayRecord) -> ArrayRecord:
    """The new global model: the aggregate, with the previous values of arrays no site sent
    (what a personalisation method keeps at the sites, such as FedRep's head, stays as it was).

    Aggregation is a weighted sum, which turns integer arrays (BatchNorm's batch counters)
    into floats: give every array back the dtype the model has, so what the sites receive is
    exactly the model's own state. A server that steps past the average (FedAvgM's momentum,
    FedAdam) can take a BatchNorm running variance below zero, which would make every site's
    forward pass NaN: variances are kept at zero or above."""
    out = {}
    for key, previous in old.items():
        array = new.get(key, previous)
        value, want = array.numpy(), np.dtype(previous.dtype)
        if np.issubdtype(want, np.integer):
            value = np.rint(value)
        if key.endswith("running_var"):  # PyTorch's name for every BatchNorm's variance
            value = np.maximum(value, 0)
        out[key] = Array(np.asarray(value, dtype=want))  # rint of a 0-d array is a scalar
    return ArrayRecord(out)


def _report_failures(rnd: int, failed: list[dict], before: list[dict]) -> None:
    """Log each failing site once while it fails the same way round after round."""
    previous = {f["site"]: f["reason"] for f in before}
    for f in failed:
        if previous.get(f["site"]) != f["reason"]:
            log.warning("round %d: site %s failed: %s", rnd, f["site"], f["reason"])


def stop_reason(
    rnd: int,
    per_site: dict,
    failed: list[dict],
    min_sites: int,
    history: list[dict],
    total_rounds: int,
    fraction: float = 1.0,
) -> str | None:
    """Why the run cannot go on comparably after this training round, or None.

    Too few sites replied (``min_sites``, or its ``fraction`` when rounds sample sites); or a
    site has answered with the same error in every round since round 1 (from round 2 on, or at
    once in a one-round run): a federation without it would be reported as if it were the one
    asked for. A site that is gone (no reply, node unavailable)
    is dropout, not a deterministic failure: the run goes on while ``min_sites`` remain.
    """
    required = required_sites(min_sites, fraction)
    if len(per_site) < required:
        who = "; ".join(f"{f['site']}: {f['reason']}" for f in failed) or "no reply"
        need = f"min_sites {min_sites}"
        if fraction < 1:
            need = f"{required} ({need} x fraction_train {fraction:g})"
        return f"round {rnd}: {len(per_site)} site(s) trained, fewer than {need} (failed: {who})"
    trains = [e for e in history if e["phase"] == protocol.Phase.TRAIN] + [
        {"round": rnd, "failed": failed}
    ]
    if trains[0]["round"] != 1 or (len(trains) < 2 and total_rounds > 1):
        return None
    for f in failed:
        if f.get("code") in SITE_ERRORS and all(f in e["failed"] for e in trains):
            return (
                f"site {f['site']} failed the same way in every round since round 1: {f['reason']}"
            )
    return None


@dataclass
class RoundLoop:
    """The pretraining rounds of one run, and what stays the same from round to round.

    ``job`` is the config every message carries; ``on_round`` gets each new global model.
    ``federation.transport`` float16 halves what travels (the global model stays float32);
    ``federation.dp_sgd.max_epsilon`` stops the run before a round that would take a site's
    DP-SGD epsilon past it.
    """

    grid: Grid
    strategy: Strategy
    federation: FederationSettings
    job: ConfigRecord
    run_dir: Path
    metrics: MetricsLog
    on_round: Callable[[int, dict[str, torch.Tensor]], None] | None = None

    def run(self, state: RoundState) -> RoundState:
        """Rounds ``state.round + 1 .. federation.rounds``; returns the final state. Raises
        ``RunStopped`` (after a ``stopped`` entry in the metrics) when ``stop_reason`` says so."""
        restore_strategy_state(self.strategy, state.strategy)
        privacy.restore(self.strategy, self.metrics.read())
        total = self.federation.rounds
        for rnd in range(state.round + 1, total + 1):
            started = time.perf_counter()
            stop = privacy.dp_sgd_stop(rnd, self.metrics.read(), self.federation.dp_sgd.max_epsilon)
            if stop is not None:
                self.metrics.write(stop)
                break
            log.info("round %d/%d: training", rnd, total)
            arrays = self.train(rnd, ArrayRecord(state.arrays), state.sites, started)
            if arrays is None:  # the privacy budget is spent
                break
            self.evaluate(rnd, arrays, state.sites)
            new = arrays.to_torch_state_dict()
            state = replace(state, round=rnd, arrays=new, strategy=strategy_state(self.strategy))
            state.save(checkpoint_path(self.run_dir, rnd))
            if self.on_round is not None:
                self.on_round(rnd, state.arrays)
            log.info("round %d/%d done in %.1f s", rnd, total, time.perf_counter() - started)
        return state

    def _exchange(self, messages: list[Message], sites: dict[int, str]):
        timeout = self.federation.round_timeout_s
        return exchange(self.grid, messages, timeout, sites, self.run_dir / runs.FAILURES)

    def train(
        self, rnd: int, arrays: ArrayRecord, sites: dict[int, str], started: float
    ) -> ArrayRecord | None:
        """One training round: the new global arrays, or None when the privacy budget stops
        the run before it starts."""
        sent = to_wire(arrays, self.federation.transport)
        try:
            messages = list(self.strategy.configure_train(rnd, sent, self.job.copy(), self.grid))
        except privacy.PrivacyBudgetExhausted as exc:
            self.metrics.write(privacy.stop_entry(rnd, self.strategy, exc))
            return None
        replies, per_site, failed = self._exchange(messages, sites)
        self._check(rnd, per_site, failed)
        new_arrays, agg = self.strategy.aggregate_train(rnd, replies)
        if new_arrays is not None:
            arrays = next_global(new_arrays, arrays)
        else:
            log.warning("round %d: nothing to aggregate; global model unchanged", rnd)
        self.metrics.write(
            {
                "round": rnd,
                "phase": protocol.Phase.TRAIN,
                "sites": per_site,
                "failed": failed,
                "aggregate": dict(agg) if agg else None,
                "privacy": privacy.spent(self.strategy),
                protocol.BYTES_DOWN: nbytes(sent),
                "seconds": round(time.perf_counter() - started, 2),
                **({"placement": where} if (where := placements(replies)) else {}),
            }
        )
        return arrays

    def _check(self, rnd: int, per_site: dict, failed: list[dict]) -> None:
        """Log new failures; stop the run (``RunStopped``) where ``stop_reason`` says so."""
        history = self.metrics.read()
        trained_before = [e for e in history if e["phase"] == protocol.Phase.TRAIN]
        _report_failures(rnd, failed, trained_before[-1]["failed"] if trained_before else [])
        fed = self.federation
        halt = stop_reason(
            rnd, per_site, failed, fed.min_sites or 1, history, fed.rounds, fed.fraction_train
        )
        if halt is not None:
            self.metrics.write(
                {"round": rnd, "phase": protocol.Phase.STOPPED, "failed": failed, "reason": halt}
            )
            log.error("the run stops: %s (full reasons: %s)", halt, self.run_dir / runs.FAILURES)
            raise RunStopped(halt)

    def evaluate(self, rnd: int, arrays: ArrayRecord, sites: dict[int, str]) -> None:
        """The new global model on every sampled site's validation split."""
        sent = to_wire(arrays, self.federation.transport)
        messages = list(self.strategy.configure_evaluate(rnd, sent, self.job.copy(), self.grid))
        if not messages:
            return
        replies, per_site, failed = self._exchange(messages, sites)
        agg = self.strategy.aggregate_evaluate(rnd, replies)
        self.metrics.write(
            {
                "round": rnd,
                "phase": protocol.Phase.EVALUATE,
                "sites": per_site,
                "failed": failed,
                "aggregate": dict(agg) if agg else None,
            }
        )
