"""The simulation report: per site, local-only vs global vs the site's personalised model vs
centralized, each method's mean and worst site; ``compare`` sums up several runs (seeds)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from common import protocol
from common.experiment import ExperimentConfig
from common.metrics import Metrics
from common.site import SiteData
from server import runs

LOCAL, CENTRAL = "local-only", "centralized + fine-tune"
RESULTS = "results.json"  # in the run folder: every number of the report, per method and site


def _num(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def columns(experiment: ExperimentConfig) -> list[tuple[str, str]]:
    """(title, row key) of the table's methods. The global model of FedRep/FedPer/FedBABU rounds
    is another model than FedAvg's, so it is named with its rounds."""
    ft = experiment.finetune
    own = "global" if ft.method.sends_head else f"global ({ft.mode} rounds)"
    return [
        (LOCAL, "local"),
        (own, "before"),
        (f"global + {ft.mode}", "after"),
        (CENTRAL, "central"),
    ]


def _candidates(fed: dict) -> dict[str, dict]:
    """What an ``auto`` site tried: per candidate its validation and test macro AUC, picked."""
    tail = "-" + protocol.CANDIDATE_PICKED
    names = [k.removesuffix(tail) for k in fed if k.endswith(tail)]
    return {
        n: {
            "val_auc": _num(fed.get(protocol.candidate_metric(n, protocol.CANDIDATE_VAL_AUC))),
            "test_auc": _num(fed.get(protocol.candidate_metric(n, protocol.CANDIDATE_TEST_AUC))),
            "picked": bool(fed.get(protocol.candidate_metric(n, protocol.CANDIDATE_PICKED))),
        }
        for n in names
    }


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
            "candidates": _candidates(fed),
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


def _worst(rows: list[dict], key: str) -> tuple[str, float] | None:
    scored = [(r[key], r["site"]) for r in rows if r[key] is not None]
    return (min(scored)[1], min(scored)[0]) if scored else None


def methods(rows: list[dict], experiment: ExperimentConfig) -> dict[str, dict]:
    """Per method: each site's test macro AUC, their mean and the worst site. ``auto``'s
    candidates appear under their own names (one federation served them all)."""
    per_method = {
        title: {r["site"]: r[f"{key}_auc"] for r in rows} for title, key in columns(experiment)
    }
    for name in dict.fromkeys(n for r in rows for n in r["candidates"]):
        per_method[f"global + {name}"] = {
            r["site"]: r["candidates"].get(name, {}).get("test_auc") for r in rows
        }
    out = {}
    for title, sites in per_method.items():
        scored = {s: v for s, v in sites.items() if v is not None}
        if not scored:
            continue
        worst = min(scored, key=scored.get)
        out[title] = {
            "sites": scored,
            "mean": float(np.mean(list(scored.values()))),
            "worst": scored[worst],
            "worst_site": worst,
        }
    return out


def _site_table(rows: list[dict], cols: list[tuple[str, str]]) -> list[str]:
    head = " | ".join(f"{name} AUC | {name} F1" for name, _ in cols)
    lines = [f"| site | train | test | {head} |", "|---" * (3 + 2 * len(cols)) + "|"]
    for r in rows:
        cells = " | ".join(f"{_fmt(r[f'{k}_auc'])} | {_fmt(r[f'{k}_f1'])}" for _, k in cols)
        note = f" (failed: {r['failed']})" if r["failed"] else ""
        if r["missed_rounds"]:
            note += (
                f" (not in the federation in round(s) {', '.join(map(str, r['missed_rounds']))})"
            )
        lines.append(f"| {r['site']}{note} | {r['n_train']} | {r['n_test']} | {cells} |")
    means = " | ".join(
        f"{_fmt(_mean(rows, f'{k}_auc'))} | {_fmt(_mean(rows, f'{k}_f1'))}" for _, k in cols
    )
    lines.append(f"| **mean** | | | {means} |")
    worst = [_worst(rows, f"{k}_auc") for _, k in cols]
    cells = " | ".join("- | " if w is None else f"{w[1]:.3f} ({w[0]}) | " for w in worst)
    lines.append(f"| **worst site** (AUC) | | | {cells}|")
    return lines


def _auto_table(rows: list[dict]) -> list[str]:
    """What each site tried under ``auto``: validation / test macro AUC, and its pick."""
    names = list(dict.fromkeys(n for r in rows for n in r["candidates"]))
    if not names:
        return []
    lines = [
        "",
        "## What each site picked (`finetune.mode: auto`)",
        "",
        "Each candidate's macro AUC on the site's validation split (what it picks by) / on its "
        "test split.",
        "",
        f"| site | picked | {' | '.join(names)} |",
        "|---" * (2 + len(names)) + "|",
    ]
    for r in rows:
        tried = r["candidates"]
        picked = next((n for n, c in tried.items() if c["picked"]), "-")
        cells = " | ".join(
            f"{_fmt(tried[n]['val_auc'])} / {_fmt(tried[n]['test_auc'])}" if n in tried else "-"
            for n in names
        )
        lines.append(f"| {r['site']} | {picked} | {cells} |")
    return lines


def write(
    run_dir: Path,
    experiment: ExperimentConfig,
    sites: list[SiteData],
    local: dict[str, Metrics],
    central: dict[str, Metrics],
    timings: dict,
) -> Path:
    summary = json.loads((run_dir / runs.SUMMARY).read_text())
    rows = site_rows(sites, summary, local, central)
    (run_dir / RESULTS).write_text(
        json.dumps(
            {
                "sites": rows,
                "methods": methods(rows, experiment),
                "timings": timings,
                "rounds": summary["rounds"],
                "local_only": {k: m.to_dict() for k, m in local.items()},
                "centralized": {k: m.to_dict() for k, m in central.items()},
            },
            indent=1,
        )
    )
    lines = [
        f"# Simulation {run_dir.name}",
        "",
        "Macro AUC and macro F1 (per-class thresholds from the site's validation split) on "
        f"each site's test split. Personalisation: `finetune.mode: {experiment.finetune.mode}`.",
        "",
        *_site_table(rows, columns(experiment)),
        *_auto_table(rows),
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


def compare(run_dirs: list[Path]) -> str:
    """A markdown table over runs (e.g. one per seed, or one per method): for each method, the
    mean over sites and the worst site's macro AUC, as mean +- sample std over the runs that
    have it."""
    found: dict[str, list[dict]] = {}
    for run_dir in run_dirs:
        for name, m in json.loads((run_dir / RESULTS).read_text())["methods"].items():
            found.setdefault(name, []).append(m)
    lines = [
        "| method | runs | per-site mean macro AUC | worst site macro AUC | worst sites |",
        "|---|---|---|---|---|",
    ]
    for name, per_run in found.items():
        means, worst = [m["mean"] for m in per_run], [m["worst"] for m in per_run]
        sites = ", ".join(m["worst_site"] for m in per_run)
        lines.append(f"| {name} | {len(per_run)} | {_spread(means)} | {_spread(worst)} | {sites} |")
    return "\n".join(lines)


def _spread(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"
