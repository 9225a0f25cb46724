"""The dashboard over run folders, the coordinator's and simulations' alike: the run list, a page
per run (status, curves per round and site, failures with reasons, privacy, partition,
fine-tuning), and 2-4 runs compared. It only reads the folders; a page redraws when they change.
Above ``sitesummary.SUMMARY_ABOVE`` sites a run page shows the sites' distribution and the top and
bottom sites instead of a row or line per site, and links the files that hold every site's rows;
failures and the run list's sites are counted and grouped by reason, a few of them named.
"""

from __future__ import annotations

import functools
import math
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote, unquote

from dash import Dash, Input, Output, dcc, html
from flask import Response, abort, send_file

from common import protocol
from common.dashboard import Link, create_app, file_signature, table
from common.errors import EcgflError
from server import runs, sitesummary
from server.report import failure_summary, finetune_table, rounds_table
from server.runs import (
    RunFolder,
    last_seen,
    last_update,
    note_seen,
    partition_counts,
    run_folders,
)
from server.runs import entries as run_entries  # pages name their entries `entries`

if TYPE_CHECKING:  # the simulations' dashboard starts without the coordinator's modules
    from server.coordinator import CoordinatorConfig

FILES = (runs.REPORT, "simulation.md", runs.EXPERIMENT, "config.yaml", runs.FAILURES)
# Served too, linked from a page that summarises its sites: where every site's rows are.
SITE_FILES = (
    runs.SITE_METRICS,
    runs.SUMMARY,
    runs.SITES_CSV,
    runs.PARTITION_CSV,
    runs.PARTITION_JSON,
)
MAX_COMPARE = 4
MAX_SITE_LINES = 12
POLL_S = 15.0  # how often the coordinator's dashboard asks its SuperLink
SITE_LINE = {"width": 1}
GLOBAL_LINE = {"width": 3}


class Catalog:
    """The runs under the given paths (each a run folder or a folder of runs), found again on
    every page so that a new run appears."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def runs(self) -> dict[str, RunFolder]:
        found: dict[str, RunFolder] = {}
        for root in self.paths:
            own = (root / runs.EXPERIMENT).is_file()
            for folder in [RunFolder(root)] if own else run_folders(root):
                key = folder.name if folder.name not in found else f"{folder.name}@{root.name}"
                found.setdefault(key, folder)
        return found


def number(value: object, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def value(metrics: dict, key: str) -> float | None:
    """A metric as a float; None when absent or not a number (NaN included: sites are ranked)."""
    v = metrics.get(key)
    if not isinstance(v, int | float) or isinstance(v, bool) or v != v:
        return None
    return float(v)


def file_link(run_id: str, name: str) -> html.A:
    return html.A(name, href=f"/files/{quote(run_id, safe='')}/{name}")


def every_site(run_id: str, folder: RunFolder, what: str, names: tuple[str, ...]) -> html.P:
    """A summary's line saying which of the run's files hold every site's rows, linked."""
    found = [n for n in names if (folder.path / n).is_file()]
    items: list = [f"Every site's {what}: "]
    for i, name in enumerate(found):
        items += [", " if i else "", file_link(run_id, name)]
    return html.P(items if found else [*items, "not written yet"], className="every-site")


def spread_table(columns: dict[str, tuple[list, int]], table_id: str) -> dcc.Markdown:
    """Per row a quantity's distribution over the sites (``sitesummary.quartiles``); each row
    is (values, digits shown)."""
    rows = []
    for name, (values, digits) in columns.items():
        q = sitesummary.quartiles(values)
        stats = ("mean", "min", "q1", "median", "q3", "max")
        rows.append([name, q["n"], *(number(q[k], digits) for k in stats)])
    header = ["", "sites", "mean", "min", "Q1", "median", "Q3", "max"]
    return table(header, rows, table_id)


def ends_tables(
    scores: dict[str, float | None], by: str, header: list[str], row: dict, table_id: str
) -> list:
    """The ``SHOWN`` sites with the highest and the lowest ``scores``, with their rows
    (site -> cells)."""
    top, bottom = sitesummary.ends(scores)
    return [
        html.P(f"The {len(top)} sites with the highest {by}:"),
        table(header, [row[s] for s in top], f"{table_id}-top"),
        html.P(f"The {len(bottom)} with the lowest:"),
        table(header, [row[s] for s in bottom], f"{table_id}-bottom"),
    ]


def status(folder: RunFolder, entries: list[dict], flower: dict[int, str] | None = None) -> str:
    """finished or stopped; else what the coordinator's SuperLink says of the run (``flower``:
    Flower run id -> state), or, without one (simulations), when the run last wrote."""
    if (folder.path / runs.SUMMARY).exists():
        return folder.state({})
    done = max((e["round"] for e in entries if e["phase"] == protocol.Phase.TRAIN), default=0)
    progress = f"round {done} of {folder.rounds or '?'}"
    if flower:
        return f"{folder.state(flower)}: {progress}"
    when = last_update(folder.path)
    written = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if when else "nothing yet"
    return f"running (or interrupted): {progress}; last write {written}"


class Federation:
    """What only the coordinator's SuperLink knows: which hospitals are connected, and the state
    of its runs. Asked every ``POLL_S`` in the background, so that no page waits on flwr."""

    def __init__(self, cfg: CoordinatorConfig) -> None:
        self.cfg = cfg
        self.flower: dict[int, str] = {}
        self.hospitals = "Asking the SuperLink..."

    def start(self) -> Federation:
        def poll() -> None:
            while True:
                self.refresh()
                time.sleep(POLL_S)

        threading.Thread(target=poll, daemon=True).start()
        return self

    def refresh(self) -> None:
        from server import coordinator
        from server.commands.status import hospitals_table

        try:
            nodes = coordinator.flwr_json(self.cfg, "supernode", "list", coordinator.CONNECTION)
            self.flower = coordinator.flower_runs(self.cfg)
        except (EcgflError, OSError, subprocess.SubprocessError, LookupError, ValueError) as exc:
            # down, not started, or an answer of another shape: the poller must outlive it
            self.flower = {}
            self.hospitals = f"The SuperLink did not answer: {exc}"
            return
        seen = last_seen(run_folders(self.cfg.state / "runs"))
        self.hospitals = hospitals_table(self.cfg, nodes.get("nodes", []), seen)

    def section(self) -> list:
        return [html.H2("Hospitals"), dcc.Markdown(self.hospitals, id="hospitals")]


def site_series(entries: list[dict], phase: str, key: str) -> dict[str, tuple[list, list]]:
    """Site -> (rounds, values) of one metric."""
    series: dict[str, tuple[list, list]] = {}
    for e in entries:
        if e["phase"] != phase:
            continue
        for site, metrics in e["sites"].items():
            xs, ys = series.setdefault(site, ([], []))
            xs.append(e["round"])
            ys.append(value(metrics, key))
    return series


def line(x: list, y: list, name: str, **style) -> dict:
    """A plotly line as plain data: plotly's own objects validate every point, which takes
    longer than drawing the page."""
    return {"type": "scatter", "x": x, "y": y, "name": name, **style}


def site_traces(series: dict[str, tuple[list, list]], suffix: str = "") -> list[dict]:
    """One thin line per site; past MAX_SITE_LINES, all sites as one grey trace (named on
    hover): a hundred traces of their own would take the browser seconds to draw; past
    SUMMARY_ABOVE, their median and inter-quartile band (``band``)."""
    if sitesummary.summarised(len(series)):
        return band(series, suffix)
    if len(series) <= MAX_SITE_LINES:
        return [
            line(xs, ys, f"{site}{suffix}", line=SITE_LINE, opacity=0.6)
            for site, (xs, ys) in sorted(series.items())
        ]
    x: list = []
    y: list = []
    names: list = []
    for site, (xs, ys) in sorted(series.items()):
        x += [*xs, None]
        y += [*ys, None]
        names += [site] * len(xs) + [None]
    return [
        line(
            x,
            y,
            f"{len(series)} sites{suffix}",
            text=names,
            line={"width": 1, "color": "rgba(120,120,120,0.35)"},
            mode="lines",
            hovertemplate="%{text}: %{y:.3f}<extra>round %{x}</extra>",
        )
    ]


def band(series: dict[str, tuple[list, list]], suffix: str = "") -> list[dict]:
    """Per round, the median over the sites that reported in it and the band from their first to
    their third quartile: 1,000 grey lines are a grey smear, and megabytes to the browser."""
    per_round: dict[int, list] = {}
    for xs, ys in series.values():
        for x, y in zip(xs, ys, strict=True):
            per_round.setdefault(x, []).append(y)
    rounds = sorted(per_round)
    q = [sitesummary.quartiles(per_round[r]) for r in rounds]
    edge = {"line": {"width": 0}, "mode": "lines", "hoverinfo": "skip"}
    return [
        line(rounds, [s["q1"] for s in q], f"sites' Q1{suffix}", showlegend=False, **edge),
        line(
            rounds,
            [s["q3"] for s in q],
            f"sites' Q1-Q3{suffix}",
            fill="tonexty",
            fillcolor="rgba(120,120,120,0.25)",
            **edge,
        ),
        line(
            rounds,
            [s["median"] for s in q],
            f"median of {len(series)} sites{suffix}",
            text=[s["n"] for s in q],
            line={"width": 1.5, "color": "rgb(90,90,90)"},
            hovertemplate="median of %{text} sites: %{y:.3f}<extra>round %{x}</extra>",
        ),
    ]


def figure(title: str, ytitle: str, traces: list[dict], revision: str) -> dcc.Graph:
    last = max((x for t in traces for x in t["x"] if x is not None), default=1)
    layout = {
        "title": {"text": title, "x": 0.02, "xanchor": "left"},
        "xaxis": {"title": {"text": "round"}, "tick0": 1, "dtick": max(1, math.ceil(last / 10))},
        "yaxis": {"title": {"text": ytitle}},
        "height": 380,
        "margin": {"l": 50, "r": 10, "t": 40, "b": 40},
        "uirevision": revision,  # keeps the reader's zoom when new rounds arrive
        # plotly lists traces in reverse once one fills to the next (the sites' band)
        "legend": {"font": {"size": 10}, "traceorder": "normal"},
    }
    return dcc.Graph(
        figure={"data": traces, "layout": layout},
        style={"flex": "1 1 600px"},
        config={"displaylogo": False},
    )


def curves(run_id: str, entries: list[dict], rows: list[dict]) -> html.Div:
    """Loss and validation macro AUC per round: each site thin (or the sites' median and band),
    the aggregate bold on top (drawn last, listed first)."""
    rounds = [r["round"] for r in rows]
    bold = {"line": GLOBAL_LINE, "legendrank": 1}
    loss = site_traces(site_series(entries, "train", protocol.TRAIN_LOSS), " train") + [
        line(rounds, [r.get("train_loss") for r in rows], "train loss (mean)", **bold),
        line(rounds, [r.get("val_loss") for r in rows], "val loss (mean)", **bold),
    ]
    auc = site_traces(site_series(entries, "evaluate", protocol.MACRO_AUC))
    auc.append(line(rounds, [r.get("val_macro_auc") for r in rows], "global", **bold))
    return html.Div(
        [
            figure("Loss per round", "loss", loss, run_id),
            figure("Validation macro AUC per round", "macro AUC", auc, run_id),
        ],
        style={"display": "flex", "flexWrap": "wrap"},
    )


def privacy_section(run_id: str, entries: list[dict]) -> list:
    """Central DP epsilon and the sites' DP-SGD epsilon after each round, and budget stops."""
    trains = [e for e in entries if e["phase"] == protocol.Phase.TRAIN]
    central = [(e["round"], e["privacy"]) for e in trains if isinstance(e.get("privacy"), dict)]
    traces = []
    if central:
        epsilon = [value(p, "epsilon") for _, p in central]
        traces.append(line([r for r, _ in central], epsilon, "central DP", line=GLOBAL_LINE))
        budget = value(central[-1][1], "max-epsilon")
        if budget is not None:
            ends = [central[0][0], central[-1][0]]
            traces.append(line(ends, [budget, budget], "budget", line={"dash": "dash"}))
    dp_sgd = site_series(entries, "train", protocol.DP_EPSILON)
    traces += site_traces(
        {s: v for s, v in dp_sgd.items() if any(y is not None for y in v[1])}, " DP-SGD"
    )
    stops = [e for e in entries if e["phase"] == protocol.Phase.PRIVACY_STOP]
    if not traces and not stops:
        return []
    out: list = [html.H2("Privacy budget")]
    if traces:
        out.append(figure("Epsilon spent after each round", "epsilon", traces, run_id))
    out += [html.P(f"Stopped before round {e['round']}: {e.get('reason', '')}") for e in stops]
    return out


def partition_section(run_id: str, folder: RunFolder) -> list:
    """Positives per label and site as a heatmap; above SUMMARY_ABOVE sites, the spread of the
    sites' sizes and label prevalences, and the heatmap of the largest and smallest sites."""
    counts = partition_counts(folder.path)
    if not counts:
        return []
    labels = [k for k in next(iter(counts.values())) if k != "records"]
    if not sitesummary.summarised(len(counts)):
        return [html.H2("Partition"), partition_map(counts, list(counts), labels)]
    size = {s: counts[s].get("records", 0) for s in counts}
    largest, smallest = sitesummary.ends(size)
    spread = {"records per site": (list(size.values()), 0)}
    for label in labels:
        prevalence = [counts[s].get(label, 0) / n for s, n in size.items() if n]
        spread[f"{label} prevalence"] = (prevalence, 3)
    title = f"Positives at the {len(largest)} largest and {len(smallest)} smallest of"
    return [
        html.H2("Partition"),
        html.P(f"{len(counts)} sites: their sizes and label prevalences (positives / records)."),
        spread_table(spread, "partition"),
        every_site(
            run_id, folder, "records and positives", (runs.PARTITION_CSV, runs.PARTITION_JSON)
        ),
        partition_map(counts, largest + smallest[::-1], labels, f"{title} {len(counts)} sites"),
    ]


def partition_map(
    counts: dict[str, dict[str, int]], sites: list[str], labels: list[str], title: str = ""
) -> dcc.Graph:
    """A row per site of ``sites``: its positives per label, coloured by prevalence."""
    text = [[counts[s].get(label, 0) for label in labels] for s in sites]
    heatmap = {
        "type": "heatmap",
        "z": [
            [n / max(counts[s].get("records", 0), 1) for n in row]
            for s, row in zip(sites, text, strict=True)
        ],
        "x": labels,
        "y": [f"{s} (n={counts[s].get('records', '?')})" for s in sites],
        "text": text,
        "texttemplate": "%{text}",
        "colorscale": "Viridis",
        "colorbar": {"title": {"text": "prevalence"}},
    }
    layout = {
        "title": {"text": f"{title or 'Positives per site'} (colour: prevalence)"},
        "height": max(300, 100 + 22 * len(sites)),
        "yaxis": {"autorange": "reversed"},
        "margin": {"l": 140, "r": 10, "t": 40, "b": 60},
    }
    fig = {"data": [heatmap], "layout": layout}
    return dcc.Graph(figure=fig, config={"displaylogo": False})


FINETUNE_COLUMNS = (  # (header, metric, digits)
    ("train", protocol.TRAIN_EXAMPLES, 0),
    ("test", protocol.NUM_EXAMPLES, 0),
    ("global AUC", protocol.BEFORE_MACRO_AUC, 3),
    ("global F1", protocol.BEFORE_MACRO_F1, 3),
    ("tuned AUC", protocol.AFTER_MACRO_AUC, 3),
    ("tuned F1", protocol.AFTER_MACRO_F1, 3),
)


def finetune_section(entries: list[dict], run_id: str, folder: RunFolder) -> list:
    """A row per site; above SUMMARY_ABOVE sites, the scores' spread and the top and bottom
    sites by tuned AUC (as server/report.py writes it)."""
    sites, failed, _ = finetune_table(entries)
    if not sites and not failed:
        return []
    title = html.H2("Fine-tuning at each site (local test split)")
    header = ["site", *(h for h, _, _ in FINETUNE_COLUMNS)]
    row = {
        name: [name, *(number(m.get(key), digits) for _, key, digits in FINETUNE_COLUMNS)]
        for name, m in sites.items()
    }
    if not sitesummary.summarised(len(sites) + len(failed)):
        rows = [row[name] for name in sorted(sites)]
        rows += [[f["site"], f"failed: {f['reason']}", "", "", "", "", ""] for f in failed]
        return [title, table(header, rows, "finetune")]
    spread = {
        h: ([value(m, key) for m in sites.values()], digits) for h, key, digits in FINETUNE_COLUMNS
    }
    tuned = {name: value(m, protocol.AFTER_MACRO_AUC) for name, m in sites.items()}
    failures = [html.P("Failed:"), dcc.Markdown("\n".join(failure_summary(failed)))]
    return [
        title,
        html.P(f"{len(sites)} sites fine-tuned, {len(failed)} failed."),
        spread_table(spread, "finetune"),
        every_site(run_id, folder, "scores", (runs.SITE_METRICS, runs.SUMMARY, runs.SITES_CSV)),
        *ends_tables(tuned, "tuned AUC", header, row, "finetune"),
        *(failures if failed else []),
    ]


def sites_section(entries: list[dict], run_id: str, folder: RunFolder) -> list:
    """One row per site: how many rounds it answered and failed, its latest scores; above
    SUMMARY_ABOVE sites, their spread and the top and bottom sites by val macro AUC."""
    seen: dict[str, dict] = {}
    for e in entries:
        if e["phase"] not in (protocol.Phase.TRAIN, protocol.Phase.EVALUATE):
            continue
        for site, m in e["sites"].items():
            row = seen.setdefault(site, {"train": 0, "failed": set()})
            row["last"] = e["round"]
            if e["phase"] == protocol.Phase.TRAIN:
                row["train"] += 1
                row["loss"] = value(m, protocol.TRAIN_LOSS)
                row["up"] = m.get(protocol.BYTES_UP)
            else:
                row["auc"] = value(m, protocol.MACRO_AUC)
        for f in e["failed"]:
            row = seen.setdefault(f["site"], {"train": 0, "failed": set()})
            row["failed"].add(e["round"])
            row["reason"] = f"round {e['round']}: {f['reason']}"
    row = {
        site: [
            site,
            r["train"],
            len(r["failed"]),
            r.get("last", "-"),
            number(r.get("loss")),
            number(r.get("auc")),
            number(r.get("up"), 0),
            r.get("reason", ""),
        ]
        for site, r in seen.items()
    }
    header = [
        "site",
        "rounds trained",
        "rounds failed",
        "last round",
        "train loss",
        "val macro AUC",
    ]
    header += ["bytes up (last)", "last failure"]
    if not sitesummary.summarised(len(seen)):
        return [html.H2("Sites"), table(header, [row[s] for s in sorted(seen)], "sites")]
    spread = {
        "rounds trained": ([r["train"] for r in seen.values()], 1),
        "rounds failed": ([len(r["failed"]) for r in seen.values()], 1),
        "train loss (last)": ([r.get("loss") for r in seen.values()], 3),
        "val macro AUC (last)": ([r.get("auc") for r in seen.values()], 3),
        "bytes up (last)": ([r.get("up") for r in seen.values()], 0),
    }
    auc = {site: r.get("auc") for site, r in seen.items()}
    return [
        html.H2("Sites"),
        html.P(f"{len(seen)} sites answered or failed; their latest values:"),
        spread_table(spread, "sites"),
        every_site(run_id, folder, "replies, round by round", (runs.SITE_METRICS,)),
        *ends_tables(auc, "latest val macro AUC", header, row, "sites"),
    ]


def failures_section(entries: list[dict], run_id: str, folder: RunFolder) -> list:
    """A row per failed reply; above SUMMARY_ABOVE of them, their reasons, each with how many
    sites gave it and a few of them (``failure_summary``), and failures.log linked."""
    rows = [[e["round"], e["phase"], f["site"], f["reason"]] for e in entries for f in e["failed"]]
    stopped = [e for e in entries if e["phase"] == protocol.Phase.STOPPED]
    if not rows and not stopped:
        return []
    out: list = [html.H2("Failed or refused sites")]
    out += [
        html.P(f"The run stopped in round {e['round']}: {e.get('reason', '')}", className="stop")
        for e in stopped
    ]
    if rows and not sitesummary.summarised(len(rows)):
        out.append(table(["round", "phase", "site", "reason"], rows, "failures"))
    elif rows:
        # a site that fails both phases of a round counts once under its reason
        failed = {(f["site"], f["reason"]): f for e in entries for f in e["failed"]}
        sites = {site for site, _ in failed}
        in_rounds = len({e["round"] for e in entries if e["failed"]})
        out += [
            html.P(
                f"{len(rows)} failed replies from {len(sites)} sites in {in_rounds} round(s),"
                " by reason:"
            ),
            dcc.Markdown("\n".join(failure_summary(list(failed.values()))), id="failures"),
        ]
        if (folder.path / runs.FAILURES).is_file():  # only error replies: not a timeout
            out.append(every_site(run_id, folder, "error replies in full", (runs.FAILURES,)))
    return out


def rounds_section(rows: list[dict]) -> list:
    """A row per round; above SUMMARY_ABOVE sites in the run, a round's sites are a count and
    its failures the first SHOWN (all are in the failures' section, by reason)."""
    every = {s for r in rows for s in (*r.get("sites", []), *r.get("failed_sites", []))}
    many = sitesummary.summarised(len(every))

    def sites(names: list[str]) -> str:
        if many:
            return str(len(names))
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        return f"{len(names)}: {shown}" if names else "-"

    def failed(lines: list[str]) -> str:
        lines = list(dict.fromkeys(lines))  # a site down fails both phases
        more = len(lines) - sitesummary.SHOWN if many else 0
        if more > 0:
            return "; ".join(lines[: sitesummary.SHOWN]) + f"; and {more} more (below)"
        return "; ".join(lines) or "-"

    body = [
        [
            r["round"],
            sites(r.get("sites", [])),
            number(r.get("train_loss")),
            number(r.get("val_loss")),
            number(r.get("val_macro_auc")),
            number(r.get("seconds"), 1),
            failed(r["failed"]),
        ]
        for r in rows
    ]
    header = ["round", "sites", "train loss", "val loss", "val macro AUC", "seconds", "failed"]
    return [html.H2("Rounds"), table(header, body, "rounds")]


def links(run_id: str, folder: RunFolder) -> html.P:
    files = [n for n in FILES if (folder.path / n).is_file()]
    items: list = [dcc.Link("all runs", href="/")]
    for name in files:
        items += [" | ", file_link(run_id, name)]
    return html.P(items)


def run_page(run_id: str, folder: RunFolder, flower: dict[int, str] | None = None) -> list:
    entries = entries_of(folder)
    rows = rounds_table(entries)
    return [
        html.H1(f"Run {run_id}"),
        links(run_id, folder),
        html.P(["Status: ", html.B(status(folder, entries, flower), id="status")]),
        curves(run_id, entries, rows),
        *rounds_section(rows),
        *failures_section(entries, run_id, folder),
        *sites_section(entries, run_id, folder),
        *privacy_section(run_id, entries),
        *finetune_section(entries, run_id, folder),
        *partition_section(run_id, folder),
    ]


def list_page(
    runs: dict[str, RunFolder], roots: list[Path], federation: Federation | None = None
) -> list:
    known = federation.section() if federation else []
    if not runs:
        where = ", ".join(map(str, roots))
        return [
            html.H1("ecgfl runs"),
            *known,
            html.P(f"No run folder (with experiment.yaml) in {where}."),
        ]
    flower = federation.flower if federation else None
    rows, seen_in, reasons = [], {}, {}
    for run_id, folder in runs.items():  # oldest first: where a site was seen last wins
        entries = entries_of(folder)
        note_seen(seen_in.setdefault(run_id, {}), run_id, entries)
        reasons |= {f["site"]: f["reason"] for e in entries for f in e["failed"]}
        trained = {s for e in entries for s in e["sites"] if e["phase"] == protocol.Phase.TRAIN}
        failures = sum(len(e["failed"]) for e in entries)
        rows.append(
            [
                Link(run_id, f"/run/{quote(run_id, safe='')}"),
                status(folder, entries, flower),
                f"{max((e['round'] for e in entries if e['phase'] == 'train'), default=0)}"
                f" of {folder.rounds or '?'}",
                len(trained),
                failures,
            ]
        )
    return [
        html.H1("ecgfl runs"),
        *known,
        html.H2("Runs"),
        table(["run", "status", "rounds", "sites", "failed replies"], rows, "runs"),
        html.H2(f"Compare 2 to {MAX_COMPARE} runs"),
        dcc.Checklist(
            id="pick",
            options=list(runs),
            value=[],
            persistence=True,
            inline=True,
            inputStyle={"marginLeft": "1em"},
        ),
        html.P(dcc.Link("compare", id="compare-link", href="/compare")),
        *seen_section(runs, seen_in, reasons),
    ]


def seen_section(
    folders: dict[str, RunFolder], seen_in: dict[str, dict[str, str]], reasons: dict[str, str]
) -> list:
    """Where each site last answered or failed (``seen_in``: run -> site -> where, oldest run
    first; ``reasons``: site -> its last failure's); above SUMMARY_ABOVE sites, how many answered
    and failed there, the failed ones' reasons grouped and the first SHOWN of them, and the runs
    whose pages hold the others."""
    seen: dict[str, str] = {}
    last_run: dict[str, str] = {}
    for run_id, where in seen_in.items():
        seen |= where
        last_run |= dict.fromkeys(where, run_id)
    title = html.H2("Sites: the last round each answered or failed")
    if not sitesummary.summarised(len(seen)):
        return [title, table(["site", "last seen"], sorted(map(list, seen.items())), "seen")]
    failing = sorted(s for s, where in seen.items() if where.endswith("(failed)"))  # note_seen's
    out: list = [
        title,
        html.P(
            f"{len(seen)} sites: {len(seen) - len(failing)} answered when last asked,"
            f" {len(failing)} failed."
        ),
    ]
    if failing:
        shown = failing[: sitesummary.SHOWN]
        out += [
            html.P("Why those failed:"),
            dcc.Markdown(
                "\n".join(failure_summary([{"site": s, "reason": reasons[s]} for s in failing])),
                id="seen-reasons",
            ),
            html.P(f"The first {len(shown)} of them:"),
            table(
                ["site", "last seen", "reason"], [[s, seen[s], reasons[s]] for s in shown], "seen"
            ),
        ]
    items: list = ["Each site's latest rounds are on the page of the run it was last seen in: "]
    count = Counter(last_run.values())
    for i, run_id in enumerate(r for r in seen_in if count[r]):
        n = count[run_id]
        items += [", " if i else "", dcc.Link(run_id, href=f"/run/{quote(run_id, safe='')}")]
        if (folders[run_id].path / runs.SITE_METRICS).is_file():
            items += [f" ({n} sites; ", file_link(run_id, runs.SITE_METRICS), ")"]
        else:
            items.append(f" ({n} sites)")
    return [*out, html.P(items, className="every-site")]


def compare_page(runs: dict[str, RunFolder], chosen: list[str]) -> list:
    unknown = [r for r in chosen if r not in runs]
    if unknown or not 2 <= len(chosen) <= MAX_COMPARE:
        why = f"unknown run(s): {', '.join(unknown)}" if unknown else f"{len(chosen)} chosen"
        return [
            html.H1("Compare runs"),
            html.P(f"Pick 2 to {MAX_COMPARE} runs on the run list ({why})."),
            dcc.Link("all runs", href="/"),
        ]
    auc, loss, summary = [], [], []
    for run_id in chosen:
        rows = rounds_table(entries_of(runs[run_id]))
        xs = [r["round"] for r in rows]
        auc.append(line(xs, [r.get("val_macro_auc") for r in rows], run_id))
        loss.append(line(xs, [r.get("train_loss") for r in rows], run_id))
        last = rows[-1] if rows else {}
        summary.append(
            [
                Link(run_id, f"/run/{quote(run_id, safe='')}"),
                len(rows),
                number(last.get("train_loss")),
                number(last.get("val_macro_auc")),
            ]
        )
    key = ",".join(chosen)
    return [
        html.H1("Compare runs"),
        dcc.Link("all runs", href="/"),
        table(["run", "rounds", "last train loss", "last val macro AUC"], summary, "compare"),
        html.Div(
            [
                figure("Validation macro AUC per round", "macro AUC", auc, key),
                figure("Train loss per round (sites' mean)", "loss", loss, key),
            ],
            style={"display": "flex", "flexWrap": "wrap"},
        ),
    ]


@functools.lru_cache(maxsize=32)
def _entries(path: Path, stamp: tuple[int, int] | None) -> list[dict]:
    return run_entries(path)


def entries_of(folder: RunFolder) -> list[dict]:
    """A run's entries, read again only when metrics.jsonl changed (pages share them: read
    only)."""
    return _entries(folder.path, file_signature(folder.path / runs.METRICS))


def _run_signature(folder: RunFolder) -> tuple:
    names = (runs.METRICS, runs.SUMMARY, runs.PARTITION_JSON)
    return tuple(file_signature(folder.path / n) for n in names)


def chosen_runs(search: str) -> list[str]:
    return [r for r in parse_qs(search.lstrip("?")).get("runs", [""])[0].split(",") if r]


def build(paths: list[Path], token_file: Path | None, federation: Federation | None = None) -> Dash:
    """The app over ``paths``; ``federation`` adds what the coordinator's SuperLink knows."""
    catalog = Catalog(paths)

    def render(path: str, search: str) -> list:
        runs = catalog.runs()
        if path.startswith("/run/"):
            run_id = unquote(path[len("/run/") :])
            if run_id in runs:
                return run_page(run_id, runs[run_id], federation and federation.flower)
            return [html.H1("No such run"), html.P(run_id), dcc.Link("all runs", href="/")]
        if path == "/compare":
            return compare_page(runs, chosen_runs(search))
        return list_page(runs, catalog.paths, federation)

    def signature(path: str, search: str) -> tuple:
        runs = catalog.runs()
        if path.startswith("/run/"):
            folder = runs.get(unquote(path[len("/run/") :]))
            known = federation.flower if federation else None
            return (path, _run_signature(folder) if folder else None, known)
        shown = chosen_runs(search) if path == "/compare" else list(runs)
        files = tuple((r, _run_signature(runs[r])) for r in shown if r in runs)
        known = (federation.hospitals, federation.flower) if federation else None
        return (path, search, files, known)

    app = create_app("ecgfl runs", token_file, render, signature)

    @app.callback(Output("compare-link", "href"), Input("pick", "value"))
    def compare_link(picked: list[str] | None) -> str:
        return "/compare?runs=" + ",".join(quote(r, safe="") for r in picked or [])

    @app.server.route("/files/<run_id>/<path:name>")
    def run_file(run_id: str, name: str) -> Response:
        folder = catalog.runs().get(run_id)
        if folder is None or name not in FILES + SITE_FILES or not (folder.path / name).is_file():
            abort(404)
        # streamed: a 1,000-site run's site_metrics.jsonl is tens of MB
        return send_file((folder.path / name).absolute(), mimetype="text/plain")

    return app
