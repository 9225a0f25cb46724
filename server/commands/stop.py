"""Stop one run (``--run RUN``), or the whole coordinator (front door, SuperExec, SuperLink)."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.config import ConfigError
from server import coordinator, runs


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=Path("coordinator.yaml"))
    p.add_argument("--run", metavar="RUN", help="stop only this run (folder name or Flower run id)")


def run(args: argparse.Namespace) -> int:
    cfg = coordinator.CoordinatorConfig.load(args.config)
    if args.run is not None:
        folder = runs.find_run(cfg.state / "runs", args.run)
        ids = runs.flower_run_ids(folder.path)
        if not ids:
            raise ConfigError(f"run {folder.name} has not started under Flower")
        coordinator.flwr_json(cfg, "stop", str(ids[-1]), coordinator.CONNECTION)
        print(f"stopped run {folder.name} (Flower run {ids[-1]}); continue it with --resume")
        return 0
    if not coordinator.stop_coordinator(cfg):
        print("coordinator was not running")
        return 1
    print("coordinator stopped (front door, SuperExec, SuperLink)")
    return 0
