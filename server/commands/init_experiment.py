"""Write a deployment experiment file: every key, with small safe defaults and a comment each."""

from __future__ import annotations

import argparse
import string
from dataclasses import asdict
from importlib.resources import files
from pathlib import Path

import yaml

from common.config import ConfigError
from common.models import MODELS
from common.names import RULE, is_plain_name
from server import coordinator
from server.strategies import STRATEGIES


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--coordinator", type=Path, default=Path("coordinator.yaml"))
    p.add_argument("--name", required=True, help="the run's name (its folder, here and at sites)")
    p.add_argument("--rounds", type=int, default=5, help="federated rounds (default 5)")
    p.add_argument("--out", type=Path, help="default: NAME.yaml in this folder")
    p.add_argument("--force", action="store_true", help="replace an existing file")


def render(name: str, rounds: int, cfg: coordinator.CoordinatorConfig, coord: Path, out: Path):
    """The template with this federation's pipeline and the run's name filled in."""
    template = string.Template(files("server").joinpath("experiment_template.yaml").read_text())
    flow = yaml.safe_dump(asdict(cfg.pipeline), default_flow_style=True, width=1000).strip()
    return template.substitute(
        name=name,
        rounds=rounds,
        pipeline=flow,
        coordinator=coord,
        file=out,
        models=", ".join(MODELS),
        strategies=", ".join(STRATEGIES),
    )


def run(args: argparse.Namespace) -> int:
    if not is_plain_name(args.name):
        raise ConfigError(f"--name {args.name!r}: the run folder needs {RULE}")
    if args.rounds < 1:
        raise ConfigError(f"--rounds {args.rounds}: at least 1")
    out = args.out or Path(f"{args.name}.yaml")
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists; pass --force to replace it")
    cfg = coordinator.CoordinatorConfig.load(args.coordinator)
    out.write_text(render(args.name, args.rounds, cfg, args.coordinator, out))
    print(
        f"experiment   {out}  (check it, then: ecgfl-coordinator run --coordinator "
        f"{args.coordinator} --config {out})"
    )
    return 0
