"""The simulation report: per site, local-only vs global vs global + fine-tune vs centralized."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from common import protocol
from common.metrics import Metrics
from common.site import SiteData
from server import runs

COLUMNS = (
    ("local-only", "local"),
    ("global", "before"),
    ("global + fine-tune", "after"),
    ("centralized + fine-tune", "central"),
)


def _num(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def site_rows(
    sites: list[SiteData], summary: dict, local: dict[str, Metrics], central: dict[str, Metrics]
) -> list[dict]:
    rows = []
    failed = {f["site"]: f["reason"] for f in summary.get("finetune_failed", [])}
    for site in sites:
        fed = summary["finetune"].get(site.name, {})
        row = {
            "site": site.name,
            **{f"n_{k}": int(v) for k, v in site.counts().items()},
            "failed": failed.get(site.name),
            # rounds this site did not train in: its baselines are not comparable there
            "missed_rounds": [
                r["round"] for r in summary["rounds"] if site.name not in r.get("sites", [])
            ],
        }
        for key, auc, f1 in (
            ("before", protocol.BEFORE_MACRO_AUC, protocol.BEFORE_MACRO_F1),
            ("after", protocol.AFTER_MACRO_AUC, protocol.AFTER_MACRO_F1),
        ):
            row[f"{key}_auc"] = _num(fed.get(auc))
            row[f"{key}_f1"] = _num(fed.get(f1))
        for key, source in (("local", local), ("central", central)):
            m = source.get(site.name)
            row[f"{key}_auc"] = m.macro_auc if m else None
            row[f"{key}_f1"] = m.macro_f1 if m else None
        rows.append(row)
    return rows


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return float(np.mean(values)) if values else None


def write(
    run_dir: Path,
    sites: list[SiteData],
    local: dict[str, Metrics],
    central: dict[str, Metrics],
    timings: dict,
) -> Path:
    summary = json.loads((run_dir / runs.SUMMARY).read_text())
    rows = site_rows(sites, summary, local, central)
    (run_dir / "results.json").write_text(
        json.dumps(
            {
                "sites": rows,
                "timings": timings,
                "rounds": summary["rounds"],
                "local_only": {k: m.to_dict() for k, m in local.items()},
                "centralized": {k: m.to_dict() for k, m in central.items()},
            },
            indent=1,
        )
    )
    head = " | ".join(f"{name} AUC | {name} F1" for name, _ in COLUMNS)
    lines = [
        f"# Simulation {run_dir.name}",
        "",
        "Macro AUC and macro F1 (per-class thresholds from the site's validation split) on "
        "each site's test split.",
        "",
        f"| site | train | test | {head} |",
        "|---" * (3 + 2 * len(COLUMNS)) + "|",
    ]
    for r in rows:
        cells = " | ".join(f"{_fmt(r[f'{k}_auc'])} | {_fmt(r[f'{k}_f1'])}" for _, k in COLUMNS)
        note = f" (failed: {r['failed']})" if r["failed"] else ""
        if r["missed_rounds"]:
            note += (
                f" (not in the federation in round(s) {', '.join(map(str, r['missed_rounds']))})"
            )
        lines.append(f"| {r['site']}{note} | {r['n_train']} | {r['n_test']} | {cells} |")
    means = " | ".join(
        f"{_fmt(_mean(rows, f'{k}_auc'))} | {_fmt(_mean(rows, f'{k}_f1'))}" for _, k in COLUMNS
    )
    lines.append(f"| **mean** | | | {means} |")
    lines += [
        "",
        "Timings (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()),
        "",
        "Federated rounds: [report.md](report.md) (per-round metrics, failed sites).",
        "",
        "![metrics per round](rounds.png)",
        "",
        "![sites](partition/partition.png)",
        "",
        "Configuration: [config.yaml](config.yaml).",
    ]
    path = run_dir / "simulation.md"
    path.write_text("\n".join(lines) + "\n")
    return path
