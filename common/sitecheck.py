"""What a folder of ECG records holds and what is wrong with it, without changing anything.

Every record is read as training would read it, so a clean check means a clean ``prepare``.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common import sources
from common.labels import LabelSpace
from common.record import LEADS, RecordError

FLAT_MV = 1e-3  # a lead whose standard deviation stays below 1 µV carries no signal


@dataclass
class SiteReport:
    root: str
    format: str
    space: str
    labels: tuple[str, ...]
    found: int = 0
    readable: int = 0
    skipped: list[dict] = field(default_factory=list)
    positives: dict[str, int] = field(default_factory=dict)
    annotated: dict[str, int] = field(default_factory=dict)
    sampling_rates: dict[str, int] = field(default_factory=dict)
    durations_s: dict[str, float] = field(default_factory=dict)
    flat_leads: dict[str, list[str]] = field(default_factory=dict)  # lead -> record ids
    unmapped_codes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    def to_text(self) -> str:
        lines = [
            f"{self.root}  ({self.format})",
            f"records: {self.found} found, {self.readable} readable, {len(self.skipped)} skipped",
        ]
        if self.sampling_rates:
            rates = ", ".join(f"{hz} Hz x{n}" for hz, n in sorted(self.sampling_rates.items()))
            d = self.durations_s
            lines.append(f"sampling rates: {rates}")
            lines.append(
                f"durations (s): min {d['min']:.1f}, median {d['median']:.1f}, max {d['max']:.1f}"
            )
        lines.append(f"leads: {', '.join(LEADS)} (mapped from the files' own names)")
        lines.append(f"labels ({self.space}):      positives  annotated")
        for label in self.labels:
            lines.append(f"  {label:10s} {self.positives[label]:16d} {self.annotated[label]:10d}")
        if self.unmapped_codes:
            top = sorted(self.unmapped_codes.items(), key=lambda kv: -kv[1])[:10]
            lines.append(
                "codes outside the label space (top 10): " + ", ".join(f"{c} x{n}" for c, n in top)
            )
        for lead, ids in self.flat_leads.items():
            shown = ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
            lines.append(f"flat lead {lead}: {len(ids)} record(s): {shown}")
        for s in self.skipped:
            lines.append(f"skipped {s['record_id']}: {s['path']}: {s['reason']}")
        return "\n".join(lines)


def _mapped(code: str, known: set[str], hierarchical: bool) -> bool:
    """Whether ``code`` means a label; in a hierarchical coding '3.2.1.4' is mapped by '3.2.1'."""
    if code in known:
        return True
    return hierarchical and any(code.startswith(k + ".") for k in known)


def check_site(
    root: Path, fmt: str | None = None, space: LabelSpace | None = None, rate: int | None = None
) -> SiteReport:
    root = Path(root)
    fmt = fmt or sources.detect_format(root)
    space = space or LabelSpace.load("seed6")
    scan = sources.scan(root, fmt, **({"rate": rate} if rate else {}))
    report = SiteReport(
        str(root), fmt, space.name, space.labels, found=len(scan.refs) + len(scan.problems)
    )
    problems: list[RecordError] = list(scan.problems)
    positives = np.zeros(len(space))
    annotated = np.zeros(len(space))
    rates: Counter = Counter()
    durations, unmapped = [], Counter()
    flat: dict[str, list[str]] = {}
    bar = tqdm(scan.refs, desc="check", unit="rec", disable=not sys.stderr.isatty())
    for ref in bar:
        try:
            rec = sources.read_record(ref)
        except RecordError as err:
            problems.append(err)
            continue
        except Exception as exc:  # one record never stops the check (MemoryError included)
            problems.append(RecordError.unexpected(ref.record_id, ref.path, exc))
            continue
        info = rec.info
        y, mask = space.encode(info.codes, info.coding)
        positives += y
        annotated += mask
        known = space.known_codes(info.coding)
        nested = info.coding in space.hierarchical
        unmapped.update(c for c in info.codes if not _mapped(c, known, nested))
        rates[f"{rec.fs:g}"] += 1
        durations.append(rec.duration_s)
        for lead, std in zip(LEADS, rec.signal.std(axis=1), strict=True):
            if std < FLAT_MV:
                flat.setdefault(lead, []).append(rec.record_id)
    report.readable = len(durations)
    report.skipped = [
        {"record_id": e.record_id, "path": e.path, "reason": e.reason} for e in problems
    ]
    report.positives = {lab: int(v) for lab, v in zip(space.labels, positives, strict=True)}
    report.annotated = {lab: int(v) for lab, v in zip(space.labels, annotated, strict=True)}
    report.sampling_rates = dict(rates)
    if durations:
        report.durations_s = {
            "min": float(np.min(durations)),
            "median": float(np.median(durations)),
            "max": float(np.max(durations)),
        }
    report.flat_leads = flat
    report.unmapped_codes = dict(unmapped)
    return report
