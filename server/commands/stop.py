"""Stop one run (``--run RUN_ID``), or the whole coordinator (front door, SuperExec, SuperLink)."""

from __future__ import annotations

import argparse
from pathlib import Path

from server import coordinator


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=Path("coordinator.yaml"))
    p.add_argument("--run", type=int, metavar="RUN_ID", help="stop only this run")


def run(args: argparse.Namespace) -> int:
    cfg = coordinator.CoordinatorConfig.load(args.config)
    if args.run is not None:
        code, out = coordinator.flwr(cfg, "stop", str(args.run), coordinator.CONNECTION)
        print(out)
        return code
    if not coordinator.stop_coordinator(cfg):
        print("coordinator was not running")
        return 1
    print("coordinator stopped (front door, SuperExec, SuperLink)")
    return 0
