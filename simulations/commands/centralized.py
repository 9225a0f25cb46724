"""``ecgfl-simulate centralized``: the seed paper's pretrain / fine-tune experiment, unfederated."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from simulations.centralized import CentralizedConfig
from simulations.centralized import run as run_experiment
from simulations.config import CONFIG_DIR


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=CONFIG_DIR / "paper.yaml",
        help="experiment YAML (default: configs/paper.yaml)",
    )
    p.add_argument(
        "--out", type=Path, help="run directory (default runs/<name>-centralized-<time>)"
    )
    p.add_argument("--seeds", type=int, nargs="+", help="override the config's seeds")
    p.add_argument("--ptbxl", type=Path, help="a real PTB-XL download as the target")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress")


def run(args: argparse.Namespace) -> int:
    cfg = CentralizedConfig.load(args.config, args.seeds, args.ptbxl and args.ptbxl.resolve())
    name = f"{cfg.experiment.name}-centralized-{time.strftime('%Y%m%d-%H%M%S')}"
    started = time.perf_counter()
    path = run_experiment(cfg, args.out or Path("runs") / name, progress=not args.quiet)
    print(path.read_text())
    print(f"report: {path} ({time.perf_counter() - started:.0f} s)")
    return 0
