"""A run's log from the SuperLink (``flwr log``), printed once or followed."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from common.flower_process import flower_env
from server import coordinator


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", type=int, help="run id (see ecgfl-coordinator status)")
    p.add_argument("--config", type=Path, default=Path("coordinator.yaml"))
    p.add_argument("--follow", action="store_true", help="stream until the run ends")


def run(args: argparse.Namespace) -> int:
    cfg = coordinator.CoordinatorConfig.load(args.config)
    mode = "--stream" if args.follow else "--show"
    command = ["flwr", "log", str(args.run_id), coordinator.CONNECTION, mode]
    return subprocess.call(command, env=flower_env(cfg.flwr_home))
