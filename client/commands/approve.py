"""Review a coordinator's app bundle and approve it for this hospital (hospital.yaml approved_apps).

Without a bundle, lists the bundles this hospital refused and kept for review.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import yaml

from client import bundle
from client.runner import bundles_dir
from common.config import ConfigError, load_yaml
from common.hospital import HospitalConfig


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="hospital.yaml")
    which = p.add_mutually_exclusive_group()
    which.add_argument("bundle", nargs="?", type=Path, help="a .fab file to review")
    which.add_argument("--run", type=int, help="the bundle this hospital refused for run RUN_ID")
    p.add_argument("--yes", action="store_true", help="record the approval without asking")
    p.add_argument("--note", default="", help="why it is approved (kept in hospital.yaml)")


def record(config_path: Path, sha256: str, note: str) -> None:
    """Add ``sha256`` to policy.approved_apps, keeping the file's leading comments."""
    text = config_path.read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    data = load_yaml(config_path)  # the guarded loader: no aliases, bounded size
    policy = data.setdefault("policy", {}) or {}
    data["policy"] = policy
    policy.setdefault("approved_apps", {})[sha256] = note
    tmp = config_path.with_name(config_path.name + ".tmp")
    tmp.write_text(header + yaml.safe_dump(data, sort_keys=False))
    HospitalConfig.load(tmp)  # refuse to leave a config the daemon cannot read
    os.replace(tmp, config_path)


def _pending(cfg: HospitalConfig) -> int:
    infos = sorted(bundles_dir(cfg).glob("*.json"))
    if not infos:
        print("no refused bundle is waiting for review")
        return 0
    for info in infos:
        data = json.loads(info.read_text())
        print(f"{data['sha256']}  {data['bundle']}  runs {data['run_ids']}  last {data['seen']}")
    print("review one with: ecgfl-hospital approve --config CONFIG --run RUN_ID")
    return 0


def run(args: argparse.Namespace) -> int:
    cfg = HospitalConfig.load(args.config)
    if args.bundle is None and args.run is None:
        return _pending(cfg)
    path = args.bundle or bundle.refused_for_run(bundles_dir(cfg), args.run)
    if path is None or not path.is_file():
        raise ConfigError(f"no bundle kept for run {args.run} in {bundles_dir(cfg)}")
    if path.stat().st_size > 64 << 20:
        raise ConfigError(f"{path}: {path.stat().st_size:,} bytes; Flower bundles are far smaller")
    try:
        found = bundle.review(path.read_bytes())
    except bundle.BundleError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    print(bundle.describe(found))
    if found.sha256 in cfg.policy.approved_apps:
        print(f"already approved: {cfg.policy.approved_apps[found.sha256]}")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise ConfigError("not a terminal: pass --yes to record the approval")
        if input("approve this bundle for this hospital? [y/N] ").strip().lower() != "y":
            print("not approved")
            return 1
    today = datetime.date.today().isoformat()
    record(args.config, found.sha256, f"{found.name}, approved {today}. {args.note}".strip())
    print(f"approved: {found.sha256} recorded in {args.config}")
    return 0
