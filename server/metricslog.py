"""A run's metrics as two JSONL files: ``metrics.jsonl``, one short line per phase of every
round (aggregates, failures, timings, and the spread of the sites' scalar metrics), and
``site_metrics.jsonl``, one line per site per round and phase (what it replied, where it ran).

With 1,000 sites a round's per-site metrics are tens of kB: in one line each they made
metrics.jsonl unreadable. Readers get the entries whole (``read_entries``: each line with its
``sites`` and ``placement`` joined back), from this layout or from lines that still hold them.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from common import protocol

SITE_METRICS = "site_metrics.jsonl"  # next to metrics.jsonl
PER_SITE = ("sites", "placement")  # what moves to the site file


def site_file(metrics: Path) -> Path:
    return metrics.with_name(SITE_METRICS)


def _scalar(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def spread(sites: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Per scalar metric over the sites that define it: min, median and max (4 digits)."""
    values: dict[str, list[float]] = {}
    for metrics in sites.values():
        for key, value in metrics.items():
            if _scalar(value):
                values.setdefault(key, []).append(float(value))
    return {
        key: {
            "min": round(min(v), 4),
            "median": round(statistics.median(v), 4),
            "max": round(max(v), 4),
        }
        for key, v in values.items()
    }


def split(entry: dict) -> tuple[dict, list[dict]]:
    """An entry as its metrics.jsonl line and its site_metrics.jsonl lines."""
    sites, where = entry.get("sites") or {}, entry.get("placement") or {}
    line = {k: v for k, v in entry.items() if k not in PER_SITE}
    if "sites" in entry:
        line["n_sites"] = len(sites)
        line["per_site"] = spread(sites)
    key = {"round": entry["round"], "phase": entry["phase"]}
    site_lines = []
    for name, metrics in sites.items():
        placed = {"placement": where[name]} if name in where else {}
        site_lines.append({**key, "site": name, "metrics": metrics, **placed})
    return line, site_lines


def _lines(path: Path) -> list[dict]:
    """The JSON objects of a JSONL file; a line being written or malformed is left out."""
    if not path.exists():
        return []
    found = []
    for text in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(text)
            if isinstance(value, dict):
                found.append(value)
    return found


def join(lines: list[dict], site_lines: Iterable[dict]) -> list[dict]:
    """Each metrics.jsonl line with its sites' metrics (and placement) back in it; a line that
    holds its own ``sites`` (written before the split) keeps them."""
    per_key: dict[tuple, dict[str, dict]] = {}
    for s in site_lines:
        if isinstance(s.get("site"), str) and isinstance(s.get("metrics"), dict):
            per_key.setdefault((s.get("round"), s.get("phase")), {})[s["site"]] = s
    out = []
    for line in lines:
        if "sites" in line or "n_sites" not in line:  # written whole, or has no sites
            out.append(line)
            continue
        found = per_key.get((line.get("round"), line.get("phase")), {})
        where = {n: s["placement"] for n, s in found.items() if "placement" in s}
        out.append(
            {**line, "sites": {n: s["metrics"] for n, s in found.items()}}
            | ({"placement": where} if where else {})
        )
    return out


def read_entries(metrics: Path) -> list[dict]:
    """Every entry of the run whose metrics.jsonl is ``metrics``, whole."""
    return join(_lines(metrics), _lines(site_file(metrics)))


def _append(path: Path, lines: list[dict]) -> None:
    """One write per call: a reader never sees half of what a phase wrote."""
    if lines:
        with open(path, "a") as fh:
            fh.write("".join(json.dumps(x) + "\n" for x in lines))


class MetricsLog:
    """A run's metrics log, appended as it happens: a phase's site lines first, then its line
    in metrics.jsonl, so a reader that sees the line finds every site of it."""

    def __init__(self, path: Path, on_write: Callable[[dict], None] | None = None) -> None:
        self.path = path
        self.on_write = on_write  # e.g. the experiment's tracking sinks (server/tracking.py)

    def write(self, entry: dict) -> None:
        entry = {**entry, "time": round(time.time(), 3)}
        line, site_lines = split(entry)
        _append(site_file(self.path), site_lines)
        _append(self.path, [line])
        if self.on_write is not None:
            self.on_write(entry)

    def truncate_after(self, rnd: int) -> None:
        """Forget entries of rounds after ``rnd`` and the fine-tuning (a resumed run redoes
        them), in both files."""

        def keep(e: dict) -> bool:
            kept_round = isinstance(e.get("round"), int) and e["round"] <= rnd
            return kept_round and e.get("phase") != protocol.Phase.FINETUNE

        for path in (self.path, site_file(self.path)):
            kept = [e for e in _lines(path) if keep(e)]
            path.write_text("".join(json.dumps(e) + "\n" for e in kept))

    def read(self) -> list[dict]:
        return read_entries(self.path)
