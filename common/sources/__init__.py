"""Source readers: one small module per on-disk format, each a ``Reader``.

``looks_like(root)`` recognises a folder, ``scan(root) -> Scan`` lists its records with what
the index says of them (cheap: no signal decoding), and ``read_record(ref) -> Record`` decodes
one of them, raising ``RecordError`` for a bad record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from common.config import ConfigError
from common.record import Record, RecordError, RecordInfo, RecordRef, Scan
from common.safefile import data_folder
from common.sources import cinc, ptbxl, tis


class Reader(Protocol):
    """What a format module provides; a new format is one module listed in ``READERS``."""

    FORMAT: str

    def looks_like(self, root: Path) -> bool: ...

    def scan(self, root: Path, **options) -> Scan: ...

    def read_record(self, ref: RecordRef) -> Record: ...


#: Readers by format name, in the order ``detect_format`` tries them.
READERS: dict[str, Reader] = {r.FORMAT: r for r in (ptbxl, tis, cinc)}
FORMATS = tuple(READERS)


def reader(fmt: str) -> Reader:
    try:
        return READERS[fmt]
    except KeyError:
        raise ConfigError(
            f"unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}"
        ) from None


def detect_format(root: Path) -> str:
    """Guess a folder's format from its marker files."""
    real = data_folder(Path(root))
    for fmt, module in READERS.items():
        if module.looks_like(real):
            return fmt
    raise ConfigError(
        f"{root}: no ECG data format recognised (expected ptbxl_database.csv, a TIS-like "
        "index.csv, or CinC .hea files); give the format explicitly with --format"
    )


def scan(root: Path, fmt: str | None = None, **options) -> Scan:
    """The folder's records; ``Scan.root`` is the folder with symlinks resolved."""
    real = data_folder(Path(root))
    return reader(fmt or detect_format(real)).scan(real, **options)


def read_record(ref: RecordRef) -> Record:
    return reader(ref.source).read_record(ref)


__all__ = [
    "FORMATS",
    "READERS",
    "Reader",
    "RecordError",
    "RecordInfo",
    "RecordRef",
    "Scan",
    "detect_format",
    "read_record",
    "scan",
]
