import math

import numpy as np
import pytest
import torch
from flwr.app import MetricRecord, RecordDict

from common.config import ConfigError, SettingError, from_dict
from common.experiment import FederationSettings
from server.rounds import MetricsLog, RoundState
from server.strategies import (
    STRATEGIES,
    build_strategy,
    check,
    restore_strategy_state,
    strategy_state,
    weighted_mean_metrics,
)
from simulations.config import CONFIG_DIR, SimulationConfig


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_builds_from_its_name(name):
    settings = FederationSettings(strategy=name, min_sites=3, proximal_mu=0.1)
    strategy = build_strategy(settings)
    assert type(strategy).__name__.lower() == name


def test_unknown_strategy_and_fedprox_without_mu_are_config_errors():
    """The names come from the registry of builders; the ServerApp refuses an unknown one too."""
    unknown = from_dict(FederationSettings, {"strategy": "fedsgd", "min_sites": 2}, "exp.yaml")
    with pytest.raises(SettingError, match="'fedsgd': expected one of fedavg, fedprox") as err:
        check(unknown)
    assert err.value.key == "federation.strategy"
    with pytest.raises(ConfigError, match="federation.strategy: 'fedsgd'"):
        build_strategy(unknown)
    with pytest.raises(ConfigError, match="proximal_mu > 0"):
        from_dict(FederationSettings, {"strategy": "fedprox"}, "exp.yaml")


def test_weighted_mean_skips_sites_where_a_metric_is_undefined():
    replies = [
        RecordDict({"m": MetricRecord({"num-examples": 30, "auc": 0.9, "pos": [1.0, 2.0]})}),
        RecordDict({"m": MetricRecord({"num-examples": 10, "auc": math.nan, "pos": [3.0, 4.0]})}),
    ]
    out = weighted_mean_metrics(replies, "num-examples")
    assert out["auc"] == pytest.approx(0.9)
    assert out["pos"] == pytest.approx([1.5, 2.5])


def test_adaptive_optimiser_state_survives_a_checkpoint(tmp_path):
    strategy = build_strategy(FederationSettings(strategy="fedadam", min_sites=2))
    strategy.m_t = {"w": np.arange(4.0)}
    strategy.v_t = {"w": np.ones(4) * 0.5}
    state = RoundState(3, {"w": torch.zeros(4)}, strategy_state(strategy), {7: "H1"})
    state.save(tmp_path / "round-0003.pt")
    loaded = RoundState.load(tmp_path / "round-0003.pt")
    fresh = build_strategy(FederationSettings(strategy="fedadam", min_sites=2))
    restore_strategy_state(fresh, loaded.strategy)
    np.testing.assert_array_equal(fresh.m_t["w"], np.arange(4.0))
    np.testing.assert_array_equal(fresh.v_t["w"], np.ones(4) * 0.5)
    assert loaded.round == 3 and loaded.sites == {7: "H1"}


def test_resumed_metrics_log_forgets_rounds_it_will_redo(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for rnd in (1, 2, 3):
        log.write({"round": rnd, "phase": "train"})
    log.write({"round": 3, "phase": "finetune"})
    log.truncate_after(2)
    assert [(e["round"], e["phase"]) for e in log.read()] == [(1, "train"), (2, "train")]


@pytest.mark.parametrize(
    "name", ["default", "label_skew", "fedprox", "fedadam", "ptbxl_natural", "quantity_skew"]
)
def test_ready_scenarios_load(name):
    cfg = SimulationConfig.load(CONFIG_DIR / f"{name}.yaml")
    assert cfg.experiment.federation.rounds >= 1


def test_scenario_base_overrides_only_what_it_names():
    cfg = SimulationConfig.load(CONFIG_DIR / "fedprox.yaml")
    assert cfg.experiment.federation.strategy == "fedprox"
    assert cfg.partition.scheme == "dirichlet"  # from label_skew.yaml
    assert cfg.data.tis.n_hospitals == 6  # from default.yaml


def test_aggregated_arrays_keep_the_models_dtypes():
    from flwr.app import ArrayRecord

    from server.rounds import same_dtypes

    old = ArrayRecord({"w": torch.zeros(3), "bn.num_batches_tracked": torch.tensor(10)})
    averaged = ArrayRecord(
        {
            "w": torch.ones(3, dtype=torch.float64),
            "bn.num_batches_tracked": torch.tensor(11.6, dtype=torch.float64),
        }
    )
    out = same_dtypes(averaged, old)
    assert out["w"].dtype == "float32"
    assert out["bn.num_batches_tracked"].dtype == "int64"
    assert out["bn.num_batches_tracked"].numpy() == 12
