"""Create a federation's certificates and keys, or add hospitals to an existing one."""

from __future__ import annotations

import argparse
from pathlib import Path

from server.provision import provision, read_pipeline


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="federation folder (created/extended)")
    p.add_argument(
        "--hospital", action="append", default=[], metavar="NAME", help="a site (repeatable)"
    )
    p.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="NAME",
        help="DNS name or IP the coordinator is reached at (repeatable); localhost and 127.0.0.1 "
        "are always included",
    )
    p.add_argument("--address", help="HOST:PORT the hospitals dial (default: first SAN:8000)")
    p.add_argument(
        "--listen",
        default="0.0.0.0",
        help="interface the front door (nginx, Fleet API only) binds; the SuperLink itself "
        "always binds 127.0.0.1 on the next port",
    )
    p.add_argument(
        "--pipeline",
        type=Path,
        metavar="YAML",
        help="the federation's preprocessing (an experiment file's pipeline: or the bare "
        "mapping); default: the built-in one. Written into coordinator.yaml and each new "
        "hospital.yaml",
    )
    p.add_argument(
        "--force", action="store_true", help="replace existing keys/certificates (key rotation)"
    )


def run(args: argparse.Namespace) -> int:
    pipeline = read_pipeline(args.pipeline) if args.pipeline else None
    cfg = provision(
        args.out, args.hospital, args.san, args.address, args.listen, args.force, pipeline
    )
    coord = args.out / "coordinator"
    print(f"coordinator  {coord / 'coordinator.yaml'}  (address {cfg.address})")
    for site in args.hospital:
        print(f"hospital     {args.out / 'hospitals' / site}/  -> send this folder to {site}")
    print("private keys are mode 0600; ca.key never leaves the coordinator")
    return 0
