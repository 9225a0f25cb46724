"""``ecgfl-simulate models``: every registered model's size and cost at a given input."""

from __future__ import annotations

import argparse

from common.models import MODELS, build_model, describe


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--length", type=int, default=1000, help="input samples (100 Hz x 10 s: 1000)")
    p.add_argument("--classes", type=int, default=7, help="outputs (seed6 space: 7)")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier")
    p.add_argument("--norm", choices=("batch", "group"), default="batch")


def run(args: argparse.Namespace) -> int:
    print(
        f"input 12 x {args.length}, {args.classes} outputs, width {args.width:g}, {args.norm}norm"
    )
    print(f"{'model':16s} {'parameters':>12s} {'forward MFLOP/sample':>22s}")
    for name in MODELS:
        model = build_model(
            name, n_classes=args.classes, input_length=args.length, norm=args.norm, width=args.width
        )
        params, flops = describe(model, args.length)
        print(f"{name:16s} {params:12,d} {flops / 1e6:22.1f}")
    return 0
