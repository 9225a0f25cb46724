"""``ecgfl-simulate run``: the full simulation (the README's main job with no arguments)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common.config import ConfigError
from simulations.config import SimulationConfig
from simulations.run import run as run_simulation
from simulations.seeds import run_seeds, with_seed


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
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument(
        "--seed", type=int, help="one run with this seed (default: the config's local.seed)"
    )
    seeds.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        metavar="SEED",
        help="the whole comparison once per seed, each in <out>/seed-<n>, and a combined report "
        "(mean ± std over seeds) in <out>",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _seeds(values: list[int] | None) -> list[int] | None:
    """Seeds as the config's ``seed:`` takes them: distinct, 0 to 2**32 - 1."""
    if values is not None and (
        len(set(values)) != len(values) or min(values) < 0 or max(values) > 2**32 - 1
    ):
        raise ConfigError(
            f"--seed(s) {' '.join(map(str, values))}: give distinct seeds from 0 to 2**32 - 1"
        )
    return values


def run(args: argparse.Namespace) -> int:
    seeds = _seeds(args.seeds)
    if args.resume and (seeds or args.seed is not None):
        raise ConfigError("--resume continues one run folder with its own seed: drop --seed(s)")
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
    if args.seed is not None:
        cfg = with_seed(cfg, _seeds([args.seed])[0])
    if seeds:
        path = run_seeds(cfg, run_dir, seeds, progress=not args.quiet)
    else:
        path = run_simulation(cfg, run_dir, resume=bool(args.resume), progress=not args.quiet)
    print(path.read_text())
    print(f"report: {path}")
    return 0
