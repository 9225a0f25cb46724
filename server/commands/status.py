"""Are the coordinator's processes up, which hospitals are connected, and which runs exist."""

from __future__ import annotations

import argparse
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
    for what in (("supernode", "list"), ("ls",)):
        code, out = coordinator.flwr(cfg, *what, coordinator.CONNECTION)
        print(out)
        if code != 0:
            return code
    return 1 if down else 0
