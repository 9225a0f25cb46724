"""Run the coordinator's Flower SuperLink (foreground, for a service manager, or --detach)."""

from __future__ import annotations

import argparse
from pathlib import Path

from server import coordinator


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="coordinator.yaml")
    p.add_argument("--detach", action="store_true", help="return once the SuperLink is up")
    p.add_argument(
        "--insecure", action="store_true", help="plaintext, no node authentication: tests only"
    )


def run(args: argparse.Namespace) -> int:
    cfg = coordinator.CoordinatorConfig.load(args.config)
    return coordinator.serve(cfg, args.insecure, args.detach)
