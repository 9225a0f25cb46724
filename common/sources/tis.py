"""TIS-like hospital network (ecgfl's own, docs/formats.md): an index + one CSV per record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common.config import ConfigError
from common.record import Record, RecordError
from common.sources import RecordRef, Scan
from common.sources.wfdb_signal import lead_order

INDEX = "index.csv"
REQUIRED = ("record_id", "hospital", "patient_id", "file", "diagnosis")
HEADER_KEYS = ("sampling_rate", "diagnosis", "units")
_UNITS = {"uv": 1e-3, "mv": 1.0}


def looks_like(root: Path) -> bool:
    index = root / INDEX
    if not index.is_file():
        return False
    with open(index, encoding="utf-8-sig", errors="replace") as fh:
        return "hospital" in [name.strip().strip('"') for name in fh.readline().split(",")]


def _codes(text) -> tuple[str, ...]:
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return ()
    return tuple(c.strip() for c in str(text).split(";") if c.strip())


def scan(root: Path) -> Scan:
    path = root / INDEX
    try:
        index = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc})") from exc
    missing = [c for c in REQUIRED if c not in index.columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {missing}")
    refs, problems, seen = [], [], set()
    for row in index.to_dict("records"):
        record_id = row["record_id"].strip()
        if not record_id or not row["file"].strip():
            problems.append(RecordError(record_id or "?", path, "row without record_id or file"))
            continue
        if record_id in seen:  # records are named by id downstream: a repeat would be ambiguous
            problems.append(RecordError(record_id, path, f"record_id {record_id!r} repeated"))
            continue
        seen.add(record_id)
        extra = {k: v for k, v in row.items() if k not in REQUIRED and v != ""}
        meta = {
            "patient_id": row["patient_id"].strip() or None,
            "site": row["hospital"].strip() or None,
            "hospital": row["hospital"].strip() or None,
            "codes": _codes(row["diagnosis"]),
            "coding": "tis",
            **extra,
        }
        refs.append(RecordRef(record_id, root / row["file"].strip(), "tis", meta))
    return Scan("tis", root, refs, problems)


def _split_header(record_id: str, path: Path) -> tuple[dict[str, str], int, list[str]]:
    """(key: value header, number of lines before the lead row, lead names)."""
    header: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8-sig") as fh:  # -sig: Excel starts files with a BOM
            for n, line in enumerate(fh):
                if "," in line:
                    return header, n, [name.strip() for name in line.split(",")]
                if not line.strip():
                    continue
                key, sep, value = line.partition(":")
                if not sep:
                    raise RecordError(record_id, path, f"line {n + 1}: expected 'key: value'")
                header[key.strip().lower()] = value.strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordError(record_id, path, f"unreadable ({exc})") from exc
    raise RecordError(record_id, path, "no lead-name row (a line with commas) found")


def read_record(ref: RecordRef) -> Record:
    path = Path(ref.path)
    rid = ref.record_id
    if not path.is_file():
        raise RecordError(rid, path, "record file missing")
    header, skip, names = _split_header(rid, path)
    absent = [k for k in HEADER_KEYS if k not in header]
    if absent:
        raise RecordError(rid, path, f"header lacks {absent}")
    try:
        fs = float(header["sampling_rate"])
    except ValueError:
        reason = f"sampling_rate {header['sampling_rate']!r} is not a number"
        raise RecordError(rid, path, reason) from None
    if not np.isfinite(fs) or fs <= 0:
        raise RecordError(rid, path, f"sampling_rate {fs} must be positive")
    scale = _UNITS.get(header["units"].lower())
    if scale is None:
        raise RecordError(rid, path, f"units {header['units']!r}: expected uV or mV")
    order = lead_order(rid, path, names)
    try:
        table = pd.read_csv(
            path,
            skiprows=skip + 1,
            header=None,
            dtype=np.float64,
            engine="c",
            skip_blank_lines=True,
        )
    except pd.errors.EmptyDataError:  # a ValueError too: must come first
        raise RecordError(rid, path, "no samples") from None
    except (ValueError, pd.errors.ParserError) as exc:
        raise RecordError(rid, path, f"non-numeric or ragged samples ({exc})") from exc
    if table.shape[1] != len(names):
        raise RecordError(rid, path, f"{table.shape[1]} sample columns for {len(names)} leads")
    samples = table.to_numpy()
    bad = np.argwhere(~np.isfinite(samples))
    if len(bad):  # a short row reads as NaN too, hence "missing"
        row, col = bad[0]
        reason = f"sample row {row + 1}, lead {names[col]}: missing, NaN or infinite value"
        raise RecordError(rid, path, reason)
    signal = samples[:, order].T * scale
    codes = _codes(header["diagnosis"])
    meta = {k: v for k, v in ref.meta.items() if k not in ("codes", "coding", "patient_id", "site")}
    meta.update({k: v for k, v in header.items() if k not in HEADER_KEYS and k not in meta})
    return Record(
        record_id=rid,
        signal=np.ascontiguousarray(signal, np.float32),
        fs=fs,
        codes=codes,
        coding="tis",
        source="tis",
        path=path,
        patient_id=header.get("patient_id") or ref.meta.get("patient_id"),
        site=header.get("hospital") or ref.meta.get("site"),
        device=header.get("device"),
        meta=meta,
    )
