"""Flower strategies by name, and the state a resumed run must give back to them.

Aggregation is Flower's own; this module only chooses and configures it. Flower keeps no
strategy state across restarts, so the adaptive optimisers' moments (FedAdam/FedYogi ``m_t``,
``v_t``) and FedAvgM's momentum are saved with each round's checkpoint and restored on resume.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    Strategy,
)

from common.config import ConfigError, SettingError
from common.experiment import FederationSettings
from server import privacy

_STATE_ATTRS = ("m_t", "v_t", "momentum_vector")


def weighted_mean_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Weighted mean of each metric over the sites that define it.

    Flower's default averages every key over every reply; a site without positives of some class
    has an undefined AUC (NaN), which must not turn the federation's mean into NaN.
    """
    sums: dict[str, np.ndarray] = {}
    weights: dict[str, np.ndarray] = {}
    for record in records:
        metrics = next(iter(record.metric_records.values()))
        w = float(metrics[weight_key])
        for key, value in metrics.items():
            if key == weight_key:
                continue
            v = np.atleast_1d(np.asarray(value, float))
            ok = np.isfinite(v)
            sums[key] = sums.get(key, 0) + np.where(ok, v * w, 0.0)
            weights[key] = weights.get(key, 0) + ok * w
    out = MetricRecord()
    for key, total in sums.items():
        mean = np.where(weights[key] > 0, total / np.maximum(weights[key], 1e-12), math.nan)
        out[key] = mean.tolist() if mean.size > 1 else float(mean[0])
    return out


def required_sites(min_sites: int, fraction: float) -> int:
    """How many sites a sampled round needs: ``fraction`` of ``min_sites``, rounded down as
    Flower's sampling rounds ``fraction`` of the connected sites, and at least one. Asking for
    ``min_sites`` itself would make Flower sample every site (its sample size is the larger of
    the two), so ``fraction_train: 0.1`` over 1,000 sites would train all 1,000."""
    return max(1, int(min_sites * fraction))


def build_strategy(s: FederationSettings) -> Strategy:
    if s.min_sites is None:
        raise ConfigError("federation.min_sites is not set: how many sites must take part?")
    common = {
        "fraction_train": s.fraction_train,
        "fraction_evaluate": s.fraction_evaluate,
        "min_train_nodes": required_sites(s.min_sites, s.fraction_train),
        "min_evaluate_nodes": (
            required_sites(s.min_sites, s.fraction_evaluate) if s.fraction_evaluate > 0 else 0
        ),
        "min_available_nodes": s.min_sites,
        "train_metrics_aggr_fn": weighted_mean_metrics,
        "evaluate_metrics_aggr_fn": weighted_mean_metrics,
    }
    try:
        check(s)
    except SettingError as exc:
        raise ConfigError(f"{exc.key}: {exc}") from exc
    return privacy.wrap(BUILDERS[s.strategy](s, common), s)


#: FedExP's largest server step. Its rule gives M/2 for M equal sites whose updates are
#: orthogonal (50 for 100 sampled sites), or more when updates cancel out: far past the region
#: the averaged update says anything about. The default scenario's steps were 1.6 to 2.0.
MAX_SERVER_STEP = 4.0


class FedExP(FedAvg):
    """FedAvg that steps past the average when the sites' updates disagree (FedExP:
    Jhunjhunwala, Wang and Joshi, ICLR 2023). The server step is
    max(1, sum p_i |d_i|^2 / (2 |sum p_i d_i|^2)), d_i a site's update and p_i its share of the
    examples: computed from each round's own updates, so there is no server rate to tune. Only
    trained weights step past the average; BatchNorm's running statistics and counters are
    averaged, as in FedAvg. Extrapolated iterates oscillate: the model after ``final_round`` is
    the mean of the last two, as the paper evaluates it."""

    def __init__(self, final_round: int, **common) -> None:
        super().__init__(**common)
        self.final_round = final_round
        self.current: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        self.current = arrays
        return list(super().configure_train(server_round, arrays, config, grid))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        average, metrics = super().aggregate_train(server_round, replies)
        if average is None or self.current is None:
            return average, metrics
        old = {k: a.numpy() for k, a in self.current.items() if k in average and _trained(k, a)}
        mean_update = {k: average[k].numpy() - v for k, v in old.items()}
        spread, total = 0.0, 0.0
        for reply in replies:
            if reply.has_error():
                continue
            arrays = next(iter(reply.content.array_records.values()))
            weight = float(next(iter(reply.content.metric_records.values()))[self.weighted_by_key])
            spread += weight * sum(
                float(np.sum((arrays[k].numpy() - v) ** 2)) for k, v in old.items()
            )
            total += weight
        agreement = sum(float(np.sum(d**2)) for d in mean_update.values())
        step = 1.0
        if total and agreement > 0:
            step = min(MAX_SERVER_STEP, max(1.0, spread / total / (2 * agreement)))
        if server_round >= self.final_round:  # the mean of this iterate and the one before
            step /= 2
        out = dict(average.items())
        for key, value in old.items():
            out[key] = Array(np.asarray(value + step * mean_update[key]))  # float32 as replies
        if metrics is not None:
            metrics["server-step"] = step
        return ArrayRecord(out), metrics


def _trained(key: str, array: Array) -> bool:
    """A weight the sites train, as opposed to BatchNorm's running statistics and counter."""
    return "float" in array.dtype and not key.endswith(
        ("running_mean", "running_var", "num_batches_tracked")
    )


def _multikrum(s: FederationSettings, common: dict) -> Strategy:
    """Average the n - f updates Krum trusts most (Blanchard et al. 2017); n is the sites a
    round asks (a sampled round's fraction): Flower keeps all updates when asked to select more
    than arrived, which would turn a sampled Multi-Krum into plain averaging."""
    return MultiKrum(
        **common,
        num_malicious_nodes=s.krum_malicious,
        num_nodes_to_select=max(1, common["min_train_nodes"] - s.krum_malicious),
    )


#: Every strategy by its name in ``federation.strategy``: the settings and Flower's common
#: arguments -> the configured Flower strategy.
BUILDERS: dict[str, Callable[[FederationSettings, dict], Strategy]] = {
    "fedavg": lambda s, common: FedAvg(**common),
    "fedprox": lambda s, common: FedProx(**common, proximal_mu=s.proximal_mu),
    "fedexp": lambda s, common: FedExP(s.rounds, **common),
    "fedadam": lambda s, common: FedAdam(**common, eta=s.server_lr),
    "fedyogi": lambda s, common: FedYogi(**common, eta=s.server_lr),
    "fedavgm": lambda s, common: FedAvgM(
        **common, server_learning_rate=s.server_lr, server_momentum=s.server_momentum
    ),
    "fedmedian": lambda s, common: FedMedian(**common),
    "fedtrimmedavg": lambda s, common: FedTrimmedAvg(**common, beta=s.trimmed_beta),
    "krum": lambda s, common: Krum(**common, num_malicious_nodes=s.krum_malicious),
    "multikrum": _multikrum,
}
STRATEGIES = tuple(BUILDERS)


def check(s: FederationSettings, key: str = "federation.strategy") -> None:
    """Refuse an unknown strategy where the experiment is loaded, before any data is prepared;
    ``key`` names the setting in that file."""
    if s.strategy not in BUILDERS:
        raise SettingError(key, f"{s.strategy!r}: expected one of {', '.join(STRATEGIES)}")


def strategy_state(strategy: Strategy) -> dict:
    """The optimiser state Flower keeps in memory only, as plain arrays."""
    state = {}
    for attr in _STATE_ATTRS:
        value = getattr(strategy, attr, None)
        if value is None:
            continue
        if isinstance(value, dict):
            state[attr] = {k: np.asarray(v) for k, v in value.items()}
        else:
            state[attr] = [np.asarray(v) for v in value]
    return state


def restore_strategy_state(strategy: Strategy, state: dict) -> None:
    for attr, value in state.items():
        setattr(strategy, attr, value)
