"""Report what a folder of ECG records holds and what is wrong with it, touching nothing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common.labels import LabelSpace
from common.sitecheck import check_site
from common.sources import FORMATS


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", type=Path, help="folder of source records")
    p.add_argument("--format", choices=FORMATS, help="data format (detected when omitted)")
    p.add_argument("--labels", default="seed6", help="label space name or YAML path")
    p.add_argument("--rate", type=int, choices=(100, 500), help="PTB-XL: which files to read")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    report = check_site(args.data_dir, args.format, LabelSpace.load(args.labels), args.rate)
    print(json.dumps(report.to_json(), indent=1) if args.json else report.to_text())
    return 0
