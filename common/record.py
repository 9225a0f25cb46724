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


@dataclass(frozen=True)
class Record:
    """One 12-lead ECG in canonical form.

    ``signal`` is float32 millivolts shaped (12, n_samples) in ``LEADS`` order, the layout
    ``torch.nn.Conv1d`` takes. ``codes`` are the raw diagnosis codes in ``coding``
    ('scp', 'tis' or 'snomed'); ``common.labels`` turns them into targets.
    """

    record_id: str
    signal: np.ndarray
    fs: float
    codes: tuple[str, ...]
    coding: str
    source: str
    path: Path
    patient_id: str | None = None
    site: str | None = None
    device: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return self.signal.shape[1] / self.fs
