"""Decoding a WFDB record (``.hea`` + ``.dat`` or MATLAB ``.mat``) into canonical form.

Shared by the PTB-XL and CinC readers; every problem becomes a per-record ``RecordError``.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import wfdb

from common.record import LEADS, RecordError, canonical_lead, clip
from common.safefile import check_regular, open_regular
from common.sources import limits


def read_header(record_id: str, base: Path, root: Path | None = None) -> wfdb.Record:
    """The parsed ``.hea`` of the record at ``base`` (path without extension).

    The text is checked before wfdb parses it: wfdb fills in what a header lacks or gets wrong
    (no rate: 250 Hz; gain 0: 200 per mV; '-500' Hz: the default) instead of refusing it.
    """
    hea = base.with_name(base.name + ".hea")
    with open_regular(hea, "header file", limits.MAX_HEADER_BYTES, record_id, root) as fh:
        text = fh.read().decode("ascii", errors="ignore")  # as wfdb reads it
    fields = _header_fields(record_id, hea, text)
    try:
        header = wfdb.rdheader(str(base))
    except Exception as exc:  # wfdb raises assorted errors for malformed headers
        raise RecordError(record_id, hea, f"unreadable header ({exc})") from exc
    read = (float(header.fs or 0), header.sig_len, [float(g) for g in header.adc_gain or []])
    if read != fields or header.n_sig != len(fields[2]):
        raise RecordError(record_id, hea, "unreadable header (wfdb reads its fields otherwise)")
    return header


def _number(token: str, what: str) -> float:
    """The number before any '(...)' or '/...' suffix of a header token."""
    text = re.match(r"[^(/]*", token).group()
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{what} {clip(text, 30)!r} is not a number") from None


def _header_fields(record_id: str, hea: Path, text: str) -> tuple[float, int, list[float]]:
    """(sampling rate, samples per lead, gain of each signal) from a header's text, if sane."""
    lines = [line.strip() for line in text.splitlines()]
    record, *signals = [line for line in lines if line and not line.startswith("#")] or [""]
    tokens = record.split()

    def refuse(reason: str) -> RecordError:
        return RecordError(record_id, hea, reason)

    if len(tokens) < 2 or not tokens[1].isdigit():
        raise refuse(f"unreadable header (record line {clip(record, 60)!r})")
    if "/" in tokens[0]:
        raise refuse("multi-segment record: not supported")
    if int(tokens[1]) != len(signals):  # wfdb would loop over the declared count, however large
        raise refuse(
            f"record line declares {tokens[1]} signals, {len(signals)} signal lines follow"
        )
    if len(tokens) < 4:
        raise refuse("record line lacks the sampling frequency or sample count (WFDB would guess)")
    try:
        fs = _number(tokens[2], "sampling frequency")
        gains = [_number((line.split() + ["", "", ""])[2], "ADC gain") for line in signals]
    except ValueError as exc:
        raise refuse(str(exc)) from None
    limits.check_fs(record_id, hea, fs, "sampling frequency")
    if not tokens[3].isdigit() or int(tokens[3]) == 0:
        raise refuse(f"sample count {clip(tokens[3], 30)!r} is not a whole number above 0")
    bad = next((g for g in gains if not math.isfinite(g) or g == 0), None)
    if bad is not None:  # wfdb reads gain 0 as 200 per mV: a made-up scale
        raise refuse(f"ADC gain {bad} must be a finite, non-zero number")
    return fs, int(tokens[3]), gains


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


def read_signal(
    record_id: str, base: Path, root: Path | None = None
) -> tuple[np.ndarray, float, wfdb.Record]:
    """(12, n) float32 mV in canonical order, sampling rate, and the header."""
    header = read_header(record_id, base, root)
    hea = base.with_name(base.name + ".hea")
    names = list(header.sig_name or [])
    order = lead_order(record_id, hea, names)
    if any((n or 1) != 1 for n in header.samps_per_frame or []):
        raise RecordError(record_id, hea, "several samples per frame: not supported")
    units = [str(u).strip().lower() for u in (header.units or [])]  # wfdb may give None
    if set(units) - {"mv", "uv", "μv"}:
        raise RecordError(record_id, hea, f"unsupported signal units {sorted(set(units))}")
    signal = read_samples(record_id, base, header, root)
    if signal is None or signal.ndim != 2 or signal.shape[1] != len(order):
        raise RecordError(record_id, hea, "signal does not match the header's channels")
    if signal.shape[0] != header.sig_len:
        raise RecordError(
            record_id, hea, f"{signal.shape[0]} samples, header promises {header.sig_len}"
        )
    scale = np.array([1e-3 if u in ("uv", "μv") else 1.0 for u in units])
    signal = (signal * scale)[:, order].T
    if not np.isfinite(signal).all():
        raise RecordError(record_id, hea, "NaN or infinite samples")
    return np.ascontiguousarray(signal, np.float32), float(header.fs), header


def read_samples(
    record_id: str, base: Path, header: wfdb.Record, root: Path | None = None
) -> np.ndarray:
    """(samples, signals) float64 in the header's units and signal order, as
    ``wfdb.rdrecord(base, physical=True).p_signal`` reads them, once the files' sizes pass.

    One format-16 file without skew (PTB-XL, CinC) is decoded here from the header already read
    and the file already opened and checked: ``wfdb.rdrecord`` cannot take a parsed header, so
    it would parse the text again (pandas lookups: most of a record's decoding time) and reopen
    the files by name after they were checked. Every other layout is wfdb's to read.
    """
    hea = base.with_name(base.name + ".hea")
    files = set(header.file_name)
    if len(files) == 1 and set(header.fmt) == {"16"} and not any(header.skew or []):
        return _read_format16(record_id, hea, base.parent / files.pop(), header, root)
    for data in {base.parent / f for f in files}:
        size = check_regular(data, "signal file", limits.MAX_RECORD_BYTES, record_id, root)
        _check_size(record_id, data, size, header)
    limits.check_length(record_id, hea, header.sig_len, header.fs)
    try:
        return wfdb.rdrecord(str(base), physical=True).p_signal
    except Exception as exc:
        raise RecordError(record_id, hea, f"unreadable signal ({exc})") from exc


def _read_format16(
    record_id: str, hea: Path, data: Path, header: wfdb.Record, root: Path | None
) -> np.ndarray:
    """The samples of format-16 ``data``: frames of little-endian int16, one per signal.

    Read from the file whose size was checked, so what is decoded is what was checked; the
    physical conversion is wfdb's own (``Record.dac``: (d - baseline) / gain, -32768 as NaN).
    """
    with open_regular(data, "signal file", limits.MAX_RECORD_BYTES, record_id, root) as fh:
        expected = _check_size(record_id, data, os.fstat(fh.fileno()).st_size, header)
        limits.check_length(record_id, hea, header.sig_len, header.fs)
        raw = fh.read(expected)
    if len(raw) != expected:
        reason = f"{len(raw)} bytes, header promises {expected} (shrunk while being read)"
        raise RecordError(record_id, data, reason)
    digital = np.frombuffer(
        raw,
        "<i2",
        count=header.sig_len * header.n_sig,
        offset=(header.byte_offset or [0])[0] or 0,  # wfdb reads a file from its first signal's
    ).reshape(header.sig_len, header.n_sig)
    decoded = wfdb.Record(
        d_signal=digital, fmt=header.fmt, adc_gain=header.adc_gain, baseline=header.baseline
    )
    try:
        return decoded.dac()
    except Exception as exc:  # numpy refuses a baseline that fits no 64-bit integer
        raise RecordError(record_id, hea, f"unreadable signal ({exc})") from exc


def _check_size(record_id: str, data: Path, size: int, header: wfdb.Record) -> int:
    """The bytes signal file ``data`` must hold, refused if its ``size`` disagrees."""
    expected, exact = _expected_bytes(header, data.name) or (0, False)
    # A longer file is as wrong as a shorter one: wfdb would silently read a prefix.
    if size < expected or (exact and size != expected):
        why = "truncated?" if size < expected else "header and signal file disagree"
        raise RecordError(record_id, data, f"{size} bytes, header promises {expected} ({why})")
    return expected


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
