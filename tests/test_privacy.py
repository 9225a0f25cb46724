"""Central DP: the RDP accountant, Flower's wrapper with it, and the budget stop in a run."""

import math
import time
from dataclasses import replace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.supercore.privacy_accounting import GaussianPrivacyEvent
from test_simulation import entries, tiny_config

from common.config import ConfigError, from_dict
from common.experiment import ExperimentConfig, FederationSettings, PrivacySettings
from server import privacy
from server.strategies import build_strategy
from simulations import run as sim


def test_epsilon_is_the_minimum_over_rdp_orders():
    """eps = min_alpha T alpha / (2 sigma^2) + log(1/delta) / (alpha - 1), on a fine grid."""
    alphas = np.linspace(1.0001, 2000, 2_000_000)
    for sigma, rounds, delta in [(1.0, 1, 1e-5), (2.5, 10, 1e-5), (0.8, 50, 1e-6)]:
        grid = np.min(rounds * alphas / (2 * sigma**2) + math.log(1 / delta) / (alphas - 1))
        k = rounds / (2 * sigma**2)
        assert privacy.rdp_epsilon(k, delta)[0] == pytest.approx(grid, rel=1e-6)


def test_noise_for_epsilon_spends_exactly_the_target_over_the_rounds():
    for target in (1.0, 3.0, 8.0):
        sigma = privacy.noise_for_epsilon(target, 5, 1e-5)
        assert privacy.rdp_epsilon(5 / (2 * sigma**2), 1e-5)[0] == pytest.approx(target)
    assert privacy.noise_for_epsilon(1.0, 5, 1e-5) > privacy.noise_for_epsilon(8.0, 5, 1e-5)


def _private(**overrides) -> FederationSettings:
    p = {"noise_multiplier": 1.0, "clipping_norm": 0.5, "clipping": "server", **overrides}
    return from_dict(
        FederationSettings,
        {"strategy": "fedavg", "rounds": 3, "min_sites": 2, "privacy": p},
        "test",
    )


def test_accountant_composes_releases_and_foresees_the_budget():
    strategy = build_strategy(_private(max_epsilon=8.5))
    accountant = strategy.accountant
    event = GaussianPrivacyEvent(noise_multiplier=1.0, sample_size=2, population_size=2)
    for _ in range(2):
        assert not accountant.would_exceed(event)
        accountant.compose(event)
    assert accountant.get_epsilon(1e-5) == pytest.approx(1 + 2 * math.sqrt(math.log(1e5)))
    assert accountant.would_exceed(event)  # a third round would spend 9.81 > 8.5
    eps = accountant.get_epsilon(1e-5)
    assert accountant.get_delta(eps) == pytest.approx(1e-5, rel=1e-6)


class FakeGrid:
    def get_node_ids(self):
        return [11, 12]


def _reply(to: Message, weights: np.ndarray, examples: int) -> Message:
    md = to.metadata
    meta = Metadata(1, f"r{md.dst_node_id}", md.dst_node_id, 0, "", md.group_id, time.time(),
                    600, md.message_type)  # fmt: skip
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(weights.astype(np.float32))}),
            "metrics": MetricRecord({"num-examples": examples, "train-loss": 0.1}),
        }
    )
    return make_message(meta, content)


def test_server_side_dp_clips_each_update_weighs_sites_equally_and_adds_calibrated_noise(
    flower_runtime,
):
    strategy = build_strategy(_private(noise_multiplier=1e-6))
    start = ArrayRecord({"w": Array(np.zeros(4, np.float32))})
    sent = list(strategy.configure_train(1, start, ConfigRecord({}), FakeGrid()))
    assert len(sent) == 2
    big = np.array([30.0, 40.0, 0, 0])  # norm 50, clipped to 0.5: [0.3, 0.4, 0, 0]
    small = np.array([0, 0, 0.1, 0])
    arrays, _ = strategy.aggregate_train(1, [_reply(sent[0], big, 900), _reply(sent[1], small, 10)])
    expected = (np.array([0.3, 0.4, 0, 0]) + small) / 2  # unweighted, despite 900 vs 10 examples
    np.testing.assert_allclose(arrays["w"].numpy(), expected, atol=1e-4)
    assert privacy.spent(strategy)["releases"] == 1


def test_privacy_needs_an_unweighted_fedavg_and_no_batchnorm():
    with pytest.raises(ConfigError, match="fedavg or fedprox"):
        from_dict(
            FederationSettings,
            {"strategy": "krum", "privacy": {"noise_multiplier": 1.0}},
            "test",
        )
    with pytest.raises(ConfigError, match="norm: group"):
        from_dict(ExperimentConfig, {"federation": {"privacy": {"noise_multiplier": 1.0}}}, "test")
    with pytest.raises(ConfigError, match="max_epsilon"):
        from_dict(PrivacySettings, {"max_epsilon": 3.0}, "test")


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    """Three rounds planned at sigma 1; the budget 8.5 allows two (eps 7.79, then 9.81)."""
    cfg = tiny_config()
    cfg.experiment.model = replace(cfg.experiment.model, norm="group")
    cfg.experiment.federation.privacy = from_dict(
        PrivacySettings,
        {"noise_multiplier": 1.0, "clipping_norm": 1.0, "max_epsilon": 8.5, "clipping": "client"},
        "test",
    )
    cfg.baselines.local_only = cfg.baselines.centralized = False
    run_dir = tmp_path_factory.mktemp("dp") / "run"
    sim.run(cfg, run_dir, progress=False)
    return run_dir


@pytest.mark.e2e
def test_epsilon_is_recorded_each_round_and_the_run_stops_before_the_budget(budget_run):
    log = entries(budget_run)
    trained = [e for e in log if e["phase"] == "train"]
    assert [e["round"] for e in trained] == [1, 2]
    assert all(e["failed"] == [] for e in trained)  # every site clipped and passed the guard
    eps = [e["privacy"]["epsilon"] for e in trained]
    assert eps == pytest.approx([privacy.rdp_epsilon(r / 2, 1e-5)[0] for r in (1, 2)], abs=1e-3)
    (stop,) = [e for e in log if e["phase"] == "privacy-stop"]
    assert stop["round"] == 3 and stop["privacy"]["epsilon"] == eps[-1] < 8.5
    (ft,) = [e for e in log if e["phase"] == "finetune"]
    assert len(ft["sites"]) == 3  # fine-tuning still runs, from round 2's model
    report = (budget_run / "report.md").read_text()
    assert "Stopped before round 3" in report and f"{eps[-1]:.3f}" in report


def test_a_resumed_run_continues_the_account_from_metrics():
    strategy = build_strategy(_private())
    spent = {"epsilon": 7.79, "delta": 1e-5, "releases": 2, "noise-multiplier": 1.0}
    log = [
        {"round": 1, "phase": "train", "privacy": dict(spent, releases=1)},
        {"round": 2, "phase": "train", "privacy": spent},
        {"round": 2, "phase": "evaluate"},
    ]
    privacy.restore(strategy, log)
    assert strategy.accountant.num_releases == 2
    assert strategy.accountant.get_epsilon(1e-5) == pytest.approx(privacy.rdp_epsilon(1.0, 1e-5)[0])
