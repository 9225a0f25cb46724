"""Is the SuperLink up, which hospitals are connected, and which runs exist."""

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
        print("SuperLink: not running")
        return 1
    print(f"SuperLink: running (pid {pid}) on {cfg.host}:{cfg.port}; log {cfg.log_file}")
    for what in (("supernode", "list"), ("ls",)):
        code, out = coordinator.flwr(cfg, *what, coordinator.CONNECTION)
        print(out)
        if code != 0:
            return code
    return 0
