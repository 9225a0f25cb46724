"""A run's progress by site and round, how it ended and where its report is; or Flower's own
log of the run (``--flower``)."""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

from common.config import ConfigError
from common.flower_process import flower_env
from server import coordinator, runs

STATE_EVERY_S = 30.0  # --follow: how often to ask the SuperLink whether the run still runs


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run", help="run folder name or path, or Flower run id (ecgfl-coordinator status)"
    )
    p.add_argument("--config", type=Path, default=Path("coordinator.yaml"))
    p.add_argument("--follow", action="store_true", help="keep printing until the run ends")
    p.add_argument("--flower", action="store_true", help="Flower's log of the run (ServerApp)")


def run(args: argparse.Namespace) -> int:
    cfg = coordinator.CoordinatorConfig.load(args.config)
    folder = runs.find_run(cfg.state / "runs", args.run)
    if args.flower:
        ids = runs.flower_run_ids(folder.path)
        if not ids:
            raise ConfigError(f"run {folder.name} has not started under Flower yet")
        mode = "--stream" if args.follow else "--show"
        command = ["flwr", "log", str(ids[-1]), coordinator.CONNECTION, mode]
        return subprocess.call(command, cwd=cfg.flwr_home, env=flower_env(cfg.flwr_home))
    printed, asked = 0, time.monotonic()
    while True:
        ended = (folder.path / runs.SUMMARY).exists()  # before reading: no line is missed
        lines = folder.progress()
        for line in lines[printed:]:
            print(line, flush=True)
        printed = len(lines)
        if ended or not args.follow:
            break
        time.sleep(2)
        if time.monotonic() - asked > STATE_EVERY_S:  # each question starts the flwr CLI
            asked = time.monotonic()
            state = folder.state(coordinator.flower_runs(cfg))
            if state.startswith("interrupted"):
                print(f"the run is {state}")
                break
    for line in folder.ending():
        print(line)
    return 0
