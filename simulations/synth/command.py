"""``ecgfl-simulate synth``: write a synthetic TIS-like network or PTB-XL-like dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.config import check
from simulations.synth.build import write_ptbxl_like, write_tis_network
from simulations.synth.network import PtbxlLikeSpec, TisNetworkSpec


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="folder to write the dataset into")
    p.add_argument("--kind", choices=("tis", "ptbxl"), default="tis")
    p.add_argument("--records", type=int, default=1000, help="number of records")
    p.add_argument("--hospitals", type=int, default=8, help="tis: hospitals; ptbxl: sites")
    p.add_argument("--size-skew", type=float, default=1.0, help="site sizes ~ 1/rank**skew")
    p.add_argument(
        "--fs",
        type=int,
        nargs="+",
        choices=(500, 1000),
        default=[500, 1000],
        help="tis: sampling rates the hospitals' devices may use",
    )
    p.add_argument(
        "--difficulty", default="default", help="easy | default | hard, or a number in [0, 1]"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes (output is the same)")
    p.add_argument("--force", action="store_true", help="replace a dataset already in --out")


def run(args: argparse.Namespace) -> int:
    common = dict(
        n_records=args.records,
        size_skew=args.size_skew,
        difficulty=args.difficulty,
        seed=args.seed,
    )
    if args.kind == "tis":
        spec = TisNetworkSpec(n_hospitals=args.hospitals, fs_choices=tuple(args.fs), **common)
    else:
        spec = PtbxlLikeSpec(n_sites=args.hospitals, **common)
    spec = check(spec, "dataset")
    write = write_tis_network if args.kind == "tis" else write_ptbxl_like
    path = write(spec, args.out, args.workers, args.force)
    print(f"{args.records} {args.kind} records -> {path}")
    return 0
