"""Stop this hospital's running daemon (and its SuperNode and tasks)."""

from __future__ import annotations

import argparse
from pathlib import Path

from client import daemon
from common.hospital import HospitalConfig


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="hospital.yaml")


def run(args: argparse.Namespace) -> int:
    cfg = HospitalConfig.load(args.config)
    if daemon.stop(cfg):
        print(f"stopped the daemon of site {cfg.site}")
    else:
        print(f"no daemon runs for site {cfg.site}")
    return 0
