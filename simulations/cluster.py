"""Running a simulation's sites on an existing Ray cluster (``ray_address``).

Flower's Simulation Engine is Ray: ``ray start --head`` on one host, ``ray start
--address=HEAD:6379`` on the others, then ``ecgfl-simulate run`` with ``ray_address``
(README: the main job). Every node reads the same prepared site caches and writes into the same
run folder, so these must be on a path all nodes share; a run refuses to start, naming the
nodes and the path, when one cannot see them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from common.errors import ConfigError


def _missing(paths: list[str]) -> list[str]:
    return [p for p in paths if not Path(p).exists()]


def require_shared(address: str, paths: list[Path]) -> None:
    """Refuse unless every alive node of the cluster at ``address`` sees every one of ``paths``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"ray_address {address}: no Ray cluster answers there ({exc})") from None
    try:
        check = ray.remote(num_cpus=0)(_missing)
        asked = {
            f"{node['NodeManagerAddress']} ({node['NodeID'][:8]})": check.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ).remote([str(p) for p in paths])
            for node in ray.nodes()
            if node["Alive"]
        }
        lacking = {node: ray.get(ref, timeout=120) for node, ref in asked.items()}
    except ray.exceptions.GetTimeoutError:
        raise ConfigError(f"ray_address {address}: a node did not answer within 120 s") from None
    finally:
        ray.shutdown()
    blind = {node: missing for node, missing in lacking.items() if missing}
    if blind:
        node, missing = next(iter(blind.items()))
        raise ConfigError(
            f"ray_address {address}: node {node} cannot see {missing[0]}"
            + (f" (and {len(blind) - 1} other node(s))" if len(blind) > 1 else "")
            + ": the run folder and the site caches must be on a path every node shares"
        )
