"""``ecgfl-simulate partition``: cut sources into virtual sites (manifest + report + heatmap)."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.labels import LabelSpace
from simulations.partition import SCHEMES, SourcePlan, partition, write_report


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tis", type=Path, help="TIS-like network folder")
    p.add_argument("--tis-sites", type=int, help="virtual sites from it (natural: at most)")
    p.add_argument("--ptbxl", type=Path, help="PTB-XL(-like) folder, synthetic or a real download")
    p.add_argument("--ptbxl-sites", type=int, help="virtual sites from it (natural: at most)")
    p.add_argument("--ptbxl-rate", type=int, choices=(100, 500), default=500)
    p.add_argument("--scheme", choices=SCHEMES, default="natural")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    p.add_argument("--min-size", type=int, default=50, help="natural: merge smaller sites")
    p.add_argument("--labels", default="seed6", help="label space name or YAML path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="folder for sites.json and report")
    p.add_argument("--cache", type=Path, help="where sites cache their data (default OUT/cache)")


def plans_from_args(args: argparse.Namespace) -> list[SourcePlan]:
    plans = []
    if args.tis:
        plans.append(SourcePlan("tis", args.tis, args.tis_sites, "tis"))
    if args.ptbxl:
        plans.append(
            SourcePlan("ptbxl", args.ptbxl, args.ptbxl_sites, "ptbxl", {"rate": args.ptbxl_rate})
        )
    return plans


def run(args: argparse.Namespace) -> int:
    plans = plans_from_args(args)
    if not plans:
        raise SystemExit("ecgfl-simulate partition: give --tis and/or --ptbxl")
    manifest, counts = partition(
        plans,
        LabelSpace.load(args.labels),
        args.scheme,
        args.cache or args.out / "cache",
        args.alpha,
        args.min_size,
        args.seed,
    )
    write_report(manifest, counts, args.out)
    totals = counts.groupby("site", sort=False)["records"].sum()
    print(f"{len(totals)} sites -> {args.out / 'sites.json'}")
    for site, n in totals.items():
        print(f"  {site:24s} {n:6d} records")
    return 0
