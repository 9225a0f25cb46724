"""Run this hospital's federation daemon: check data, prepare the cache, serve the coordinator."""

from __future__ import annotations

import argparse
from pathlib import Path

from client import daemon
from common.hospital import HospitalConfig


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="hospital.yaml")
    p.add_argument(
        "--skip-check", action="store_true", help="skip reading every record first (restarts)"
    )
    p.add_argument(
        "--detach", action="store_true", help="return once connected (the daemon keeps running)"
    )
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)  # set by --detach
    p.add_argument(
        "--insecure", action="store_true", help="plaintext, no node authentication: tests only"
    )


def run(args: argparse.Namespace) -> int:
    cfg = HospitalConfig.load(args.config)
    if args.detach:
        daemon.preflight(cfg, args.insecure)
        argv = ["start", "--config", str(args.config.resolve())]
        argv += ["--skip-check"] * args.skip_check + ["--insecure"] * args.insecure
        return daemon.detach(cfg, argv)
    return daemon.start(cfg, args.config, args.insecure, not args.skip_check, args.ready_fd)
