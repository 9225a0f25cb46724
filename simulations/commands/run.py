"""``ecgfl-simulate run``: the full simulation (the README's main job with no arguments)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common.config import ConfigError
from simulations.config import SimulationConfig
from simulations.run import run as run_simulation


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="simulation YAML (default: configs/default.yaml)")
    p.add_argument("--ptbxl", type=Path, help="a real PTB-XL download instead of PTB-XL-like data")
    p.add_argument("--out", type=Path, help="run directory (default runs/<name>-<time>)")
    p.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a stopped run from its last complete round",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    if args.resume:
        if not (args.resume / "config.yaml").is_file():
            raise ConfigError(f"{args.resume}: not a simulation run directory (no config.yaml)")
        cfg = SimulationConfig.load(args.resume / "config.yaml", args.ptbxl)
        run_dir = args.resume
    else:
        cfg = SimulationConfig.load(args.config, args.ptbxl)
        run_dir = (
            args.out or Path("runs") / f"{cfg.experiment.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
    path = run_simulation(cfg, run_dir, resume=bool(args.resume), progress=not args.quiet)
    print(path.read_text())
    print(f"report: {path}")
    return 0
