"""Preprocess a site's records once into its cache, so training never decodes raw files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import config, cpu
from common.cache import SiteCache
from common.preprocess import PipelineConfig
from common.sources import FORMATS


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", type=Path, help="folder of source records (never modified)")
    p.add_argument("--cache", type=Path, required=True, help="folder that holds site caches")
    p.add_argument("--format", choices=FORMATS, help="data format (detected when omitted)")
    p.add_argument("--pipeline", type=Path, help="YAML pipeline config (default: built-in)")
    p.add_argument("--rate", type=int, choices=(100, 500), help="PTB-XL: which files to read")
    p.add_argument("--workers", type=int, default=cpu.available_cores())
    p.add_argument("--json", action="store_true", help="print the cache manifest as JSON")


def run(args: argparse.Namespace) -> int:
    pipeline = config.load(PipelineConfig, args.pipeline) if args.pipeline else PipelineConfig()
    options = {"rate": args.rate} if args.rate else {}
    cache = SiteCache.prepare(
        args.data_dir, args.cache, pipeline, args.format, workers=args.workers, **options
    )
    m = cache.manifest
    if args.json:
        print(json.dumps({**m, "path": str(cache.path)}, indent=1))
        return 0
    print(f"cache    {cache.path}")
    print(f"pipeline {m['pipeline_fingerprint']}  {m['pipeline']}")
    print(
        f"records  {m['shape'][0]} prepared, {m['records_skipped']} skipped of "
        f"{m['records_found']} found"
    )
    for problem in cache.problems:
        print(f"  skipped {problem['record_id']}: {problem['path']}: {problem['reason']}")
    return 0
