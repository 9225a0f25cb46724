"""PTB-XL exactly as PhysioNet ships it: ``ptbxl_database.csv`` + WFDB records at 100/500 Hz."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from common.config import ConfigError
from common.record import Record, RecordError, RecordInfo, RecordRef, Scan, clip
from common.safefile import CsvRow, read_csv
from common.sources import limits
from common.sources.wfdb_signal import read_signal

FORMAT = "ptbxl"
DATABASE = "ptbxl_database.csv"
REQUIRED = ("ecg_id", "patient_id", "scp_codes", "strat_fold", "filename_lr", "filename_hr")
#: One ``'CODE': likelihood`` item of the scp_codes dict literal.
_SCP_ITEM = re.compile(r"""\s*(['"])([^'"\\]{1,64})\1\s*:\s*-?\d+(\.\d*)?([eE][-+]?\d+)?\s*""")


def looks_like(root: Path) -> bool:
    """The database's name is there (whatever it is: the scan says what is wrong with it)."""
    return os.path.lexists(root / DATABASE)


def _id(value: str | None) -> str | None:
    """'15709.0' -> '15709'; missing -> None."""
    text = (value or "").strip()
    if not text or text.lower() == "nan":
        return None
    return text[:-2] if text.endswith(".0") else text


def _number(value: str | None) -> float | None:
    """An optional numeric field: junk counts as missing, the record itself is still good."""
    try:
        number = float(value or "")
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _text(value: str | None) -> str | None:
    text = (value or "").strip()
    return text or None


def scp_codes(text: str) -> tuple[str, ...]:
    """The codes of a dict literal such as "{'NORM': 100.0, 'SR': 0.0}", in order.

    Parsed flat item by item, never evaluated: a nested or huge literal is a ValueError, not
    a RecursionError or an allocation.
    """
    body = text.strip()
    if not (body.startswith("{") and body.endswith("}")):
        raise ValueError("not a {'CODE': likelihood, ...} dict")
    items = body[1:-1].strip().removesuffix(",")
    codes = []
    for item in items.split(",") if items.strip() else []:
        match = _SCP_ITEM.fullmatch(item)
        if match is None:
            raise ValueError(f"{clip(item.strip(), 40)!r} is not 'CODE': likelihood")
        codes.append(match.group(2))
    return tuple(dict.fromkeys(codes))


def _fold(text: str) -> int:
    fold = float(text)
    if not fold.is_integer():
        raise ValueError(f"strat_fold {clip(text, 20)!r} is not a whole number")
    return int(fold)


def _ref(root: Path, row: CsvRow, record_id: str, column: str) -> RecordRef:
    """The row as a record; ValueError if its codes or fold cannot be read."""
    fields = row.fields
    try:
        codes, fold = scp_codes(fields["scp_codes"]), _fold(fields["strat_fold"])
    except ValueError as exc:
        raise ValueError(f"row {row.number}: bad scp_codes or strat_fold ({exc})") from None
    sex = _id(fields.get("sex"))
    info = RecordInfo(
        codes=codes,
        coding="scp",
        patient_id=_id(fields["patient_id"]),
        site=_id(fields.get("site")),
        device=_text(fields.get("device")),
        strat_fold=fold,
        extra={
            "age": _number(fields.get("age")),
            "sex": None if sex is None else ("F" if sex == "1" else "M"),
            "date": _text(fields.get("recording_date")),
        },
    )
    return RecordRef(record_id, root / fields[column].strip(), FORMAT, info, root)


def scan(root: Path, rate: int = 500) -> Scan:
    """Every row of the database; rows that cannot name a usable record are rejected here."""
    if rate not in (100, 500):
        raise ConfigError(f"rate={rate}: PTB-XL has records at 100 or 500 Hz")
    path = root / DATABASE
    header, rows = read_csv(path, "database", limits.INDEX, root)
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {missing}")
    column = "filename_lr" if rate == 100 else "filename_hr"
    refs, problems, first_row = [], [], {}
    for row in rows:
        ecg_id = _id(row.fields.get("ecg_id"))
        record_id = ecg_id or f"row {row.number}"
        try:
            if row.problem:
                raise ValueError(row.problem)
            if ecg_id is None:
                raise ValueError(f"row {row.number} has no ecg_id")
            if ecg_id in first_row:  # ids name records downstream: a repeat would be ambiguous
                first = first_row[ecg_id]
                raise ValueError(f"ecg_id {ecg_id} repeated in row {row.number}; row {first} kept")
            first_row[ecg_id] = row.number
            if not row.fields[column].strip():
                raise ValueError(f"no {column}")
            refs.append(_ref(root, row, record_id, column))
        except ValueError as exc:
            problems.append(RecordError(record_id, path, str(exc)))
    return Scan(FORMAT, root, refs, problems)


def read_record(ref: RecordRef) -> Record:
    """The record's signal; what is known of it comes from the database row (a record file
    named on its own has no codes)."""
    signal, fs, _ = read_signal(ref.record_id, Path(ref.path), ref.root)
    info = ref.info or RecordInfo(coding="scp")
    return Record(ref.record_id, signal, fs, FORMAT, Path(ref.path), info)
