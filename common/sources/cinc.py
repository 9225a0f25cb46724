"""PhysioNet/CinC 2020-2021: WFDB headers with MATLAB v4 signals, SNOMED CT codes in comments.

The record-name prefix names the institution (E = Georgia, HR = PTB-XL, JS = Chapman-Ningbo, ...),
which becomes the record's site; there are no patient ids, so each record is its own patient.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from common.record import Record, RecordError, RecordInfo, RecordRef, Scan
from common.safefile import walk_files
from common.sources.wfdb_signal import read_header, read_signal

FORMAT = "cinc"


def looks_like(root: Path) -> bool:
    return any(os.path.lexists(p.with_suffix(".mat")) for p in walk_files(root, ".hea")[0])


def _comments(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip().lower()] = value.strip()
    return out


def _info(record_id: str, comments: dict[str, str]) -> RecordInfo:
    dx = comments.get("dx", "")
    age = comments.get("age", "")
    sex = comments.get("sex", "").lower()
    return RecordInfo(
        codes=tuple(c.strip() for c in dx.split(",") if c.strip()),
        coding="snomed",
        patient_id=record_id,
        site=re.match(r"[A-Za-z]*", record_id).group(0) or None,
        extra={
            "age": float(age) if re.fullmatch(r"\d+(\.\d+)?", age) else None,
            "sex": {"male": "M", "female": "F"}.get(sex),
        },
    )


def scan(root: Path) -> Scan:
    headers, unlisted = walk_files(root, ".hea")
    problems = [RecordError(str(p.relative_to(root)), p, why) for p, why in unlisted]
    refs = []
    for hea in headers:
        base = hea.with_suffix("")
        record_id = base.name
        try:
            header = read_header(record_id, base, root)
        except RecordError as err:
            problems.append(err)
            continue
        comments = _comments(header.comments or [])
        if "dx" not in comments:
            problems.append(RecordError(record_id, hea, "no '# Dx:' line in the header"))
            continue
        refs.append(RecordRef(record_id, base, FORMAT, _info(record_id, comments), root))
    return Scan(FORMAT, root, refs, problems)


def read_record(ref: RecordRef) -> Record:
    signal, fs, header = read_signal(ref.record_id, Path(ref.path), ref.root)
    info = ref.info or _info(ref.record_id, _comments(header.comments or []))
    return Record(ref.record_id, signal, fs, FORMAT, Path(ref.path), info)
