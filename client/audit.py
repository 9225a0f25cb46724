"""The hospital's audit log: a ClientApp mod that writes one JSON line for every message the
coordinator sends and every reply that leaves, so the site can verify what it shared.

A reply is described by its structure only (record names; array names, shapes, dtypes and sizes;
metric and config keys), never by values, so the log itself holds nothing derived from patients.
The path comes from the node config key ``audit-log``; without it (simulation) the mod does nothing.
It is the outermost mod: it sees the reply exactly as it leaves.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from common import protocol
from common.names import is_plain_name

AUDIT_LOG_KEY = "audit-log"


def entry(event: str, msg: Message) -> dict:
    """The common part of every line: when, what, and which run (Flower's id and the run
    folder's name, which the coordinator's operator and reports use)."""
    meta = msg.metadata
    config = msg.content.config_records.get(protocol.CONFIG_RECORD) if msg.has_content() else None
    config = config or {}
    run = config.get(protocol.RUN_NAME)
    rnd = config.get(protocol.SERVER_ROUND)
    return {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        "event": event,
        "run_id": meta.run_id,
        "run": run if is_plain_name(run) else None,  # anything else is refused anyway
        "message_type": meta.message_type,
        "message_id": meta.message_id,
        "server_round": int(rnd) if isinstance(rnd, int) else None,
    }


def describe(content: RecordDict) -> dict[str, dict]:
    """Each record's kind and shape of content: names, shapes, dtypes, sizes and keys only."""
    out: dict[str, dict] = {}
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            arrays = {
                key: {"shape": list(a.shape), "dtype": a.dtype, "bytes": len(a.data)}
                for key, a in record.items()
            }
            out[name] = {
                "kind": "arrays",
                "arrays": arrays,
                "bytes": sum(a["bytes"] for a in arrays.values()),
            }
        elif isinstance(record, MetricRecord):
            out[name] = {"kind": "metrics", "keys": sorted(record)}
        elif isinstance(record, ConfigRecord):
            out[name] = {"kind": "config", "keys": sorted(record)}
        else:
            out[name] = {"kind": type(record).__name__}
    return out


def write(path: Path, entry: dict) -> None:
    """One line per event, in a single append: concurrent processes do not interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(entry) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def audit_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Log the message received, pass it on, log the reply (or the error) that goes back."""
    target = context.node_config.get(AUDIT_LOG_KEY)
    if not target:
        return call_next(msg, context)
    path = Path(str(target))
    write(path, {**entry("received", msg), "records": describe(msg.content)})
    try:
        reply = call_next(msg, context)
    except Exception as exc:  # the runner sends an error reply: nothing else leaves
        write(path, {**entry("error", msg), "error": type(exc).__name__})
        raise
    sent = entry("sent", msg)
    if reply.has_error():
        sent["error"] = {"code": reply.error.code}
    else:
        sent["records"] = describe(reply.content)
    write(path, sent)
    return reply
