"""Central differential privacy for the pretraining rounds: Flower's fixed-clipping DP wrappers,
an RDP accountant for them, and the privacy part of the run's records (epsilon per round, the
budget stop).

Flower's ``RdpAccountant`` needs the optional ``dp-accounting`` package (``flwr[dp]``), which this
environment does not have; ``GaussianRdpAccountant`` implements the same protocol for the one case
ecgfl uses, every sampled site in every round (no amplification by sampling), in closed form.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path

from flwr.app import Message
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    PrivacySpent,
    SamplingMethod,
)

from common import protocol
from common.experiment import FederationSettings, PrivacySettings
from server import runs

log = logging.getLogger("ecgfl.server")
__all__ = ["PrivacyBudgetExhausted", "GaussianRdpAccountant", "wrap", "spent", "restore"]


def rdp_epsilon(k: float, delta: float) -> tuple[float, float]:
    """Epsilon at ``delta`` for a composition whose RDP curve is ``eps_RDP(alpha) = k * alpha``.

    The Gaussian mechanism with L2 sensitivity 1 and noise std ``sigma`` has RDP
    ``alpha / (2 sigma^2)`` at every order alpha > 1 (Mironov 2017, "Renyi Differential Privacy",
    Prop. 7); RDP adds up under composition, so T releases give ``k = sum T_i / (2 sigma_i^2)``.
    The conversion to (epsilon, delta)-DP (ibid. Prop. 3) is

        epsilon = min_{alpha > 1}  k * alpha + log(1/delta) / (alpha - 1),

    minimised here exactly: alpha* = 1 + sqrt(log(1/delta) / k), so
    epsilon = k + 2 sqrt(k log(1/delta)).
    Returns (epsilon, alpha*). Tighter conversions exist (Balle et al. 2020); this one is the
    classical, slightly conservative bound.
    """
    if k <= 0:
        return 0.0, math.inf
    log_inv_delta = math.log(1 / delta)
    return k + 2 * math.sqrt(k * log_inv_delta), 1 + math.sqrt(log_inv_delta / k)


def noise_for_epsilon(epsilon: float, releases: int, delta: float) -> float:
    """The noise multiplier that spends exactly ``epsilon`` over ``releases`` Gaussian releases.

    Inverts ``rdp_epsilon``: with s = sqrt(k), s^2 + 2 s sqrt(L) = epsilon, L = log(1/delta).
    """
    log_inv_delta = math.log(1 / delta)
    s = math.sqrt(log_inv_delta + epsilon) - math.sqrt(log_inv_delta)
    return math.sqrt(releases / (2 * s * s)) * (1 + 1e-9)  # rounding must not overshoot a budget


class GaussianRdpAccountant:
    """Flower's ``PrivacyAccountant`` protocol for unsampled Gaussian releases (q = 1).

    Usable as ``accountant=`` of Flower's fixed-clipping DP wrappers, which themselves accept only
    ``SamplingMethod.NO_AMPLIFICATION``: every round's update is one Gaussian release with the
    wrapper's noise multiplier, and sensitivity is one site's clipped update.
    """

    def __init__(self, config: PrivacyConfig) -> None:
        if config.sampling_method is not SamplingMethod.NO_AMPLIFICATION:
            raise ValueError("GaussianRdpAccountant accounts unsampled releases only")
        self._config = config
        self._releases: list[tuple[float, int]] = []  # (noise multiplier, count)

    @property
    def config(self) -> PrivacyConfig:
        return self._config

    @property
    def num_releases(self) -> int:
        return sum(count for _, count in self._releases)

    def _k(self, extra: Iterable[tuple[float, int]] = ()) -> float:
        return sum(count / (2 * sigma**2) for sigma, count in [*self._releases, *extra])

    def compose(self, event: GaussianPrivacyEvent, count: int = 1) -> None:
        self._releases.append((event.noise_multiplier, count))

    def get_epsilon(self, delta: float) -> float:
        return rdp_epsilon(self._k(), delta)[0]

    def get_delta(self, epsilon: float) -> float:
        """Smallest delta at ``epsilon``: the same bound solved for delta."""
        k = self._k()
        if k == 0:
            return 0.0
        if epsilon <= k:
            return 1.0
        return min(1.0, math.exp(-((epsilon - k) ** 2) / (4 * k)))

    def get_privacy_spent(self, delta: float | None = None) -> PrivacySpent:
        delta = self._config.target_delta if delta is None else delta
        epsilon, order = rdp_epsilon(self._k(), delta)
        return PrivacySpent(epsilon, delta, self.num_releases, "rdp-gaussian", order)

    def would_exceed(
        self, event: GaussianPrivacyEvent, max_epsilon: float | None = None, count: int = 1
    ) -> bool:
        limit = self._config.max_epsilon if max_epsilon is None else max_epsilon
        if limit is None:
            raise ValueError("no max_epsilon to compare with")
        k = self._k([(event.noise_multiplier, count)])
        return rdp_epsilon(k, self._config.target_delta)[0] > limit

    def state_dict(self) -> dict[str, object]:
        return {"releases": [list(r) for r in self._releases]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self._releases = [(float(s), int(c)) for s, c in state["releases"]]  # type: ignore[union-attr]


class UniformWeights:
    """Every site's clipped update weighs the same in a private round.

    The noise std sigma * C / n is calibrated to an unweighted mean, where one site moves the
    result by at most C / n; weighting by examples would let a large site move it by more. Flower's
    accounted wrapper refuses unequal weights; this sets each train reply's weight to 1 before
    aggregation (the per-site metrics, with the real example counts, are recorded before).
    """

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        key = self.strategy.weighted_by_key  # type: ignore[attr-defined]
        for reply in replies:
            if not reply.has_error():
                for record in reply.content.metric_records.values():
                    record[key] = 1
        return super().aggregate_train(server_round, replies)  # type: ignore[misc]


class ClientSideClippingDP(UniformWeights, DifferentialPrivacyClientSideFixedClipping):
    """Sites clip their own update (``fixedclipping_mod`` in the ClientApp); the coordinator adds
    noise. The clipping norm travels in the train config."""


class ServerSideClippingDP(UniformWeights, DifferentialPrivacyServerSideFixedClipping):
    """The coordinator clips each site's update and adds noise: a site need not be trusted to
    clip, but the coordinator sees the unclipped updates."""


def noise_multiplier(settings: PrivacySettings, rounds: int) -> float:
    if settings.target_epsilon is not None:
        return noise_for_epsilon(settings.target_epsilon, rounds, settings.delta)
    return settings.noise_multiplier


def wrap(strategy: Strategy, fed: FederationSettings) -> Strategy:
    """``strategy`` with central DP when ``fed.privacy`` asks for it (unchanged otherwise)."""
    p = fed.privacy
    if not p.enabled:
        return strategy
    sites = int(fed.min_sites or 0)
    accountant = GaussianRdpAccountant(
        PrivacyConfig(
            target_delta=p.delta,
            population_size=sites,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=p.max_epsilon,
        )
    )
    cls = ClientSideClippingDP if p.clipping == "client" else ServerSideClippingDP
    sigma = noise_multiplier(p, fed.rounds)
    log.info(
        "central DP: %s-side clipping at %g, noise multiplier %.3f, %d sites, delta %g, budget %s",
        p.clipping,
        p.clipping_norm,
        sigma,
        sites,
        p.delta,
        p.max_epsilon,
    )
    return cls(strategy, sigma, p.clipping_norm, sites, accountant=accountant)


def _accountant(strategy: Strategy) -> GaussianRdpAccountant | None:
    return getattr(strategy, "accountant", None)


def spent(strategy: Strategy) -> dict | None:
    """The privacy spent so far, for metrics.jsonl; None without DP."""
    accountant = _accountant(strategy)
    if accountant is None:
        return None
    s = accountant.get_privacy_spent()
    return {
        "epsilon": round(s.epsilon, 4),
        "delta": s.delta,
        "releases": s.num_releases,
        "noise-multiplier": strategy.noise_multiplier,  # type: ignore[attr-defined]
        "clipping-norm": strategy.clipping_norm,  # type: ignore[attr-defined]
        "max-epsilon": accountant.config.max_epsilon,
    }


def restore(strategy: Strategy, entries: list[dict]) -> None:
    """A resumed run continues the account: the releases recorded in the kept train entries."""
    accountant = _accountant(strategy)
    recorded = [
        e["privacy"] for e in entries if e["phase"] == protocol.Phase.TRAIN and e.get("privacy")
    ]
    if accountant is None or not recorded:
        return
    last = recorded[-1]
    accountant.load_state_dict({"releases": [[last["noise-multiplier"], last["releases"]]]})


def stop_entry(rnd: int, strategy: Strategy, reason: PrivacyBudgetExhausted) -> dict:
    """The metrics.jsonl line of a run that refused to start round ``rnd``."""
    entry = {"round": rnd, "phase": protocol.Phase.PRIVACY_STOP, "reason": str(reason)}
    entry["privacy"] = spent(strategy)
    log.warning(
        "privacy budget: round %d not started, it would take epsilon past %s (spent %.3f); "
        "going on to fine-tuning with the model of round %d",
        rnd,
        entry["privacy"]["max-epsilon"],
        entry["privacy"]["epsilon"],
        rnd - 1,
    )
    return entry


def dp_sgd_stop(rnd: int, entries: list[dict], budget: float | None) -> dict | None:
    """The metrics.jsonl line refusing round ``rnd`` when, by the sites' own DP-SGD ledgers
    (reported as ``dp-epsilon-next`` with the last round), it would take a site past ``budget``.

    Each site also refuses on its own (``client.task``); this stops the run cleanly instead of
    sending a round every site would refuse.
    """
    trained = [e for e in entries if e["phase"] == protocol.Phase.TRAIN and e["round"] < rnd]
    if budget is None or not trained:
        return None
    projected = {
        site: m[protocol.DP_EPSILON_NEXT]
        for site, m in trained[-1]["sites"].items()
        if protocol.DP_EPSILON_NEXT in m
    }
    over = {site: eps for site, eps in projected.items() if eps > budget}
    if not over:
        return None
    site, eps = max(over.items(), key=lambda item: item[1])
    reason = (
        f"round {rnd} would take the DP-SGD epsilon of {len(over)} site(s) past the per-site "
        f"budget {budget} (most: {site}, to {eps:.3f})"
    )
    log.warning(
        "privacy budget: %s; going on to fine-tuning with the model of round %d", reason, rnd - 1
    )
    return {"round": rnd, "phase": protocol.Phase.PRIVACY_STOP, "reason": reason}


def dp_sgd_lines(entries: list[dict]) -> list[str]:
    """The DP-SGD part of report.md: the range of the sites' epsilon after each round."""
    rows = []
    for e in (e for e in entries if e["phase"] == protocol.Phase.TRAIN):
        dp_sites = [m for m in e["sites"].values() if protocol.DP_EPSILON in m]
        spent = [m[protocol.DP_EPSILON] for m in dp_sites]
        sigma = [m[protocol.DP_NOISE_MULTIPLIER] for m in dp_sites]
        if spent:
            rows.append(
                f"| {e['round']} | {min(spent):.3f} - {max(spent):.3f} | "
                f"{min(sigma):.3g} - {max(sigma):.3g} |"
            )
    if not rows:
        return []
    return [
        "",
        "## Differential privacy (per ECG record, DP-SGD at each site)",
        "",
        "| round | sites' epsilon (min - max) | noise multiplier (min - max) |",
        "|---|---|---|",
        *rows,
    ]


def report_lines(entries: list[dict]) -> list[str]:
    """The privacy sections of report.md: epsilon after each round and any budget stop."""
    rows = [e for e in entries if e["phase"] == protocol.Phase.TRAIN and e.get("privacy")]
    stops = [e for e in entries if e["phase"] == protocol.Phase.PRIVACY_STOP]
    lines = dp_sgd_lines(entries)
    if not rows:
        return lines + [f"\n**Stopped before round {e['round']}**: {e['reason']}" for e in stops]
    p = rows[-1]["privacy"]
    lines += [
        "",
        "## Differential privacy (per site, central, update level)",
        "",
        f"Noise multiplier {p['noise-multiplier']:.4g}, clipping norm {p['clipping-norm']}, "
        f"delta {p['delta']}, budget {p['max-epsilon'] if p['max-epsilon'] else 'none'}.",
        "",
        "| round | releases | epsilon |",
        "|---|---|---|",
    ]
    lines += [
        f"| {e['round']} | {e['privacy']['releases']} | {e['privacy']['epsilon']:.3f} |"
        for e in rows
    ]
    for e in stops:
        lines += ["", f"**Stopped before round {e['round']}**: {e['reason']}"]
    return lines


def append_to_report(run_dir: Path, entries: list[dict]) -> None:
    lines = report_lines(entries)
    if lines:
        with open(run_dir / runs.REPORT, "a") as fh:
            fh.write("\n".join(lines) + "\n")
