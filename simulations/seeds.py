"""One simulation over several seeds: each seed its own run folder under one parent, the data
generated and prepared once (the store and caches live in the parent, keyed by spec), and a combined
report with mean ± std over seeds per column and per site.

A seed changes what ``experiment.local.seed`` changes in a single run (the global model's
initialisation, the baselines' and every site's data order) and fine-tuning's data order; the data
and the partition stay fixed.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from pathlib import Path

from simulations import report
from simulations.config import SimulationConfig
from simulations.run import run, stage


def with_seed(cfg: SimulationConfig, seed: int) -> SimulationConfig:
    """A copy of ``cfg`` whose training and fine-tuning use ``seed``."""
    seeded = copy.deepcopy(cfg)  # run() fills in federation.min_sites: no seed shares it
    ft = seeded.experiment.finetune
    seeded.experiment.local = replace(seeded.experiment.local, seed=seed)
    seeded.experiment.finetune = replace(ft, train=replace(ft.train, seed=seed))
    return seeded


def run_seeds(cfg: SimulationConfig, parent: Path, seeds: list[int], progress: bool = True) -> Path:
    """Every seed's whole simulation in ``parent/seed-<n>``; returns the combined report, which
    is rewritten as each seed finishes."""
    parent = parent.resolve()
    parent.mkdir(parents=True, exist_ok=True)
    per_seed, timings = {}, {}
    for seed in seeds:
        started = time.perf_counter()
        stage(f"seed {seed} ({seeds.index(seed) + 1} of {len(seeds)})")
        run(with_seed(cfg, seed), parent / f"seed-{seed}", progress=progress)
        per_seed[seed] = json.loads((parent / f"seed-{seed}" / "results.json").read_text())
        timings[f"seed_{seed}_s"] = round(time.perf_counter() - started, 1)
        # After every seed: a long run stopped part-way still leaves the seeds it finished.
        path = write_combined(parent, per_seed, timings)
    return path


def combine(per_seed: dict[int, dict]) -> dict:
    """Per column and per site: mean, std and n over seeds of the macro AUC and macro F1; and each
    seed's mean over sites with its interval."""
    first = next(iter(per_seed.values()))
    columns = {}
    for _, key in report.COLUMNS:
        runs = [r["means"][key] for r in per_seed.values()]
        columns[key] = {
            "auc": report.over_seeds([m["auc"] for m in runs]),
            "f1": report.over_seeds([m["f1"] for m in runs]),
            "per_seed": {str(s): r["means"][key] for s, r in per_seed.items()},
        }
    sites = {}
    for i, row in enumerate(first["sites"]):
        rows = [r["sites"][i] for r in per_seed.values()]
        sites[row["site"]] = {
            key: report.over_seeds([r[f"{key}_auc"] for r in rows]) for _, key in report.COLUMNS
        }
    return {"columns": columns, "sites": sites}


def _lines(seeds: list[int], combined: dict, first: dict, labels: tuple[str, ...]) -> list[str]:
    columns, names = combined["columns"], [name for name, _ in report.COLUMNS]
    lines = [
        "| | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
        "| mean macro AUC | "
        + " | ".join(report.spread_cell(columns[k]["auc"]) for _, k in report.COLUMNS)
        + " |",
        "| mean macro F1 | "
        + " | ".join(report.spread_cell(columns[k]["f1"]) for _, k in report.COLUMNS)
        + " |",
    ]
    for seed in seeds:
        cells = (columns[k]["per_seed"][str(seed)] for _, k in report.COLUMNS)
        lines.append(
            f"| seed {seed}: mean AUC [95% CI] | "
            + " | ".join(report.auc_cell(c["auc"], c["auc_ci"]) for c in cells)
            + " |"
        )
    lines += ["", "Per site, macro AUC mean ± std over seeds:", ""]
    lines += ["| site | test | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for row in first["sites"]:
        stats = combined["sites"][row["site"]]
        cells = " | ".join(report.spread_cell(stats[k]) for _, k in report.COLUMNS)
        lines.append(f"| {row['site']} | {row['n_test']} | {cells} |")
    return [*lines, "", *report.support_lines(first["sites"], labels)]


def write_combined(parent: Path, per_seed: dict[int, dict], timings: dict) -> Path:
    """``parent/results.json`` and ``parent/simulation.md``: the seeds side by side."""
    seeds = list(per_seed)
    combined = combine(per_seed)
    (parent / "results.json").write_text(
        json.dumps({"seeds": seeds, **combined, "timings": timings}, indent=1)
    )
    first = per_seed[seeds[0]]
    experiment = json.loads((parent / f"seed-{seeds[0]}" / "summary.json").read_text())
    lines = [
        f"# Simulation {parent.name}: {len(seeds)} seeds ({', '.join(map(str, seeds))})",
        "",
        "Mean over sites of the test macro AUC and macro F1, as mean ± sample std over seeds (a "
        "seed changes model initialisation and data order; data and sites are fixed). Each seed's "
        "own report, with 95 % bootstrap intervals per site: `seed-<n>/simulation.md`.",
        "",
        *_lines(seeds, combined, first, report.report_labels(experiment["experiment"])),
        "",
        "Timings (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()),
        "",
        *(f"Seed {s}: [report](seed-{s}/simulation.md)" for s in seeds),
        "",
        *(f"![seed {s}: macro AUC per site](seed-{s}/sites.png)" for s in seeds),
        "",
        *(f"![seed {s}: metrics per round](seed-{s}/rounds.png)" for s in seeds),
    ]
    path = parent / "simulation.md"
    path.write_text("\n".join(lines) + "\n")
    return path
