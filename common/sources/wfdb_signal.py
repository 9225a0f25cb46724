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
    mapped = [canonical_lead(n) if isinstance(n, str) else None for n in names]
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
    names = list(header.sig_name or [])
    if header.n_sig != len(names):  # wfdb would loop over the declared count, however large
        reason = f"record line declares {header.n_sig} signals, {len(names)} signal lines follow"
        raise RecordError(record_id, hea, reason)
    order = lead_order(record_id, hea, names)
    if not header.fs or not np.isfinite(header.fs) or header.fs <= 0:
        raise RecordError(record_id, hea, f"sampling frequency {header.fs} must be positive")
    units = {str(u).strip().lower() for u in (header.units or [])}  # wfdb may give None
    if units - {"mv", "uv", "μv"}:
        raise RecordError(record_id, hea, f"unsupported signal units {sorted(units)}")
    data_files = {base.parent / f for f in (header.file_name or [])}
    for data in data_files:
        if not data.is_file():
            raise RecordError(record_id, data, "signal file missing")
        expected, exact = _expected_bytes(header, data.name) or (0, False)
        size = data.stat().st_size
        # A longer file is as wrong as a shorter one: wfdb would silently read a prefix.
        if size < expected or (exact and size != expected):
            why = "truncated?" if size < expected else "header and signal file disagree"
            raise RecordError(record_id, data, f"{size} bytes, header promises {expected} ({why})")
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
    scale = np.array(
        [1e-3 if str(u).strip().lower() in ("uv", "μv") else 1.0 for u in record.units]
    )
    signal = (signal * scale)[:, order].T
    if not np.isfinite(signal).all():
        raise RecordError(record_id, hea, "NaN or infinite samples")
    return np.ascontiguousarray(signal, np.float32), float(header.fs), header


#: Bytes per sample of WFDB's fixed-width formats.
_BYTES_PER_SAMPLE = {
    "8": 1,
    "80": 1,
    "16": 2,
    "24": 3,
    "32": 4,
    "212": 1.5,
    "310": 4 / 3,
    "311": 4 / 3,
}


def _expected_bytes(header: wfdb.Record, file_name: str) -> tuple[int, bool] | None:
    """(bytes the file must hold, whether exactly so) for the header's samples, or None.

    Checked before wfdb reads, which would otherwise allocate whatever a broken header promises.
    Exact for format 16 (PTB-XL, CinC); a lower bound for the other fixed-width formats.
    """
    idx = [i for i, f in enumerate(header.file_name) if f == file_name]
    fmts = {header.fmt[i] for i in idx}
    if len(fmts) != 1 or not header.sig_len or (fmt := fmts.pop()) not in _BYTES_PER_SAMPLE:
        return None
    per_frame = sum((header.samps_per_frame or [1] * len(header.fmt))[i] or 1 for i in idx)
    offset = max((header.byte_offset or [0] * len(header.fmt))[i] or 0 for i in idx)
    return offset + int(_BYTES_PER_SAMPLE[fmt] * per_frame * header.sig_len), fmt == "16"
