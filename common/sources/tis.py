"""TIS-like hospital network (ecgfl's own, docs/formats.md): an index + one CSV per record."""

from __future__ import annotations

import os
from collections.abc import Iterator
from itertools import repeat
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from common.config import ConfigError
from common.record import Record, RecordError, RecordInfo, RecordRef, Scan, clip
from common.safefile import CsvRow, bounded_lines, open_regular, read_csv
from common.sources import limits
from common.sources.wfdb_signal import lead_order

FORMAT = "tis"
INDEX = "index.csv"
REQUIRED = ("record_id", "hospital", "patient_id", "file", "diagnosis")
HEADER_KEYS = ("sampling_rate", "diagnosis", "units")
_UNITS = {"uv": 1e-3, "mv": 1.0}
#: Header keys read into the record's typed fields rather than kept as extras.
_TYPED = (*HEADER_KEYS, "patient_id", "device")


def looks_like(root: Path) -> bool:
    """An index naming a 'hospital' column, or one that cannot be read (the scan says why)."""
    index = root / INDEX
    if not os.path.lexists(index):
        return False
    try:
        with open_regular(index, "index", limits.INDEX.max_bytes, None, root) as fh:
            first = next(bounded_lines(fh, limits.INDEX.max_line), b"")
    except ConfigError:
        return True
    names = first.decode("utf-8", errors="replace").removeprefix("\ufeff").split(",")
    return "hospital" in [name.strip().strip('"') for name in names]


def _codes(text: str | None) -> tuple[str, ...]:
    return tuple(c.strip() for c in (text or "").split(";") if c.strip())


def scan(root: Path) -> Scan:
    path = root / INDEX
    header, rows = read_csv(path, "index", limits.INDEX, root)
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {missing}")
    refs, problems, first_row = [], [], {}
    for row in rows:
        record_id = row.fields.get("record_id", "").strip()
        if row.problem:
            problems.append(RecordError(record_id or f"row {row.number}", path, row.problem))
        elif not record_id or not row.fields["file"].strip():
            problems.append(RecordError(record_id or "?", path, "row without record_id or file"))
        elif record_id in first_row:  # records are named by id downstream: a repeat is ambiguous
            first = first_row[record_id]
            reason = f"record_id {record_id!r} repeated in row {row.number}; row {first} kept"
            problems.append(RecordError(record_id, path, reason))
        else:
            first_row[record_id] = row.number
            refs.append(
                RecordRef(record_id, root / row.fields["file"].strip(), FORMAT, _info(row), root)
            )
    return Scan(FORMAT, root, refs, problems)


def _info(row: CsvRow) -> RecordInfo:
    hospital = row.fields["hospital"].strip() or None
    return RecordInfo(
        codes=_codes(row.fields["diagnosis"]),
        coding="tis",
        patient_id=row.fields["patient_id"].strip() or None,
        site=hospital,
        extra={
            "hospital": hospital,
            **{k: v for k, v in row.fields.items() if k not in REQUIRED and v != ""},
        },
    )


def _split_header(
    record_id: str, path: Path, lines: Iterator[bytes]
) -> tuple[dict[str, str], list[str]]:
    """(key: value header, lead names), read up to and including the lead-name row."""

    def refuse(reason: str) -> RecordError:
        return RecordError(record_id, path, reason)

    header: dict[str, str] = {}
    for n, raw in enumerate(lines, start=1):
        if n > limits.MAX_HEADER_LINES:
            raise refuse(f"no lead-name row in the first {limits.MAX_HEADER_LINES} lines")
        if len(raw) > limits.MAX_LINE_BYTES:
            raise refuse(f"line {n} longer than {limits.MAX_LINE_BYTES:,} bytes")
        try:  # -sig: Excel starts files with a BOM
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError:
            raise refuse(f"unreadable: line {n} is not UTF-8 text") from None
        if "," in line:
            return header, [name.strip() for name in line.split(",")]
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise refuse(f"line {n}: expected 'key: value'")
        if len(value.strip()) > limits.MAX_FIELD_CHARS:
            raise refuse(
                f"header value {clip(key.strip(), 40)!r} holds {len(value.strip()):,} characters,"
                f" over the limit of {limits.MAX_FIELD_CHARS:,}"
            )
        header[key.strip().lower()] = value.strip()
    raise refuse("no lead-name row (a line with commas) found")


#: Bytes of sample rows checked in one piece (a 10 s, 1000 Hz record is about 0.5 MiB).
_CHECKED_AT_ONCE = 16 * 1024 * 1024


def _count_rows(record_id: str, path: Path, fh: BinaryIO, n_leads: int) -> int:
    """Sample rows from ``fh``'s position on, each checked to be short and no wider than the
    leads, before pandas parses them: it would size a table by its widest row, however wide.

    A record of up to 16 MiB that passes every check is judged at C speed from its bytes (the
    line-by-line check took 3/4 of decoding a 500 Hz record); anything else, line by line,
    which names the first bad row."""
    start = fh.tell()
    rest = fh.read(_CHECKED_AT_ONCE + 1)
    if len(rest) <= _CHECKED_AT_ONCE:
        lines = rest.split(b"\n")
        if (
            len(lines) <= 2 * limits.MAX_SAMPLES
            and max(map(len, lines)) <= limits.MAX_LINE_BYTES
            and max(map(bytes.count, lines, repeat(b","))) < n_leads
        ):
            return min(sum(map(bool, map(bytes.strip, lines))), limits.MAX_SAMPLES + 1)
    fh.seek(start)
    return _count_rows_by_line(record_id, path, bounded_lines(fh, limits.MAX_LINE_BYTES), n_leads)


def _count_rows_by_line(record_id: str, path: Path, lines: Iterator[bytes], n_leads: int) -> int:
    rows = 0
    for n, raw in enumerate(lines, start=1):
        if n > 2 * limits.MAX_SAMPLES:  # blank lines cost time too
            raise RecordError(record_id, path, f"more than {n - 1:,} lines of samples")
        if not raw.strip():
            continue
        rows += 1
        if len(raw) > limits.MAX_LINE_BYTES:
            reason = f"sample row {rows} longer than {limits.MAX_LINE_BYTES:,} bytes"
            raise RecordError(record_id, path, reason)
        if raw.count(b",") >= n_leads:
            reason = (
                f"non-numeric or ragged samples (sample row {rows} has "
                f"{raw.count(b',') + 1:,} values for {n_leads} leads)"
            )
            raise RecordError(record_id, path, reason)
        if rows > limits.MAX_SAMPLES:
            break  # check_length says why
    return rows


def _fs(record_id: str, path: Path, text: str) -> float:
    try:
        fs = float(text)
    except ValueError:
        reason = f"sampling_rate {clip(text, 30)!r} is not a number"
        raise RecordError(record_id, path, reason) from None
    limits.check_fs(record_id, path, fs, "sampling_rate")
    return fs


def _samples(record_id: str, path: Path, fh: BinaryIO, names: list[str]) -> np.ndarray:
    """The sample rows from ``fh``'s position on, shaped (samples, leads in file order)."""
    try:
        table = pd.read_csv(fh, header=None, dtype=np.float64, engine="c", skip_blank_lines=True)
    except pd.errors.EmptyDataError:  # a ValueError too: must come first
        raise RecordError(record_id, path, "no samples") from None
    except (ValueError, pd.errors.ParserError) as exc:
        raise RecordError(record_id, path, f"non-numeric or ragged samples ({exc})") from exc
    if table.shape[1] != len(names):
        reason = f"{table.shape[1]} sample columns for {len(names)} leads"
        raise RecordError(record_id, path, reason)
    samples = table.to_numpy()
    bad = np.argwhere(~np.isfinite(samples))
    if len(bad):  # a short row reads as NaN too, hence "missing"
        row, col = bad[0]
        reason = f"sample row {row + 1}, lead {names[col]}: missing, NaN or infinite value"
        raise RecordError(record_id, path, reason)
    return samples


def read_record(ref: RecordRef) -> Record:
    path = Path(ref.path)
    rid = ref.record_id
    with open_regular(path, "record file", limits.MAX_RECORD_BYTES, rid, ref.root) as fh:
        lines = bounded_lines(fh, limits.MAX_LINE_BYTES)
        header, names = _split_header(rid, path, lines)
        absent = [k for k in HEADER_KEYS if k not in header]
        if absent:
            raise RecordError(rid, path, f"header lacks {absent}")
        fs = _fs(rid, path, header["sampling_rate"])
        scale = _UNITS.get(header["units"].lower())
        if scale is None:
            raise RecordError(rid, path, f"units {clip(header['units'], 30)!r}: expected uV or mV")
        order = lead_order(rid, path, names)
        start = fh.tell()
        limits.check_length(rid, path, _count_rows(rid, path, fh, len(names)), fs)
        fh.seek(start)
        samples = _samples(rid, path, fh, names)
    signal = samples[:, order].T * scale
    signal = np.ascontiguousarray(signal, np.float32)
    return Record(rid, signal, fs, FORMAT, path, _merge(ref, header))


def _merge(ref: RecordRef, header: dict[str, str]) -> RecordInfo:
    """The record file's header over the index's row: the file is what was recorded."""
    index = ref.info or RecordInfo()
    extra = dict(index.extra)
    extra.update({k: v for k, v in header.items() if k not in _TYPED and k not in extra})
    return RecordInfo(
        codes=_codes(header["diagnosis"]),
        coding="tis",
        patient_id=header.get("patient_id") or index.patient_id,
        site=header.get("hospital") or index.site,
        device=header.get("device"),
        extra=extra,
    )
