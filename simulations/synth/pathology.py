"""Diagnoses -> the measurable features that define them (rate, intervals, conduction, voltage).

Labels use PTB-XL SCP names. A record's true label set decides its features, and the features sit
on the right side of each diagnostic threshold; ``difficulty`` sets how many records sit close to
a threshold (borderline) and how subtle fibrillation looks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

#: Every label the generator can produce; NORM means none of the others.
LABELS = ("NORM", "AFIB", "SBRAD", "STACH", "1AVB", "CRBBB", "CLBBB", "IRBBB", "LVH")
ABNORMAL = LABELS[1:]
_EXCLUSIVE = (
    {"AFIB", "SBRAD", "STACH"},
    {"AFIB", "1AVB"},
    {"CRBBB", "CLBBB", "IRBBB"},
)

NAMED_DIFFICULTY = {"easy": 0.2, "default": 0.5, "hard": 0.8}


def difficulty_value(difficulty: float | str) -> float:
    """'easy' | 'default' | 'hard' or a number in [0, 1]."""
    if isinstance(difficulty, str):
        try:
            return NAMED_DIFFICULTY[difficulty]
        except KeyError:
            try:
                difficulty = float(difficulty)
            except ValueError:
                raise ValueError(
                    f"difficulty {difficulty!r}: expected {', '.join(NAMED_DIFFICULTY)} "
                    "or a number between 0 and 1"
                ) from None
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty {difficulty}: expected a number between 0 and 1")
    return float(difficulty)


def is_consistent(labels: Iterable[str]) -> bool:
    """Whether a label set can describe one ECG (e.g. AFIB excludes sinus rates and 1AVB)."""
    labels = set(labels)
    if "NORM" in labels:
        return labels == {"NORM"}
    return all(len(labels & group) <= 1 for group in _EXCLUSIVE)


def normalise(labels: Iterable[str]) -> tuple[str, ...]:
    """A validated label set in ``LABELS`` order; the empty set means NORM."""
    labels = set(labels)
    unknown = labels - set(LABELS)
    if unknown:
        raise ValueError(f"unknown label(s) {sorted(unknown)}; expected some of {LABELS}")
    if not labels:
        labels = {"NORM"}
    if not is_consistent(labels):
        raise ValueError(f"labels {sorted(labels)} cannot occur together in one ECG")
    return tuple(lab for lab in LABELS if lab in labels)


@dataclass(frozen=True)
class Features:
    """What one ECG shows, in the units a cardiologist measures."""

    rhythm: str  # 'sinus' or 'afib'
    rate_bpm: float
    pr_ms: float | None  # None without organised atrial activity
    qrs_ms: float
    conduction: str  # see beats.CONDUCTIONS
    block_strength: float  # how typical a bundle-branch pattern looks (1 = textbook)
    qrs_voltage: float  # multiplier of the subject's normal QRS amplitude
    strain: bool  # repolarisation abnormality of hypertrophy
    rr_cv: float  # beat-to-beat irregularity of AFIB
    fwave_mv: float
    borderline: bool


def _pick(rng: np.random.Generator, borderline: bool, usual: tuple, edge: tuple) -> float:
    return float(rng.uniform(*(edge if borderline else usual)))


def sample_features(
    rng: np.random.Generator, labels: tuple[str, ...], difficulty: float
) -> Features:
    """Features consistent with ``labels`` (already normalised)."""
    has = set(labels)
    borderline = bool(rng.random() < difficulty)
    afib = "AFIB" in has
    if afib:
        rate = _pick(rng, borderline, (70, 140), (58, 80))
    elif "SBRAD" in has:
        rate = _pick(rng, borderline, (40, 56), (56.5, 59.3))
    elif "STACH" in has:
        rate = _pick(rng, borderline, (105, 150), (100.7, 105))
    else:
        low = rng.random() < 0.5
        rate = _pick(rng, borderline, (62, 95), (60.7, 64) if low else (96, 99.3))
    pr = None if afib else _pick(rng, borderline, (130, 185), (185, 199))
    if "1AVB" in has:
        pr = _pick(rng, borderline, (220, 320), (202, 218))
    if "CRBBB" in has:
        conduction, qrs = "crbbb", _pick(rng, borderline, (128, 160), (120, 127))
    elif "CLBBB" in has:
        conduction, qrs = "clbbb", _pick(rng, borderline, (132, 175), (120, 130))
    elif "IRBBB" in has:
        conduction, qrs = "irbbb", float(rng.uniform(100, 118))
    else:
        conduction, qrs = "normal", _pick(rng, borderline, (80, 102), (102, 116))
    lvh = "LVH" in has
    voltage = _pick(rng, borderline, (1.7, 2.4), (1.45, 1.7)) if lvh else 1.0
    fine = 1 - 0.6 * difficulty
    return Features(
        rhythm="afib" if afib else "sinus",
        rate_bpm=rate,
        pr_ms=pr,
        qrs_ms=qrs,
        conduction=conduction,
        block_strength=_pick(rng, borderline, (0.8, 1.2), (0.45, 0.8)),
        qrs_voltage=voltage,
        strain=lvh and bool(rng.random() < 0.5),
        rr_cv=_pick(rng, borderline, (0.12, 0.3), (0.05, 0.1)) if afib else 0.0,
        fwave_mv=float(rng.uniform(0.03, 0.15) * fine) if afib else 0.0,
        borderline=borderline,
    )
