"""``ecgfl-simulate attack``: robust aggregation against a bad site, clean vs attacked."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from simulations.attack import AttackExperiment, run_grid


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="attack YAML (configs/attack_*.yaml)")
    p.add_argument("--strategies", nargs="+", help="only these strategies (default: the YAML's)")
    p.add_argument("--out", type=Path, help="folder for the runs (default runs/<name>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    experiment = AttackExperiment.load(args.config)
    if args.strategies:
        experiment.strategies = list(args.strategies)
    name = experiment.simulation.experiment.name
    out = args.out or Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    started = time.perf_counter()
    path = run_grid(experiment, out, progress=not args.quiet)
    print(path.read_text())
    print(f"table: {path} ({time.perf_counter() - started:.0f} s)")
    return 0
