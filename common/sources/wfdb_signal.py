"""Decoding a WFDB record (``.hea`` + ``.dat`` or MATLAB ``.mat``) into canonical form.

Shared by the PTB-XL and CinC readers; every problem becomes a per-record ``RecordError``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import wfdb

from common.record import LEADS, RecordError, canonical_lead


def read_header(record_id: str, base: Path) -> wfdb.Record:
    """The parsed ``.hea`` of the record at ``base`` (path without extension)."""
    hea = base.with_name(base.name + ".hea")
    if not hea.is_file():
        raise RecordError(record_id, hea, "header file missing")
    try:
        return wfdb.rdheader(str(base))
    except Exception as exc:  # wfdb raises assorted errors for malformed headers
        raise RecordError(record_id, hea, f"unreadable header ({exc})") from exc


def lead_order(record_id: str, path: Path, names: list[str]) -> list[int]:
    """Column index of each canonical lead in a file whose leads are ``names``."""
    mapped = [canonical_lead(n) for n in names]
    unknown = [n for n, m in zip(names, mapped, strict=True) if m is None]
    if unknown:
        raise RecordError(record_id, path, f"unknown lead name(s) {unknown}")
    if len(set(mapped)) != len(mapped):
        raise RecordError(record_id, path, f"duplicate leads in {names}")
    missing = [lead for lead in LEADS if lead not in mapped]
    if missing:
        raise RecordError(record_id, path, f"{len(names)} leads, missing {missing}")
    return [mapped.index(lead) for lead in LEADS]


def read_signal(record_id: str, base: Path) -> tuple[np.ndarray, float, wfdb.Record]:
    """(12, n) float32 mV in canonical order, sampling rate, and the header."""
    header = read_header(record_id, base)
    hea = base.with_name(base.name + ".hea")
    order = lead_order(record_id, hea, list(header.sig_name or []))
    units = {u.strip().lower() for u in (header.units or [])}
    if units - {"mv", "uv", "μv"}:
        raise RecordError(record_id, hea, f"unsupported signal units {sorted(units)}")
    data_files = {base.parent / f for f in (header.file_name or [])}
    for data in data_files:
        if not data.is_file():
            raise RecordError(record_id, data, "signal file missing")
        expected = _expected_bytes(header, data.name)
        size = data.stat().st_size
        if expected is not None and size < expected:
            raise RecordError(
                record_id, data, f"{size} bytes, header promises {expected} (truncated?)"
            )
    try:
        record = wfdb.rdrecord(str(base), physical=True)
    except Exception as exc:
        raise RecordError(record_id, hea, f"unreadable signal ({exc})") from exc
    signal = record.p_signal
    if signal is None or signal.ndim != 2 or signal.shape[1] != len(order):
        raise RecordError(record_id, hea, "signal does not match the header's channels")
    if signal.shape[0] != header.sig_len:
        raise RecordError(
            record_id, hea, f"{signal.shape[0]} samples, header promises {header.sig_len}"
        )
    scale = np.array([1e-3 if u.strip().lower() in ("uv", "μv") else 1.0 for u in record.units])
    signal = (signal * scale)[:, order].T
    if not np.isfinite(signal).all():
        raise RecordError(record_id, hea, "NaN or infinite samples")
    return np.ascontiguousarray(signal, np.float32), float(header.fs), header


def _expected_bytes(header: wfdb.Record, file_name: str) -> int | None:
    """Bytes a format-16 file must hold (other formats: let wfdb judge)."""
    idx = [i for i, f in enumerate(header.file_name) if f == file_name]
    fmts = {header.fmt[i] for i in idx}
    if fmts != {"16"} or not header.sig_len:
        return None
    offset = max((header.byte_offset or [0] * len(header.fmt))[i] or 0 for i in idx)
    return offset + 2 * len(idx) * header.sig_len
