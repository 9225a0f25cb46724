"""A simulation on an existing Ray cluster: two nodes on loopback (Ray's own multi-node test
cluster: one head and one more raylet, each with its own node id and one CPU)."""

import pytest
from test_simulation import tiny_config

from common.errors import ConfigError
from server import runs
from simulations import cluster
from simulations import run as sim

ray_cluster_utils = pytest.importorskip("ray.cluster_utils")
NODE = {"num_cpus": 1, "object_store_memory": 80 * 2**20}


@pytest.fixture(scope="module")
def two_nodes():
    ray_cluster = ray_cluster_utils.Cluster(
        initialize_head=True, head_node_args={**NODE, "include_dashboard": False}
    )
    try:
        ray_cluster.add_node(**NODE)
        ray_cluster.wait_for_nodes()
        yield ray_cluster
    finally:
        ray_cluster.shutdown()


def _node_ids(address: str) -> set[str]:
    import ray

    ray.init(address=address, log_to_driver=False)
    try:
        return {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    finally:
        ray.shutdown()


@pytest.mark.e2e
def test_sites_run_on_both_nodes_of_an_existing_cluster(two_nodes, tmp_path):
    cfg = tiny_config(rounds=2)
    cfg.baselines.local_only = cfg.baselines.centralized = False
    cfg.partition.scheme, cfg.partition.tis_sites, cfg.partition.ptbxl_sites = "iid", 2, 2
    cfg.ray_address = two_nodes.address
    sim.run(cfg, tmp_path / "run", progress=False)
    trains = [e for e in runs.entries(tmp_path / "run") if e["phase"] == "train"]
    assert len(trains) == 2 and len(trains[0]["sites"]) == 4
    for entry in trains:  # every site that trained says where
        assert set(entry["placement"]) == set(entry["sites"])
    used = {where["ray-node"] for entry in trains for where in entry["placement"].values()}
    assert used == _node_ids(two_nodes.address)  # both nodes, and only the cluster's
    assert all(w["gpus"] == "" for e in trains for w in e["placement"].values())  # CPU only


@pytest.mark.e2e
def test_a_path_some_node_cannot_see_is_refused_by_name(two_nodes, tmp_path):
    with pytest.raises(
        ConfigError, match="cannot see .*/not-shared \\(and 1 other node\\(s\\)\\): the run folder"
    ):
        cluster.require_shared(two_nodes.address, [tmp_path, tmp_path / "not-shared"])


@pytest.mark.e2e
def test_a_run_not_given_the_cluster_keeps_to_a_ray_of_its_own(two_nodes, tmp_path):
    """Ray would attach to the machine's latest cluster by itself (/tmp/ray): not ours."""
    cfg = tiny_config(rounds=1, fraction_evaluate=0.0)
    cfg.baselines.local_only = cfg.baselines.centralized = False
    sim.run(cfg, tmp_path / "run", progress=False)
    (train,) = [e for e in runs.entries(tmp_path / "run") if e["phase"] == "train"]
    used = {where["ray-node"] for where in train["placement"].values()}
    assert used and not used & _node_ids(two_nodes.address)
