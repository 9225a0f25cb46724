"""``ecgfl-simulate compare RUN_DIR...``: each method's mean and worst-site macro AUC over
finished simulations (one per seed, or one per personalisation method), mean +- std."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.config import ConfigError
from simulations.report import RESULTS, compare


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR", help="finished simulations")


def run(args: argparse.Namespace) -> int:
    unfinished = [str(r) for r in args.runs if not (r / RESULTS).is_file()]
    if unfinished:
        raise ConfigError(f"not finished simulations (no results.json): {', '.join(unfinished)}")
    older = [str(r) for r in args.runs if '"methods"' not in (r / RESULTS).read_text()]
    if older:
        raise ConfigError(f"results.json without per-method results (an older run): {older}")
    print(compare(args.runs))
    return 0
