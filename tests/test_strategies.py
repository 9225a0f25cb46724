import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.app.message.message import make_message

from common.config import ConfigError, SettingError, from_dict
from common.experiment import FederationSettings
from server.rounds import MetricsLog, RoundState
from server.strategies import (
    MAX_SERVER_STEP,
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
    assert loaded.run_id == state.run_id != RoundState(0, {}).run_id  # what sites' files carry


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
    from server.rounds import next_global

    old = ArrayRecord({"w": torch.zeros(3), "bn.num_batches_tracked": torch.tensor(10)})
    averaged = ArrayRecord(
        {
            "w": torch.ones(3, dtype=torch.float64),
            "bn.num_batches_tracked": torch.tensor(11.6, dtype=torch.float64),
        }
    )
    out = next_global(averaged, old)
    assert out["w"].dtype == "float32"
    assert out["bn.num_batches_tracked"].dtype == "int64"
    assert out["bn.num_batches_tracked"].numpy() == 12


def test_a_server_step_past_the_average_keeps_batchnorm_variances_at_or_above_zero():
    from server.rounds import next_global

    bn = torch.nn.BatchNorm1d(3).eval()
    stepped = {k: v.double() for k, v in bn.state_dict().items()}  # as FedAvgM's momentum
    stepped["running_var"] = torch.tensor([-0.5, 0.2, 1.0], dtype=torch.float64)
    stepped["weight"] = torch.tensor([-1.0, 1.0, 2.0], dtype=torch.float64)  # not a variance
    out = next_global(ArrayRecord(stepped), ArrayRecord(bn.state_dict())).to_torch_state_dict()
    assert out["running_var"].tolist() == pytest.approx([0.0, 0.2, 1.0])
    assert out["weight"].tolist() == [-1.0, 1.0, 2.0]
    bn.load_state_dict(out)
    assert torch.isfinite(bn(torch.randn(4, 3))).all()


class ConnectedSites:
    """What a strategy asks of Flower's Grid when it samples: the ids of the connected nodes."""

    def __init__(self, n: int) -> None:
        self.nodes = list(range(1, n + 1))

    def get_node_ids(self) -> list[int]:
        return self.nodes


def test_a_sampled_round_of_1000_sites_sends_to_its_fraction_not_to_every_site(flower_runtime):
    """min_sites (every simulated site) must not turn fraction_train into 1."""
    settings = FederationSettings(min_sites=1000, fraction_train=0.1, fraction_evaluate=0.05)
    strategy = build_strategy(settings)
    grid = ConnectedSites(1000)
    train = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid))
    assert len({m.metadata.dst_node_id for m in train}) == len(train) == 100
    assert len(list(strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), grid))) == 50
    every = build_strategy(FederationSettings(min_sites=3))
    assert (
        len(list(every.configure_train(1, ArrayRecord(), ConfigRecord(), ConnectedSites(3)))) == 3
    )


def test_a_sampled_multikrum_keeps_n_minus_f_of_the_sites_a_round_asks():
    """Selecting min_sites - f of 100 replies would keep them all: plain averaging."""
    sampled = FederationSettings(
        strategy="multikrum", min_sites=1000, fraction_train=0.1, krum_malicious=10
    )
    assert build_strategy(sampled).num_nodes_to_select == 90
    every = FederationSettings(strategy="multikrum", min_sites=9, krum_malicious=2)
    assert build_strategy(every).num_nodes_to_select == 7


def test_the_final_fine_tuning_samples_the_same_sites_by_name_whatever_their_node_ids():
    from server.app import finetune_sample

    names = {1000 + i: f"tis-{i:04d}" for i in range(1000)}
    chosen = finetune_sample(names, list(names), 0.1, seed=0)
    assert len(set(chosen)) == 100
    renumbered = {7 * node: name for node, name in names.items()}  # another run's node ids
    again = finetune_sample(renumbered, list(renumbered)[::-1], 0.1, seed=0)
    assert sorted(names[n] for n in chosen) == sorted(renumbered[n] for n in again)
    assert finetune_sample(names, list(names), 1.0, seed=0) == list(names)
    assert len(finetune_sample(names, list(names)[:5], 0.1, seed=0)) == 1  # at least one


def test_fedexp_steps_past_the_average_when_updates_disagree_and_averages_bn_statistics(
    flower_runtime,
):
    strategy = build_strategy(FederationSettings(strategy="fedexp", min_sites=2))
    start = {"w": np.zeros(2, np.float32), "bn.running_var": np.ones(2, np.float32)}
    sent = list(
        strategy.configure_train(
            1,
            ArrayRecord({k: Array(v) for k, v in start.items()}),
            ConfigRecord({}),
            ConnectedSites(2),
        )
    )

    def reply(to: Message, w, var) -> Message:
        md = to.metadata
        meta = Metadata(1, f"r{md.dst_node_id}", md.dst_node_id, 0, "", md.group_id, 0.0,
                        600, md.message_type)  # fmt: skip
        arrays = {
            "w": Array(np.asarray(w, np.float32)),
            "bn.running_var": Array(np.asarray(var, np.float32)),
        }
        metrics = MetricRecord({"num-examples": 10})
        return make_message(meta, RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}))

    # Updates (1, 1) and (1, -1): mean (1, 0), |mean|^2 = 1, mean |d|^2 = 2 -> step max(1, 2/2) = 1
    arrays, metrics = strategy.aggregate_train(
        1, [reply(sent[0], [1, 1], [2, 2]), reply(sent[1], [1, -1], [4, 4])]
    )
    np.testing.assert_allclose(arrays["w"].numpy(), [1, 0])
    # Nearly opposite updates (3, 1) and (-1, 1): mean (1, 1), |mean|^2 2, mean |d|^2 6 -> 1.5
    arrays, metrics = strategy.aggregate_train(
        1, [reply(sent[0], [3, 1], [2, 2]), reply(sent[1], [-1, 1], [4, 4])]
    )
    np.testing.assert_allclose(arrays["w"].numpy(), [1.5, 1.5])
    assert metrics["server-step"] == 1.5
    np.testing.assert_allclose(arrays["bn.running_var"].numpy(), [3, 3])  # averaged only
    # Updates that nearly cancel ask for a step of 20,000: it stops at MAX_SERVER_STEP.
    arrays, metrics = strategy.aggregate_train(
        2, [reply(sent[0], [1, 0], [2, 2]), reply(sent[1], [-1, 0.01], [4, 4])]
    )
    assert metrics["server-step"] == MAX_SERVER_STEP == 4
    np.testing.assert_allclose(arrays["w"].numpy(), [0, 0.02], atol=1e-6)
    # The last round (federation.rounds, 3 by default) ends at the mean of its two iterates.
    arrays, metrics = strategy.aggregate_train(
        3, [reply(sent[0], [3, 1], [2, 2]), reply(sent[1], [-1, 1], [4, 4])]
    )
    np.testing.assert_allclose(arrays["w"].numpy(), [0.75, 0.75])
    # float16 transport: the round starts from float16 arrays, replies come back widened; the
    # new global model stays float32 (rounding happens on the wire only).
    half = ArrayRecord({k: Array(v.astype(np.float16)) for k, v in start.items()})
    sent = list(strategy.configure_train(1, half, ConfigRecord({}), ConnectedSites(2)))
    arrays, _ = strategy.aggregate_train(
        1, [reply(sent[0], [1, 1], [2, 2]), reply(sent[1], [1, -1], [4, 4])]
    )
    assert arrays["w"].dtype == "float32"
