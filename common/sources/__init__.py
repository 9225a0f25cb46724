"""Source readers: one small module per on-disk format, each with the same two functions.

``scan(root) -> Scan`` lists the records of a folder (cheap: no signal decoding) and
``read_record(ref) -> Record`` decodes one of them, raising ``RecordError`` for a bad record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from common.config import ConfigError
from common.record import RecordError
from common.safefile import data_folder


@dataclass(frozen=True)
class RecordRef:
    """Where one record lives plus what the folder's index says about it.

    ``root`` is the data folder (symlinks resolved) that every file of the record must resolve
    inside; None for a record file named directly (``predict``).
    """

    record_id: str
    path: Path
    source: str
    meta: dict = field(default_factory=dict, hash=False, compare=False)
    root: Path | None = field(default=None, compare=False)


@dataclass
class Scan:
    """A folder's records, and those already rejected while listing them."""

    source: str
    root: Path
    refs: list[RecordRef]
    problems: list[RecordError] = field(default_factory=list)


def _readers() -> dict[str, ModuleType]:
    from common.sources import cinc, ptbxl, tis

    return {"ptbxl": ptbxl, "tis": tis, "cinc": cinc}


FORMATS = ("ptbxl", "tis", "cinc")


def reader(fmt: str) -> ModuleType:
    try:
        return _readers()[fmt]
    except KeyError:
        raise ConfigError(
            f"unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}"
        ) from None


def detect_format(root: Path) -> str:
    """Guess a folder's format from its marker files."""
    real = data_folder(Path(root))
    for fmt, module in _readers().items():
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


def read_record(ref: RecordRef):
    return reader(ref.source).read_record(ref)


__all__ = ["FORMATS", "RecordError", "RecordRef", "Scan", "detect_format", "read_record", "scan"]
