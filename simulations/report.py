"""The simulation report: per site, local-only vs global vs the site's personalised model vs
centralized, each macro AUC with its 95 % bootstrap interval over the site's test split, that
split's support, each method's mean and worst site; ``compare`` sums up several runs."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
from scipy.stats import norm

from common import protocol
from common.experiment import ExperimentConfig
from common.labels import LabelSpace
from common.metrics import CONFIDENCE, MIN_CASES, Metrics, too_few_cases, unscored_labels
from common.site import SiteData
from server import runs, sitesummary

LOCAL, CENTRAL = "local-only", "centralized + fine-tune"
RESULTS = "results.json"  # in the run folder: every number of the report, per method and site
SITES_CSV = runs.SITES_CSV  # in the run folder: every site's row as a flat table
SITES_PLOT = "sites.png"
#: (title, row key) of the compared columns; ``columns`` names them for one experiment.
COLUMNS = (
    (LOCAL, "local"),
    ("global", "before"),
    ("global + fine-tune", "after"),
    (CENTRAL, "central"),
)
FED_METRICS = {
    "before": (
        protocol.BEFORE_MACRO_AUC,
        protocol.BEFORE_MACRO_AUC_CI,
        protocol.BEFORE_MACRO_AUC_SE,
        protocol.BEFORE_MACRO_F1,
    ),
    "after": (
        protocol.AFTER_MACRO_AUC,
        protocol.AFTER_MACRO_AUC_CI,
        protocol.AFTER_MACRO_AUC_SE,
        protocol.AFTER_MACRO_F1,
    ),
}


def _num(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _interval(value) -> list[float] | None:
    """A reply's ``[low, high]`` (NaN where the site could not compute one) as a list or None."""
    if not isinstance(value, list) or len(value) != 2 or any(_num(v) is None for v in value):
        return None
    return [float(v) for v in value]


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def columns(experiment: ExperimentConfig) -> list[tuple[str, str]]:
    """(title, row key) of the table's methods. The global model of rounds that send only part
    of the model (FedRep, FedPer, FedBABU, FedBN) is another model than FedAvg's, so it is named
    with its rounds; where the sites own the rest, each scores it with its own parts
    (``_own_parts_line``)."""
    ft = experiment.finetune
    own = "global" if ft.method.local_keys is None else f"global ({ft.mode} rounds)"
    return [COLUMNS[0], (own, "before"), (f"global + {ft.mode}", "after"), COLUMNS[3]]


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


def over_seeds(values: list[float | None]) -> dict:
    """Mean and sample std (n - 1) over the seeds where a value is defined."""
    defined = [v for v in values if v is not None]
    return {
        "mean": float(np.mean(defined)) if defined else None,
        "std": float(np.std(defined, ddof=1)) if len(defined) > 1 else None,
        "n": len(defined),
    }


def spread_cell(stat: dict) -> str:
    """'0.912 ± 0.014' (no ± with one seed, '-' with none)."""
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.3f}" + ("" if stat["std"] is None else f" ± {stat['std']:.3f}")


def auc_cell(auc: float | None, ci: list[float] | None) -> str:
    """'0.912 [0.861, 0.957]': a macro AUC and its 95 % interval."""
    return _fmt(auc) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if auc is not None and ci else "")


def report_labels(experiment: dict) -> tuple[str, ...]:
    """The labels sites are finally scored on: fine-tuning's space, else pretraining's."""
    return LabelSpace.load(experiment["finetune"]["labels"] or experiment["labels"]).labels


def _support(fed: dict, labels: tuple[str, ...]) -> tuple[dict[str, int], dict[str, str]]:
    """Test positives per label, and the labels the site could not score or scored on fewer
    than ``MIN_CASES`` positives or negatives, from its reply."""
    positives, annotated = fed.get(protocol.TEST_POSITIVES), fed.get(protocol.TEST_ANNOTATED)
    if not positives or not annotated or len(positives) != len(labels):
        return {}, {}
    counts = {label: int(p) for label, p in zip(labels, positives, strict=True)}
    unscored, named = unscored_labels(labels, positives, annotated), {}
    for label, pos, ann in zip(labels, positives, annotated, strict=True):
        if label in unscored:
            named[label] = unscored[label]
        elif too_few_cases(pos, ann):
            named[label] = f"scored, too few cases: {int(pos)} of {int(ann)}"
    return counts, named


def site_rows(
    sites: list[SiteData],
    summary: dict,
    local: dict[str, Metrics],
    central: dict[str, Metrics],
) -> list[dict]:
    rows = []
    failed = {f["site"]: f["reason"] for f in summary.get("finetune_failed", [])}
    labels = report_labels(summary["experiment"])
    every_round = summary["experiment"]["federation"]["fraction_train"] == 1
    for site in sites:
        fed = summary["finetune"].get(site.name, {})
        positives, unscored = _support(fed, labels)
        row = {
            "site": site.name,
            **{f"n_{k}": int(v) for k, v in site.counts().items()},
            "failed": failed.get(site.name),
            # rounds this site was asked to train in and did not: its baselines are not
            # comparable there (a sampled run asks each site in some rounds only)
            "missed_rounds": [
                r["round"]
                for r in summary["rounds"]
                if site.name in r.get("failed_sites", [])
                or (every_round and site.name not in r.get("sites", []))
            ],
            "candidates": _candidates(fed),
            "test_positives": positives,
            "unscored": unscored,
        }
        for key, (auc, ci, se, f1) in FED_METRICS.items():
            row[f"{key}_auc"] = _num(fed.get(auc))
            row[f"{key}_auc_ci"] = _interval(fed.get(ci))
            row[f"{key}_auc_se"] = _num(fed.get(se))
            row[f"{key}_f1"] = _num(fed.get(f1))
        for key, source in (("local", local), ("central", central)):
            m = source.get(site.name)
            row[f"{key}_auc"] = m.macro_auc if m else None
            row[f"{key}_auc_ci"] = m.macro_auc_ci if m else None
            row[f"{key}_auc_se"] = m.macro_auc_se if m else None
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


def mean_interval(rows: list[dict], key: str) -> list[float] | None:
    """95 % interval of the mean over sites of ``<key>_auc``: the sites' test splits are
    independent, so the mean's standard error is sqrt(sum of the sites' bootstrap SE^2) / sites
    (normal approximation); None unless every scored site has a standard error."""
    scored = [r for r in rows if r[f"{key}_auc"] is not None]
    errors = [r[f"{key}_auc_se"] for r in scored]
    if not scored or any(e is None for e in errors):
        return None
    mean = float(np.mean([r[f"{key}_auc"] for r in scored]))
    half = norm.ppf(0.5 + CONFIDENCE / 2) * math.sqrt(sum(e * e for e in errors)) / len(scored)
    return [mean - half, mean + half]


def means(rows: list[dict]) -> dict[str, dict]:
    """Per column: the mean over sites of macro AUC (with its interval) and of macro F1."""
    return {
        key: {
            "auc": _mean(rows, f"{key}_auc"),
            "auc_ci": mean_interval(rows, key),
            "f1": _mean(rows, f"{key}_f1"),
        }
        for _, key in COLUMNS
    }


def plot_sites(rows: list[dict], path: Path, title: str) -> None:
    """Per site, each column's macro AUC with its 95 % interval as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows)), 3.8))
    width = 0.8 / len(COLUMNS)
    for i, (name, key) in enumerate(COLUMNS):
        xs, ys, lows, highs = [], [], [], []
        for j, r in enumerate(rows):
            if r[f"{key}_auc"] is None:
                continue
            ci = r[f"{key}_auc_ci"] or [r[f"{key}_auc"]] * 2
            xs.append(j + (i - (len(COLUMNS) - 1) / 2) * width)
            ys.append(r[f"{key}_auc"])
            lows.append(r[f"{key}_auc"] - ci[0])
            highs.append(ci[1] - r[f"{key}_auc"])
        ax.errorbar(xs, ys, yerr=[lows, highs], fmt="o", ms=4, capsize=2, label=name)
    ax.set_xticks(range(len(rows)), [r["site"] for r in rows], rotation=30, fontsize=8)
    ax.set_ylabel("test macro AUC (95 % bootstrap CI)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _site_line(r: dict, cols: list[tuple[str, str]] | tuple) -> str:
    cells = " | ".join(
        f"{auc_cell(r[f'{k}_auc'], r[f'{k}_auc_ci'])} | {_fmt(r[f'{k}_f1'])}" for _, k in cols
    )
    note = f" (failed: {r['failed']})" if r["failed"] else ""
    if r["missed_rounds"]:
        note += f" (not in the federation in round(s) {', '.join(map(str, r['missed_rounds']))})"
    return f"| {r['site']}{note} | {r['n_train']} | {r['n_test']} | {cells} |"


def support_lines(rows: list[dict], labels: tuple[str, ...]) -> list[str]:
    """Positives per label in each site's test split, and the labels a site could not score."""
    lines = [
        "Positives per label in each site's test split. A label without positives or negatives "
        "is not scored there and stays out of that site's macro AUC; one with fewer than "
        f"{MIN_CASES} positives or negatives is scored (its AUC is a rank among a handful) and "
        "named too:",
        "",
        "| site | " + " | ".join(labels) + " | not scored, or on too few cases |",
        "|---" * (len(labels) + 2) + "|",
    ]
    for r in rows:
        counts = " | ".join(str(r["test_positives"].get(label, "-")) for label in labels)
        missing = ", ".join(f"{k} ({v})" for k, v in r["unscored"].items()) or "-"
        lines.append(f"| {r['site']} | {counts} | {missing} |")
    return lines


def _head(cols: list[tuple[str, str]] | tuple) -> list[str]:
    head = " | ".join(f"{name} AUC [95% CI] | {name} F1" for name, _ in cols)
    return [f"| site | train | test | {head} |", "|---" * (3 + 2 * len(cols)) + "|"]


def table(rows: list[dict], cols: list[tuple[str, str]] | tuple = COLUMNS) -> list[str]:
    """The per-site table with its mean and worst-site rows."""
    lines = [*_head(cols), *(_site_line(r, cols) for r in rows)]
    avg = means(rows)
    cells = " | ".join(
        f"{auc_cell(avg[k]['auc'], avg[k]['auc_ci'])} | {_fmt(avg[k]['f1'])}" for _, k in cols
    )
    worst = [_worst(rows, f"{k}_auc") for _, k in cols]
    lows = " | ".join("- | " if w is None else f"{w[1]:.3f} ({w[0]}) | " for w in worst)
    return [*lines, f"| **mean** | | | {cells} |", f"| **worst site** (AUC) | | | {lows}|"]


def write_csv(rows: list[dict], path: Path) -> None:
    """Every site's row as a flat table (spreadsheets, pandas): counts, failure, and each
    column's macro AUC with its interval and macro F1."""
    fields = ["site", "n_train", "n_val", "n_test", "failed"]
    for _, key in COLUMNS:
        fields += [f"{key}_auc", f"{key}_auc_low", f"{key}_auc_high", f"{key}_f1"]
    with open(path, "w", newline="") as fh:
        out = csv.DictWriter(fh, fields, extrasaction="ignore")
        out.writeheader()
        for r in rows:
            flat = dict(r)
            for _, key in COLUMNS:
                ci = r[f"{key}_auc_ci"] or [None, None]
                flat[f"{key}_auc_low"], flat[f"{key}_auc_high"] = ci
            out.writerow(flat)


def _picked(rows: list[dict]) -> list[str]:
    """Under ``auto``: how many sites picked each candidate."""
    picks = Counter(
        next((n for n, c in r["candidates"].items() if c["picked"]), "-")
        for r in rows
        if r["candidates"]
    )
    if not picks:
        return []
    told = ", ".join(f"{name} {n}" for name, n in picks.most_common())
    return ["", f"Sites' picks under `finetune.mode: auto`: {told}."]


def support_summary(rows: list[dict], labels: tuple[str, ...]) -> list[str]:
    """Per label over the scored sites: test positives in all, and at how many sites it was
    not scored or scored on too few cases."""
    scored = [r for r in rows if r["test_positives"]]
    lines = [
        f"Per label over the {len(scored)} sites scored: positives in their test splits, the "
        f"sites where it could not be scored, and those where it was scored on fewer than "
        f"{MIN_CASES} positives or negatives:",
        "",
        "| label | test positives | sites not scored | sites with too few cases |",
        "|---|---|---|---|",
    ]
    for label in labels:
        why = [r["unscored"].get(label, "") for r in scored]
        few = sum(w.startswith("scored") for w in why)
        positives = sum(r["test_positives"].get(label, 0) for r in scored)
        lines.append(f"| {label} | {positives} | {sum(bool(w) for w in why) - few} | {few} |")
    return lines


def summary_lines(rows: list[dict], cols: list[tuple[str, str]]) -> list[str]:
    """Many sites: each method's macro AUC over them (its distribution, the mean's interval),
    and the top and bottom sites by the personalised model's."""
    dist = {title: [r[f"{key}_auc"] for r in rows] for title, key in cols}
    avg = means(rows)
    interval = "; ".join(
        f"{title} {auc_cell(avg[key]['auc'], avg[key]['auc_ci'])}"
        for title, key in cols
        if avg[key]["auc"] is not None
    )
    top, bottom = sitesummary.ends({r["site"]: r["after_auc"] for r in rows})
    by_name = {r["site"]: r for r in rows}
    return [
        f"{len(rows)} sites: the distribution of each method's test macro AUC over them. Every "
        f"site's row: [{SITES_CSV}]({SITES_CSV}) and [{RESULTS}]({RESULTS}) (`sites`).",
        "",
        *sitesummary.stats_table(dist, "method"),
        "",
        f"Mean over sites with its 95 % interval: {interval or '-'}.",
        "",
        f"Top {len(top)} sites by {cols[2][0]} AUC:",
        "",
        *_head(cols),
        *(_site_line(by_name[n], cols) for n in top),
        "",
        f"Bottom {len(bottom)} sites:",
        "",
        *_head(cols),
        *(_site_line(by_name[n], cols) for n in bottom),
    ]


def _per_site_body(
    rows: list[dict], experiment: ExperimentConfig, labels: tuple[str, ...], run_dir: Path
) -> list[str]:
    """The report's per-site part: every row, or at scale a summary; and its plot."""
    cols = columns(experiment)
    if sitesummary.summarised(len(rows)):
        dist = {title: [r[f"{key}_auc"] for r in rows] for title, key in cols}
        title = f"{run_dir.name}: macro AUC over {len(rows)} sites"
        sitesummary.plot_distribution(dist, run_dir / SITES_PLOT, title)
        return [*summary_lines(rows, cols), *_picked(rows), "", *support_summary(rows, labels)]
    plot_sites(rows, run_dir / SITES_PLOT, f"{run_dir.name}: macro AUC per site")
    return [*table(rows, cols), *_auto_table(rows), "", *support_lines(rows, labels)]


def _own_parts_line(experiment: ExperimentConfig) -> list[str]:
    mode = experiment.finetune.mode
    if not experiment.finetune.method.keeps_parts:
        return []
    return [
        f"The global column is the final global model of the {mode} rounds as each site "
        f"evaluated it during them: with the parts {mode} keeps at the site (never sent) in place "
        "of the coordinator's.",
        "",
    ]


def _sampled_line(summary: dict) -> list[str]:
    sampled = summary.get("finetune_sampled")
    if not sampled or sampled["sites"] >= sampled["of"]:
        return []
    return [
        f"Fine-tuned and scored: a seeded sample of {sampled['sites']} of {sampled['of']} sites "
        f"(`finetune.fraction: {sampled['fraction']:g}`); the others have no global or "
        "personalised scores.",
        "",
    ]


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
                "means": means(rows),
                "timings": timings,
                "rounds": summary["rounds"],
                "local_only": {k: m.to_dict() for k, m in local.items()},
                "centralized": {k: m.to_dict() for k, m in central.items()},
            },
            indent=1,
        )
    )
    write_csv(rows, run_dir / SITES_CSV)
    labels = report_labels(summary["experiment"])
    lines = [
        f"# Simulation {run_dir.name}",
        "",
        "Macro AUC with its 95 % bootstrap interval (1000 resamples of the site's test records, "
        "computed at the site) and macro F1 (per-class thresholds from the site's validation "
        "split) on each site's test split. The mean's interval combines the sites' bootstrap "
        "standard errors (independent splits, normal approximation). Personalisation: "
        f"`finetune.mode: {experiment.finetune.mode}`.",
        "",
        *_own_parts_line(experiment),
        *_sampled_line(summary),
        *_per_site_body(rows, experiment, labels, run_dir),
        "",
        "Timings (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()),
        "",
        "Federated rounds: [report.md](report.md) (per-round metrics, failed sites).",
        "",
        f"![macro AUC per site]({SITES_PLOT})",
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
        site_means, worst = [m["mean"] for m in per_run], [m["worst"] for m in per_run]
        sites = ", ".join(m["worst_site"] for m in per_run)
        cells = f"{spread_cell(over_seeds(site_means))} | {spread_cell(over_seeds(worst))}"
        lines.append(f"| {name} | {len(per_run)} | {cells} | {sites} |")
    return "\n".join(lines)
