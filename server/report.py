"""The coordinator's run report: rounds, which sites took part or failed, fine-tuning per site."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from common import protocol
from server import runs, sitesummary

if TYPE_CHECKING:  # the dashboard reads tables from here without loading torch
    from common.experiment import ExperimentConfig


FINETUNE_PLOT = "finetune.png"  # many sites: their scores' distribution


def _fmt(value) -> str:
    return (
        "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
    )


def rounds_table(entries: list[dict]) -> list[dict]:
    """One row per round: aggregated train loss and validation AUC, sites in and out."""
    rows: dict[int, dict] = {}
    for e in entries:
        if e["phase"] not in (protocol.Phase.TRAIN, protocol.Phase.EVALUATE):
            continue
        row = rows.setdefault(e["round"], {"round": e["round"], "failed": []})
        agg = e.get("aggregate") or {}
        if e["phase"] == protocol.Phase.TRAIN:
            row["sites"] = sorted(e["sites"])
            row["failed_sites"] = sorted({f["site"] for f in e["failed"]})  # asked, no update
            row["train_loss"] = agg.get(protocol.TRAIN_LOSS)
            row["seconds"] = e.get("seconds")
        else:
            row["val_macro_auc"] = agg.get(protocol.MACRO_AUC)
            row["val_loss"] = agg.get(protocol.VAL_LOSS)
        for f in e["failed"]:  # a site that failed both phases the same way is named once
            line = f"{f['site']} ({f['reason']})"
            if line not in row["failed"]:
                row["failed"].append(line)
    return [rows[k] for k in sorted(rows)]


def finetune_table(entries: list[dict]) -> tuple[dict[str, dict], list[dict], dict | None]:
    """The last fine-tuning's per-site scores, its failures, and how its sites were sampled."""
    last = next((e for e in reversed(entries) if e["phase"] == protocol.Phase.FINETUNE), None)
    return (last["sites"], last["failed"], last.get("sampled")) if last else ({}, [], None)


def plot_rounds(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    rounds = [r["round"] for r in rows]
    ax1.plot(rounds, [r.get("train_loss") for r in rows], "o-", label="train loss (sites' mean)")
    ax1.plot(rounds, [r.get("val_loss") for r in rows], "s-", label="validation loss")
    ax1.set_xlabel("round")
    ax1.set_ylabel("loss")
    ax2 = ax1.twinx()
    ax2.plot(
        rounds,
        [r.get("val_macro_auc") for r in rows],
        "^-",
        color="C2",
        label="validation macro AUC",
    )
    ax2.set_ylabel("macro AUC")
    lines = ax1.get_lines() + ax2.get_lines()
    ax1.legend(lines, [line.get_label() for line in lines], fontsize=7, loc="best")
    ax1.set_xticks(rounds)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sites(names: list[str], shown: int = 8) -> str:
    """The sites that trained in a round, by name; a long list ends with how many more."""
    names = sorted(names)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return (", ".join(names[:shown]) + more) or "-"


FINETUNE_HEAD = [
    "| site | train | test | global AUC | global F1 | fine-tuned AUC | fine-tuned F1 |",
    "|---|---|---|---|---|---|---|",
]


def _finetune_row(name: str, m: dict) -> str:
    return (
        f"| {name} | {int(m[protocol.TRAIN_EXAMPLES])} | {int(m[protocol.NUM_EXAMPLES])} | "
        f"{_fmt(m[protocol.BEFORE_MACRO_AUC])} | {_fmt(m[protocol.BEFORE_MACRO_F1])} | "
        f"{_fmt(m[protocol.AFTER_MACRO_AUC])} | {_fmt(m[protocol.AFTER_MACRO_F1])} |"
    )


def _score(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def failure_summary(failed: list[dict], shown: int = 5) -> list[str]:
    """Failures grouped by reason, the commonest first, with a few of their sites."""
    by_reason: dict[str, list[str]] = {}
    for f in failed:
        by_reason.setdefault(f["reason"], []).append(f["site"])
    ranked = sorted(by_reason.items(), key=lambda item: -len(item[1]))
    return [
        f"- {len(names)} site(s): {reason} ({_sites(names, 3)})" for reason, names in ranked[:shown]
    ] + ([f"- and {len(ranked) - shown} other reasons"] if len(ranked) > shown else [])


def finetune_summary(sites: dict[str, dict], failed: list[dict], run_dir: Path) -> list[str]:
    """Many sites: the distribution of their test macro AUC before and after fine-tuning, the
    top and bottom sites, a plot; every site's scores stay in summary.json."""
    before = {n: _score(m.get(protocol.BEFORE_MACRO_AUC)) for n, m in sites.items()}
    after = {n: _score(m.get(protocol.AFTER_MACRO_AUC)) for n, m in sites.items()}
    columns = {"global": list(before.values()), "fine-tuned": list(after.values())}
    title = f"{run_dir.name}: test macro AUC over {len(sites)} sites"
    sitesummary.plot_distribution(columns, run_dir / FINETUNE_PLOT, title)
    top, bottom = sitesummary.ends(after)
    lines = [
        f"{len(sites)} sites fine-tuned, {len(failed)} failed. Every site's scores: "
        f"[{runs.SUMMARY}]({runs.SUMMARY}) (`finetune`, `finetune_failed`).",
        "",
        *sitesummary.stats_table(columns, "test macro AUC"),
        "",
        f"Top {len(top)} sites by fine-tuned AUC:",
        "",
        *FINETUNE_HEAD,
        *(_finetune_row(n, sites[n]) for n in top),
        "",
        f"Bottom {len(bottom)} sites:",
        "",
        *FINETUNE_HEAD,
        *(_finetune_row(n, sites[n]) for n in bottom),
    ]
    if failed:
        lines += ["", "Failed:", "", *failure_summary(failed)]
    return [*lines, "", f"![macro AUC over the sites]({FINETUNE_PLOT})"]


def finetune_lines(
    sites: dict[str, dict], failed: list[dict], sampled: dict | None, run_dir: Path
) -> list[str]:
    """The fine-tuning section: a row per site, or a summary when there are many."""
    lines = ["", "## Fine-tuning at each site (local test split)", ""]
    if sampled and sampled["sites"] < sampled["of"]:
        lines += [
            f"A seeded sample of {sampled['sites']} of {sampled['of']} sites fine-tuned "
            f"(`finetune.fraction: {sampled['fraction']:g}`); the others are not scored.",
            "",
        ]
    if sitesummary.summarised(len(sites) + len(failed)):
        return lines + finetune_summary(sites, failed, run_dir)
    lines += [*FINETUNE_HEAD, *(_finetune_row(n, sites[n]) for n in sorted(sites))]
    return lines + [f"| {f['site']} | failed: {f['reason']} | | | | | |" for f in failed]


def write(run_dir: Path, entries: list[dict], experiment: ExperimentConfig) -> Path:
    """report.md, rounds.png and summary.json in ``run_dir``."""
    rows = rounds_table(entries)
    sites, failed, sampled = finetune_table(entries)
    if rows:
        plot_rounds(rows, run_dir / runs.ROUNDS_PLOT)
    stopped = next((e["reason"] for e in entries if e["phase"] == protocol.Phase.STOPPED), None)
    summary = {
        "experiment": experiment.to_dict(),
        "rounds": rows,
        "finetune": sites,
        "finetune_failed": failed,
        "finetune_sampled": sampled,
        "stopped": stopped,
    }
    (run_dir / runs.SUMMARY).write_text(json.dumps(summary, indent=1))
    lines = [
        f"# Federated run {run_dir.name}",
        "",
        f"Strategy {experiment.federation.strategy}, {len(rows)} rounds, model "
        f"{experiment.model.name}, labels {experiment.labels}.",
        "",
        *([f"**The run stopped**: {stopped}. No site fine-tuned.", ""] if stopped else []),
        "| round | sites | train loss | val loss | val macro AUC | s | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(  # failure reasons are one line each (server.rounds.reason_line)
            f"| {r['round']} | {_sites(r.get('sites', []))} | {_fmt(r.get('train_loss'))} | "
            f"{_fmt(r.get('val_loss'))} | {_fmt(r.get('val_macro_auc'))} | "
            f"{_fmt(r.get('seconds'))} | {'; '.join(r['failed']) or '-'} |"
        )
    lines += finetune_lines(sites, failed, sampled, run_dir)
    if rows:
        lines += ["", "![metrics per round](rounds.png)"]
    path = run_dir / runs.REPORT
    path.write_text("\n".join(lines) + "\n")
    return path
