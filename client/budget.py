"""A site's DP-SGD accounting: the run's privacy ledger and the hospital's own lifetime budget.

The run's budget comes from the coordinator; a hospital's own (``policy.dp_max_epsilon``) is held
on one ledger for the site's whole lifetime at delta ``SITE_DELTA``, so neither a new run name nor
a looser delta in a run resets or stretches it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context

from client.node import site_policy
from common import dpsgd, protocol
from common.protocol import Job

SITE_DELTA = 1e-5  # the delta at which a hospital's own budget is held
SITE_LEDGER_DIR = "privacy"  # under the hospital's output folder: its lifetime DP-SGD ledger


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


def dp_limits(job: Job, run_ledger: dpsgd.Ledger, site: SiteBudget | None) -> list[tuple]:
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


def refuse_past_budget(site: str, planned: dpsgd.Steps, ledgers: list[tuple]) -> None:
    """Refuse (``SiteBudgetExhausted``) a round that would take a ledger past its limit."""
    for spent, limit, delta in ledgers:
        after = dpsgd.epsilon([*spent.read(), planned], delta)
        if after > limit:
            raise dpsgd.SiteBudgetExhausted(
                f"site {site}: this round would take its DP-SGD epsilon to {after:.3f}, "
                f"past its budget of {limit} (delta {delta}); it does not train"
            )


def dp_metrics(ledger: dpsgd.Ledger, steps: dpsgd.Steps, delta: float) -> dict:
    """What the run's ledger has spent, and what one more round like this one would bring it
    to: the coordinator stops before a round past the budget."""
    spent = ledger.read()
    return {
        protocol.DP_EPSILON: dpsgd.epsilon(spent, delta),
        protocol.DP_EPSILON_NEXT: dpsgd.epsilon([*spent, steps], delta),
        protocol.DP_NOISE_MULTIPLIER: steps.noise_multiplier,
    }
