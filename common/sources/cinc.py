"""PhysioNet/CinC 2020-2021: WFDB headers with MATLAB v4 signals, SNOMED CT codes in comments.

The record-name prefix names the institution (E = Georgia, HR = PTB-XL, JS = Chapman-Ningbo, ...),
which becomes the record's site; there are no patient ids, so each record is its own patient.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from common.record import Record, RecordError
from common.safefile import walk_files
from common.sources import RecordRef, Scan
from common.sources.wfdb_signal import read_header, read_signal


def looks_like(root: Path) -> bool:
    return any(os.path.lexists(p.with_suffix(".mat")) for p in walk_files(root, ".hea")[0])


def _comments(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip().lower()] = value.strip()
    return out


def _meta(record_id: str, comments: dict[str, str]) -> dict:
    dx = comments.get("dx", "")
    age = comments.get("age", "")
    sex = comments.get("sex", "").lower()
    return {
        "patient_id": record_id,
        "site": re.match(r"[A-Za-z]*", record_id).group(0) or None,
        "codes": tuple(c.strip() for c in dx.split(",") if c.strip()),
        "coding": "snomed",
        "age": float(age) if re.fullmatch(r"\d+(\.\d+)?", age) else None,
        "sex": {"male": "M", "female": "F"}.get(sex),
    }


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
        refs.append(RecordRef(record_id, base, "cinc", _meta(record_id, comments), root))
    return Scan("cinc", root, refs, problems)


def read_record(ref: RecordRef) -> Record:
    signal, fs, header = read_signal(ref.record_id, Path(ref.path), ref.root)
    meta = ref.meta or _meta(ref.record_id, _comments(header.comments or []))
    return Record(
        record_id=ref.record_id,
        signal=signal,
        fs=fs,
        codes=tuple(meta["codes"]),
        coding="snomed",
        source="cinc",
        path=Path(ref.path),
        patient_id=meta["patient_id"],
        site=meta["site"],
        meta={"age": meta["age"], "sex": meta["sex"]},
    )
