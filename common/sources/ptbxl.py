"""PTB-XL exactly as PhysioNet ships it: ``ptbxl_database.csv`` + WFDB records at 100/500 Hz."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pandas as pd

from common.config import ConfigError
from common.record import Record, RecordError
from common.sources import RecordRef, Scan
from common.sources.wfdb_signal import read_signal

DATABASE = "ptbxl_database.csv"
REQUIRED = ("ecg_id", "patient_id", "scp_codes", "strat_fold", "filename_lr", "filename_hr")


def looks_like(root: Path) -> bool:
    return (root / DATABASE).is_file()


def _id(value) -> str | None:
    """'15709.0' -> '15709'; missing -> None."""
    if pd.isna(value):
        return None
    text = str(value).strip()
    return text[:-2] if text.endswith(".0") else text


def _number(value) -> float | None:
    """An optional numeric field: junk counts as missing, the record itself is still good."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def scan(root: Path, rate: int = 500) -> Scan:
    """Every row of the database; rows whose codes cannot be parsed are rejected here."""
    if rate not in (100, 500):
        raise ConfigError(f"rate={rate}: PTB-XL has records at 100 or 500 Hz")
    path = root / DATABASE
    try:
        db = pd.read_csv(path, dtype=str, keep_default_na=True)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc})") from exc
    missing = [c for c in REQUIRED if c not in db.columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {missing}")
    column = "filename_lr" if rate == 100 else "filename_hr"
    refs, problems = [], []
    for row in db.to_dict("records"):
        record_id = _id(row["ecg_id"]) or "?"
        try:
            codes = ast.literal_eval(row["scp_codes"])
            if not isinstance(codes, dict):
                raise ValueError("not a dict")
            fold = int(float(row["strat_fold"]))
        except (ValueError, SyntaxError, TypeError) as exc:
            problems.append(
                RecordError(
                    record_id, path, f"row {record_id}: bad scp_codes or strat_fold ({exc})"
                )
            )
            continue
        if pd.isna(row[column]):
            problems.append(RecordError(record_id, path, f"no {column}"))
            continue
        meta = {
            "patient_id": _id(row["patient_id"]),
            "site": _id(row.get("site")),
            "device": None if pd.isna(row.get("device")) else str(row["device"]).strip(),
            "codes": tuple(str(c) for c in codes),
            "coding": "scp",
            "strat_fold": fold,
            "age": _number(row.get("age")),
            "sex": None if pd.isna(row.get("sex")) else ("F" if _id(row["sex"]) == "1" else "M"),
            "date": row.get("recording_date") if not pd.isna(row.get("recording_date")) else None,
        }
        refs.append(RecordRef(record_id, root / str(row[column]), "ptbxl", meta))
    return Scan("ptbxl", root, refs, problems)


def read_record(ref: RecordRef) -> Record:
    signal, fs, _ = read_signal(ref.record_id, Path(ref.path))
    meta = {
        k: v
        for k, v in ref.meta.items()
        if k not in ("codes", "coding", "patient_id", "site", "device")
    }
    return Record(
        record_id=ref.record_id,
        signal=signal,
        fs=fs,
        codes=tuple(ref.meta.get("codes", ())),
        coding="scp",
        source="ptbxl",
        path=Path(ref.path),
        patient_id=ref.meta.get("patient_id"),
        site=ref.meta.get("site"),
        device=ref.meta.get("device"),
        meta=meta,
    )
