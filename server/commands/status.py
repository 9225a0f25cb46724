"""Are the coordinator's processes up, which hospitals are connected, and which runs exist."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from server import coordinator


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
    code, out = coordinator.flwr(
        cfg, "supernode", "list", coordinator.CONNECTION, "--format", "json"
    )
    if code != 0:
        print(out)
        return code
    print(hospitals_table(cfg, json.loads(out).get("nodes", [])))
    code, out = coordinator.flwr(cfg, "ls", coordinator.CONNECTION)
    print(out)
    return code or (1 if down else 0)


def hospitals_table(cfg: coordinator.CoordinatorConfig, nodes: list[dict]) -> str:
    """One row per provisioned hospital, by name: its node, connected or not, since when."""
    by_site = {site: node for node, site in coordinator.node_names(cfg).items()}
    info = {str(n.get("node-id")): n for n in nodes}
    rows = [
        "| hospital | node id | status | online since | offline since |",
        "|---|---|---|---|---|",
    ]
    for site in sorted(cfg.hospitals):
        node = by_site.get(site)
        n = info.get(str(node), {})
        status = n.get("status", "not registered" if node is None else "unknown")
        rows.append(
            f"| {site} | {node or '-'} | {status} | {n.get('online-at') or '-'} | "
            f"{n.get('offline-at') or '-'} |"
        )
    return "\n".join(rows)
