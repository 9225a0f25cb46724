"""Are the coordinator's processes up, which hospitals are connected, and which runs exist."""

from __future__ import annotations

import argparse
from pathlib import Path

from server import coordinator, runs


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=Path("coordinator.yaml"))


def run(args: argparse.Namespace) -> int:
    cfg = coordinator.CoordinatorConfig.load(args.config)
    pid = coordinator.running_pid(cfg)
    if pid is None:
        print("coordinator: not running")
        return 1
    print(f"coordinator: running (pid {pid}); log {cfg.state / 'coordinator.log'}")
    down = 0
    for name, proc in coordinator.processes(cfg).items():
        up = coordinator.is_running(proc["pid"])
        down += not up
        state = "running" if up else "NOT RUNNING"
        print(f"{name}: {state} (pid {proc['pid']}) {proc['where']}; log {proc['log']}")
    nodes = coordinator.flwr_json(cfg, "supernode", "list", coordinator.CONNECTION)
    folders = runs.run_folders(cfg.state / "runs")
    print()
    print(hospitals_table(cfg, nodes.get("nodes", []), runs.last_seen(folders)))
    print()
    print(runs_table(folders, coordinator.flower_runs(cfg)))
    return 1 if down else 0


def hospitals_table(
    cfg: coordinator.CoordinatorConfig, nodes: list[dict], seen: dict[str, str]
) -> str:
    """One row per provisioned hospital, by name: connected or not, since when, its node id, and
    the last round it answered."""
    by_site = {site: node for node, site in coordinator.node_names(cfg).items()}
    info = {str(n.get("node-id")): n for n in nodes}
    rows = [
        "| hospital | status | online since | offline since | last answered | node id |",
        "|---|---|---|---|---|---|",
    ]
    for site in sorted(cfg.hospitals):
        node = by_site.get(site)
        n = info.get(str(node), {})
        status = n.get("status", "not registered" if node is None else "unknown")
        status = {"online": "connected", "offline": "not connected"}.get(status, status)
        rows.append(
            f"| {site} | {status} | {n.get('online-at') or '-'} | {n.get('offline-at') or '-'} | "
            f"{seen.get(site, '-')} | {node or '-'} |"
        )
    return "\n".join(rows)


def runs_table(folders: list[runs.RunFolder], flower_status: dict[int, str]) -> str:
    """One row per run folder: rounds done of planned, state, Flower run ids."""
    rows = ["| run | rounds | state | flower run ids |", "|---|---|---|---|"]
    for f in folders:
        ids = ", ".join(map(str, runs.flower_run_ids(f.path))) or "-"
        rows.append(
            f"| {f.name} | {f.done()}/{f.rounds or '?'} | {f.state(flower_status)} | {ids} |"
        )
    return "\n".join(rows if folders else [*rows, "| (no run yet) | | | |"])
