"""What the coordinator asked of this hospital and what left it, per run, from the audit log."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

from common.hospital import HospitalConfig


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


def records(described: dict) -> str:
    """One cell: records by shape only (the log holds no values)."""
    parts = []
    for name, record in described.items():
        if record.get("kind") == "arrays":
            parts.append(f"{name}: {len(record.get('arrays', {}))} arrays, {record['bytes']:,} B")
        elif "keys" in record:
            parts.append(f"{name}: {', '.join(record['keys'])}")
    return "; ".join(parts) or "-"


def outcome(item: dict) -> tuple[str, str]:
    """(what happened, what left) for the last line logged about a message."""
    if item["event"] == "refused":
        return "refused", f"{item.get('reason', '')} (bundle {str(item.get('bundle_sha256'))[:12]})"
    if item["event"] == "error" or "error" in item:
        return "error reply", f"the error only ({item.get('error')})"
    if item["event"] == "sent":
        return "answered", records(item.get("records", {}))
    return "no reply logged", "-"


def messages(path: Path, run: str | None) -> dict[str, tuple[dict, dict]]:
    """Message id -> (its first line, its last line): one row per message."""
    rows: dict[str, tuple[dict, dict]] = {}
    for i, item in enumerate(entries(path)):
        if run and item.get("run") != run:
            continue
        key = str(item.get("message_id") or f"line {i}")
        first = rows[key][0] if key in rows else item
        rows[key] = (first, item)
    return rows


def run(args: argparse.Namespace) -> int:
    cfg = HospitalConfig.load(args.config)
    path = Path(cfg.audit_log)
    if not path.is_file():
        print(f"{path}: no audit log yet (nothing was asked of this hospital)")
        return 0
    print("| time | run | round | message | received | outcome | what left |")
    print("|---|---|---|---|---|---|---|")
    for first, last in messages(path, args.run).values():
        run_name = last.get("run") or f"id {last.get('run_id')}"
        rnd = last.get("server_round")
        asked = records(first.get("records", {})) if first["event"] == "received" else "-"
        happened, left = outcome(last)
        print(
            f"| {str(first.get('time', ''))[:19]} | {run_name} | {'' if rnd is None else rnd} | "
            f"{last.get('message_type')} | {asked} | {happened} | {left} |"
        )
    return 0
