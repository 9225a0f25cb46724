"""``ecgfl-simulate``: what a researcher runs: synthetic data, virtual sites, experiments."""

from __future__ import annotations

import sys

from common import cli

COMMANDS = {
    "synth": ("simulations.synth.command", "write a synthetic TIS-like or PTB-XL-like dataset"),
    "partition": ("simulations.commands.partition", "split sources into virtual sites"),
    "run": ("simulations.commands.run", "run a whole simulation: data, sites, federation, report"),
    "models": ("simulations.commands.models", "parameters and FLOPs of every registered model"),
    "attack": ("simulations.commands.attack", "robust aggregation: one bad site, per strategy"),
    "centralized": (
        "simulations.commands.centralized",
        "the paper's pretrain/fine-tune experiment",
    ),
    "compare": (
        "simulations.commands.compare",
        "each method's mean and worst-site macro AUC over finished runs",
    ),
    "dashboard": ("simulations.commands.dashboard", "a read-only web dashboard of run folders"),
}


def main(argv: list[str] | None = None) -> int:
    return cli.main(
        "ecgfl-simulate",
        "What a researcher runs: synthetic data, virtual sites, experiments",
        COMMANDS,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
