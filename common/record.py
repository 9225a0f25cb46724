"""The one record type every source reader produces and every pipeline consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Canonical lead order; readers map the files' own names and order onto it.
LEADS: tuple[str, ...] = (
    "I",
    "II",
    "III",
    "aVR",
    "aVL",
    "aVF",
    "V1",
    "V2",
    "V3",
    "V4",
    "V5",
    "V6",
)
_LEAD_ALIASES = {name.upper(): name for name in LEADS}


#: Longest reason a skipped record is reported with: a reason names what is wrong, it never
#: carries a whole field (a 500 MB header value, a million lead names) into logs and caches.
MAX_REASON_CHARS = 300


def clip(text: object, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[: max(limit - 30, 0)]}... ({len(text):,} characters)"


def canonical_lead(name: str) -> str | None:
    """Map a lead name as files spell it ('AVR', 'avr', ' V1 ') to the canonical one, or None."""
    return _LEAD_ALIASES.get(name.strip().upper())


class RecordError(Exception):
    """A problem with one record: it is skipped, counted and reported; the run goes on."""

    def __init__(self, record_id: str, path: Path | str, reason: str) -> None:
        record_id, reason = clip(record_id, 100), clip(reason)
        super().__init__(f"{path}: {reason} - record {record_id} skipped")
        self.record_id = record_id
        self.path = str(path)
        self.reason = reason

    def __reduce__(self) -> tuple:
        """Rebuilt from its fields: prepare's worker processes send errors back pickled."""
        return type(self), (self.record_id, self.path, self.reason)

    @classmethod
    def unexpected(cls, record_id: str, path: Path | str, exc: BaseException) -> RecordError:
        """Any other exception while reading one record: a reader bug, never a reason to stop."""
        return cls(record_id, path, f"unexpected {type(exc).__name__} ({exc})")


#: What an index may say of a record beyond the typed fields (age, sex, recording date...): plain
#: scalars, kept as columns of the cache's index.
Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class RecordInfo:
    """Everything known of a record besides its signal: its diagnosis and whose it is.

    A format's index gives it before any signal is decoded, so partitioning and patient splits
    never read a signal. ``codes`` are the raw diagnosis codes in ``coding`` ('scp', 'tis' or
    'snomed'); ``common.labels`` turns them into targets. ``strat_fold`` is PTB-XL's
    recommended fold, where the source has one.
    """

    codes: tuple[str, ...] = ()
    coding: str = ""
    patient_id: str | None = None
    site: str | None = None
    device: str | None = None
    strat_fold: int | None = None
    extra: dict[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordRef:
    """Where one record lives, and what its folder's index says about it (None: read it from
    the record's own file, as for a file named directly to ``predict``).

    ``root`` is the data folder (symlinks resolved) that every file of the record must resolve
    inside; None for a record file named directly.
    """

    record_id: str
    path: Path
    source: str
    info: RecordInfo | None = field(default=None, hash=False, compare=False)
    root: Path | None = field(default=None, compare=False)


@dataclass
class Scan:
    """A folder's records, and those already rejected while listing them."""

    source: str
    root: Path
    refs: list[RecordRef]
    problems: list[RecordError] = field(default_factory=list)


@dataclass(frozen=True)
class Record:
    """One 12-lead ECG in canonical form.

    ``signal`` is float32 millivolts shaped (12, n_samples) in ``LEADS`` order, the layout
    ``torch.nn.Conv1d`` takes.
    """

    record_id: str
    signal: np.ndarray
    fs: float
    source: str
    path: Path
    info: RecordInfo = field(default_factory=RecordInfo)

    @property
    def duration_s(self) -> float:
        return self.signal.shape[1] / self.fs
