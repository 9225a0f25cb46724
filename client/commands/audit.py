"""What the coordinator asked of this hospital and what left it, per run, from the audit log."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

from client.daemon import HospitalConfig


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="hospital.yaml")
    p.add_argument("--run", help="only this run (its folder name at the coordinator)")


def entries(path: Path) -> Iterator[dict]:
    """The log's lines one at a time (it grows for the site's lifetime); bad ones skipped."""
    with open(path, errors="replace") as fh:
        for line in fh:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                yield item


def what_left(item: dict) -> str:
    """One cell: the records of a reply, by shape only (the log holds no values)."""
    if item["event"] == "refused":
        return f"refused: {item.get('reason', '')} (bundle {str(item.get('bundle_sha256'))[:12]})"
    if item["event"] == "error" or "error" in item:
        return f"error reply ({item.get('error')})"
    if item["event"] != "sent":
        return ""
    parts = []
    for name, record in item.get("records", {}).items():
        if record.get("kind") == "arrays":
            parts.append(f"{name}: {len(record.get('arrays', {}))} arrays, {record['bytes']:,} B")
        elif "keys" in record:
            parts.append(f"{name}: {', '.join(record['keys'])}")
    return "; ".join(parts)


def run(args: argparse.Namespace) -> int:
    cfg = HospitalConfig.load(args.config)
    path = Path(cfg.audit_log)
    if not path.is_file():
        print(f"{path}: no audit log yet (nothing was asked of this hospital)")
        return 0
    print("| time | run | round | message | event | what left |")
    print("|---|---|---|---|---|---|")
    for item in entries(path):
        run_name = item.get("run") or f"id {item.get('run_id')}"
        if args.run and item.get("run") != args.run:
            continue
        rnd = item.get("server_round")
        print(
            f"| {str(item.get('time', ''))[:19]} | {run_name} | {'' if rnd is None else rnd} | "
            f"{item.get('message_type')} | {item.get('event')} | {what_left(item)} |"
        )
    return 0
