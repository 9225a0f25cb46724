"""The hospital's dashboard: what its node was asked and what left (the audit log), the check of
its prepared data, and the fine-tuned models it keeps with their scores. It only reads."""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path

from dash import Dash, html

from client.commands.audit import messages, outcome, records
from common.dashboard import Fold, create_app, file_signature, table
from common.hospital import HospitalConfig

MAX_MESSAGES = 300  # newest rows shown; the whole log stays in audit.jsonl
MAX_PROBLEMS = 200


def shapes(described: dict) -> Fold | str:
    """Each array that left, by name, shape, dtype and size; metric and config names."""
    lines = []
    for name, record in described.items():
        if record.get("kind") == "arrays":
            for key, a in record.get("arrays", {}).items():
                lines.append(f"{name}/{key}: {a.get('shape')} {a.get('dtype')} {a.get('bytes')} B")
        elif "keys" in record:
            lines.append(f"{name} ({record.get('kind')}): {', '.join(record['keys'])}")
    if not lines:
        return records(described)
    return Fold(records(described), "\n".join(lines))


def audit_row(first: dict, last: dict) -> list:
    """One message: its first line (what came in) and its last (what happened, what left)."""
    happened, left = outcome(last)
    asked = records(first.get("records", {})) if first.get("event") == "received" else "-"
    sent = last.get("records") if last.get("event") == "sent" else None
    return [
        str(first.get("time", ""))[:19],
        str(last.get("run") or f"id {last.get('run_id')}"),
        str(last.get("server_round", "")),
        str(last.get("message_type", "")),
        asked,
        happened,
        shapes(sent) if isinstance(sent, dict) else left,
    ]


def audit_section(path: Path) -> list:
    if not path.is_file():
        return [html.H2("Audit log"), html.P(f"{path}: no audit log yet (nothing was asked)")]
    rows = []
    for first, last in list(messages(path, None).values())[-MAX_MESSAGES:][::-1]:
        try:
            rows.append(audit_row(first, last))
        except (LookupError, TypeError, AttributeError, ValueError):  # not written by ecgfl
            rows.append(["", "", "", "", "", "unreadable line", str(last)[:200]])
    header = ["time", "run", "round", "message", "received", "outcome", "what left"]
    return [
        html.H2("Audit log: what was asked and what left"),
        html.P(f"{path}; newest first, at most {MAX_MESSAGES} messages"),
        table(header, rows, "audit"),
    ]


def cache_folders(cache_dir: Path) -> list[Path]:
    if not cache_dir.is_dir():
        return []
    return sorted(p.parent for p in cache_dir.glob("*/manifest.json"))


def check_section(cache_dir: Path) -> list:
    """The data check as the last ``prepare`` recorded it: records found, skipped and why."""
    out: list = [html.H2("Site check (prepared data)")]
    folders = cache_folders(cache_dir)
    if not folders:
        return [*out, html.P(f"{cache_dir}: no prepared data yet (ecgfl-hospital prepare)")]
    rows, problems = [], []
    for folder in folders:
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
            lines = (folder / "problems.jsonl").read_text(errors="replace").splitlines()
        except (OSError, ValueError) as exc:
            rows.append([folder.name, f"unreadable: {exc}", "", "", "", ""])
            continue
        rows.append(
            [
                folder.name,
                str(manifest.get("format")),
                str(manifest.get("data_dir")),
                str(manifest.get("records_found")),
                str(manifest.get("records_skipped")),
                str(manifest.get("pipeline_fingerprint")),
            ]
        )
        for line in lines:
            with contextlib.suppress(ValueError, AttributeError):
                p = json.loads(line)
                problems.append([p.get("record_id"), p.get("path"), p.get("reason")])
    header = ["cache", "format", "data", "records found", "skipped", "pipeline"]
    out.append(table(header, rows, "check"))
    if problems:
        out += [
            html.H3(f"Skipped records ({len(problems)})"),
            table(["record", "file", "reason"], problems[:MAX_PROBLEMS], "problems"),
        ]
    return out


@functools.lru_cache(maxsize=256)
def model_row(path: Path, mtime_ns: int) -> list[str]:
    """One fine-tuned model's scores (a checkpoint is loaded once per version)."""
    from common.checkpoint import load_checkpoint

    try:
        meta = load_checkpoint(path).meta
    except Exception as exc:  # a half-written or foreign file must not take the page down
        return [str(path), f"unreadable: {exc}", "", "", "", ""]

    def score(part: str, key: str) -> str:
        value = (meta.get(part) or {}).get(key)
        return f"{value:.3f}" if isinstance(value, int | float) else "-"

    return [
        str(path),
        str(meta.get("run", "-")),
        score("before", "macro_auc"),
        score("after", "macro_auc"),
        score("before", "macro_f1"),
        score("after", "macro_f1"),
    ]


def models_section(output_dir: Path) -> list:
    found = sorted(output_dir.glob("**/*.pt")) if output_dir.is_dir() else []
    rows = [model_row(p, p.stat().st_mtime_ns) for p in found]
    header = ["model", "run", "global AUC", "fine-tuned AUC", "global F1", "fine-tuned F1"]
    return [
        html.H2("Fine-tuned models kept here (local test split)"),
        table(header, rows, "models") if rows else html.P(f"{output_dir}: none yet"),
    ]


def build(cfg: HospitalConfig, token_file: Path | None) -> Dash:
    audit, cache, output = Path(cfg.audit_log), Path(cfg.cache_dir), Path(cfg.output_dir)

    def render(path: str, search: str) -> list:
        return [
            html.H1(f"Hospital {cfg.site}"),
            html.P(f"coordinator {cfg.superlink}; data {cfg.data_dir}"),
            *check_section(cache),
            *models_section(output),
            *audit_section(audit),
        ]

    def signature(path: str, search: str) -> tuple:
        watched = [audit, *(f / "manifest.json" for f in cache_folders(cache))]
        models = sorted(output.glob("**/*.pt")) if output.is_dir() else []
        return tuple(file_signature(p) for p in [*watched, *models]) + (len(models),)

    return create_app(f"ecgfl {cfg.site}", token_file, render, signature)
