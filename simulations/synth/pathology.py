"""Diagnoses -> the measurable features that define them (rate, intervals, conduction, voltage,
Q waves, ST level, T polarity, P waves).

Labels use PTB-XL SCP names. A record's true label set decides its features, and the features sit
on the right side of each diagnostic threshold; ``difficulty`` sets how many records sit close to
a threshold (borderline), how often a record without a finding shows its look-alike (a normal
variant just short of the threshold), and how subtle fibrillation looks. docs/formats.md tabulates
the criteria, ranges and references.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

#: Every label the generator can produce. NORM is PTB-XL's "normal ECG": no diagnostic finding
#: (MI, STTC, CD, HYP) and not fibrillation; like PTB-XL it may come with a sinus-rate statement
#: (SBRAD, STACH), which are rhythm statements, not diagnoses.
LABELS = (
    "NORM",
    "AFIB",
    "SBRAD",
    "STACH",
    "1AVB",
    "CRBBB",
    "CLBBB",
    "IRBBB",
    "LVH",
    "RVH",
    "LAO/LAE",
    "RAO/RAE",
    "IMI",
    "ASMI",
    "LMI",
    "ISC_",
    "NDT",
    "LNGQT",
)
ABNORMAL = LABELS[1:]
SINUS_RATES = frozenset({"SBRAD", "STACH"})
#: The wall whose Q waves define each infarct label (beats.REGIONS).
INFARCT_WALL = {"IMI": "inferior", "ASMI": "anteroseptal", "LMI": "lateral"}
#: Where ischaemic ST depression and T-wave changes show (PTB-XL's ISCAL, ISCLA, ISCIN ...).
ISCHAEMIC_REGIONS = ("anterolateral", "lateral", "inferior")
#: QTc (Fridericia) above which QT is long: Rautaharju et al., Circulation 2009;119:e241.
LONG_QTC_MS = {"M": 450.0, "F": 460.0}
_EXCLUSIVE = (
    {"AFIB", "SBRAD", "STACH"},
    {"AFIB", "1AVB"},
    {"CRBBB", "CLBBB", "IRBBB"},
    {"LVH", "RVH"},  # biventricular hypertrophy is not modelled
    {"AFIB", "LAO/LAE"},  # atrial enlargement is read from P waves, which fibrillation lacks
    {"AFIB", "RAO/RAE"},
    {"CRBBB", "RVH"},  # RVH's V1 criteria do not apply in right bundle branch block
    {"ISC_", "NDT"},  # one primary ST-T statement
    # Left bundle branch block hides infarct Q waves and brings its own ST-T changes (secondary,
    # not coded as STTC); a wide QRS lengthens QT, so long QT is only read with narrow QRS.
    {"CLBBB", "IMI"},
    {"CLBBB", "ASMI"},
    {"CLBBB", "LMI"},
    {"CLBBB", "ISC_"},
    {"CLBBB", "NDT"},
    {"CLBBB", "LNGQT"},
    {"CRBBB", "LNGQT"},
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
    """Whether a label set can describe one ECG (e.g. AFIB excludes sinus rates and 1AVB, and
    NORM goes with nothing but a sinus rate)."""
    labels = set(labels)
    if "NORM" in labels and labels - {"NORM"} - SINUS_RATES:
        return False
    return all(len(labels & group) <= 1 for group in _EXCLUSIVE)


def normalise(labels: Iterable[str]) -> tuple[str, ...]:
    """A validated label set in ``LABELS`` order, with NORM added when nothing but a sinus rate
    is present (the empty set is a normal ECG)."""
    labels = set(labels)
    unknown = labels - set(LABELS)
    if unknown:
        raise ValueError(f"unknown label(s) {sorted(unknown)}; expected some of {LABELS}")
    if labels <= SINUS_RATES:
        labels.add("NORM")
    if not is_consistent(labels):
        raise ValueError(f"labels {sorted(labels)} cannot occur together in one ECG")
    return tuple(lab for lab in LABELS if lab in labels)


@dataclass(frozen=True)
class Features:
    """What one ECG shows, in the units a cardiologist measures."""

    rhythm: str  # 'sinus' or 'afib'
    rate_bpm: float
    pr_ms: float | None  # None without organised atrial activity
    p_ms: float  # P-wave duration (left atrial enlargement: >= 120 ms)
    p_mv: float  # P-wave amplitude in lead II (right atrial enlargement: > 0.25 mV)
    left_atrial: bool  # a late, posterior left-atrial P component (notched P, deep V1 terminal)
    right_atrial: bool  # a tall, vertical right-atrial P component (P pulmonale)
    qrs_ms: float
    conduction: str  # see beats.CONDUCTIONS
    block_strength: float  # how typical a bundle-branch pattern looks (1 = textbook)
    qrs_voltage: float  # multiplier of the subject's normal QRS amplitude
    rv_share: float  # share of the main QRS forces from a hypertrophied right ventricle
    infarcts: tuple[str, ...]  # walls without electrical forces (beats.REGIONS): Q waves there
    infarct_stage: str  # 'acute', 'recent' or 'old'; '' without infarct
    q_ms: float  # Q-wave duration in the leads facing an infarct
    st_mv: tuple[tuple[str, float], ...]  # (region, ST level in the lead facing it, mV)
    t_turn: tuple[tuple[str, float], ...]  # (region, T component toward it as a share of |T|)
    qtc_ms: float | None  # None: the subject's own QTc, held below the long-QT limit
    strain: bool  # repolarisation abnormality of hypertrophy
    rr_cv: float  # beat-to-beat irregularity of AFIB
    fwave_mv: float
    borderline: bool


def _pick(rng: np.random.Generator, borderline: bool, usual: tuple, edge: tuple) -> float:
    return float(rng.uniform(*(edge if borderline else usual)))


def _rate(rng: np.random.Generator, has: set[str], borderline: bool) -> float:
    """Sinus bradycardia < 60 bpm, tachycardia > 100 bpm; fibrillation's ventricular rate."""
    if "AFIB" in has:
        return _pick(rng, borderline, (70, 140), (58, 80))
    if "SBRAD" in has:
        return _pick(rng, borderline, (40, 56), (56.5, 59.3))
    if "STACH" in has:
        return _pick(rng, borderline, (105, 150), (100.7, 105))
    low = rng.random() < 0.5
    return _pick(rng, borderline, (62, 95), (60.7, 64) if low else (96, 99.3))


def _conduction(rng: np.random.Generator, has: set[str], borderline: bool) -> tuple[str, float]:
    """Complete bundle branch block: QRS >= 120 ms; incomplete RBBB 100-119 ms."""
    if "CRBBB" in has:
        return "crbbb", _pick(rng, borderline, (128, 160), (120, 127))
    if "CLBBB" in has:
        return "clbbb", _pick(rng, borderline, (132, 175), (120, 130))
    if "IRBBB" in has:
        return "irbbb", float(rng.uniform(100, 118))
    return "normal", _pick(rng, borderline, (80, 102), (102, 116))


def _p_wave(rng: np.random.Generator, has: set[str], borderline: bool) -> tuple[float, float]:
    """P duration and amplitude in II (Hancock et al., Circulation 2009;119:e251): left atrial
    enlargement >= 120 ms, right atrial enlargement (P pulmonale) > 0.25 mV; normal < 120 ms and
    < 0.25 mV, the look-alike being a P just short of either limit."""
    near = borderline and bool(rng.random() < 0.3)
    duration = _pick(rng, near, (85, 110), (110, 116))
    if "LAO/LAE" in has:
        duration = _pick(rng, borderline, (135, 160), (122, 135))
    amplitude = _pick(rng, near, (0.07, 0.15), (0.16, 0.2))
    if "RAO/RAE" in has:
        amplitude = _pick(rng, borderline, (0.3, 0.45), (0.26, 0.3))
    return duration, amplitude


def _infarct(
    rng: np.random.Generator, has: set[str], borderline: bool
) -> tuple[tuple[str, ...], str, float, list, list]:
    """Walls, stage, Q duration, ST and T changes of myocardial infarction.

    Q waves >= 30 ms (>= 20 ms in V2-V3) and >= 0.1 mV deep in two contiguous leads, ST elevation
    at the J point >= 0.1 mV (>= 0.15-0.25 mV in V2-V3) for the acute stage: Thygesen et al.,
    Fourth Universal Definition of Myocardial Infarction, Circulation 2018;138:e618. The acute
    stage adds hyperacute T waves, the recent one T inversion with residual ST elevation, the old
    one Q waves with T inversion in half (most PTB-XL infarcts are old: stadium II-III).
    """
    walls = tuple(INFARCT_WALL[lab] for lab in ("IMI", "ASMI", "LMI") if lab in has)
    if not walls:
        return (), "", 0.0, [], []
    stage = str(rng.choice(["acute", "recent", "old"], p=[0.2, 0.3, 0.5]))
    q_ms = _pick(rng, borderline, (38, 55), (32, 38))
    st, turn = [], []
    for wall in walls:
        if stage == "acute":
            st.append((wall, _pick(rng, borderline, (0.25, 0.5), (0.16, 0.25))))
            turn.append((wall, float(rng.uniform(1.0, 1.5))))
        elif stage == "recent":
            st.append((wall, float(rng.uniform(0.03, 0.08))))
            turn.append((wall, _pick(rng, borderline, (-1.0, -0.6), (-0.6, -0.4))))
        elif rng.random() < 0.5:
            turn.append((wall, float(rng.uniform(-0.9, -0.4))))
    return walls, stage, q_ms, st, turn


def _st_t(rng: np.random.Generator, has: set[str], borderline: bool) -> tuple[list, list]:
    """Primary ST-T changes: ischaemic horizontal/downsloping ST depression >= 0.05 mV in two
    contiguous leads with or without T inversion > 0.1 mV (Thygesen 2018); non-diagnostic T
    abnormality: T flat (|T| < 0.1 mV) or inverted without ST depression."""
    region = ISCHAEMIC_REGIONS[rng.integers(len(ISCHAEMIC_REGIONS))]
    if "ISC_" in has:
        st = [(region, -_pick(rng, borderline, (0.1, 0.25), (0.06, 0.1)))]
        turn = [(region, float(rng.uniform(-0.9, -0.4)))] if rng.random() < 0.6 else []
        return st, turn
    if "NDT" in has:
        flat = rng.random() < 0.5
        inverted = _pick(rng, borderline, (-1.0, -0.5), (-0.5, -0.35))
        return [], [(region, float(rng.uniform(-0.1, 0.08)) if flat else inverted)]
    return [], []


def _hypertrophy(rng: np.random.Generator, has: set[str], borderline: bool) -> dict:
    """LVH: QRS voltage x 1.8-2.8 (Sokolow-Lyon SV1 + RV5/6 >= 3.5 mV, Cornell RaVL + SV3 > 2.8 mV
    men / 2.0 mV women), strain (lateral ST depression and T inversion) in half. RVH: right
    ventricular forces dominate (R/S in V1 > 1, R in V1 >= 0.7 mV, right axis): Hancock et al.,
    Circulation 2009;119:e251."""
    lvh = "LVH" in has
    strain = lvh and bool(rng.random() < 0.5)
    st = [("lateral", -float(rng.uniform(0.05, 0.15)))] if strain else []
    turn = [("lateral", float(rng.uniform(-0.9, -0.4)))] if strain else []
    if "RVH" in has and rng.random() < 0.5:  # right ventricular strain: T inversion V1-V3
        turn.append(("anteroseptal", float(rng.uniform(-0.8, -0.3))))
    return dict(
        qrs_voltage=_pick(rng, borderline, (2.1, 2.8), (1.8, 2.1)) if lvh else 1.0,
        rv_share=_pick(rng, borderline, (0.6, 0.85), (0.5, 0.6)) if "RVH" in has else 0.0,
        strain=strain,
        st=st,
        turn=turn,
    )


def _normal_st(rng: np.random.Generator, sex: str, age: float) -> tuple[str, float]:
    """Normal anterior ST elevation in V2-V3, larger in young men (Surawicz and Parikh, J Am Coll
    Cardiol 2002;40:1870): the look-alike of anterior injury, kept below the STEMI limits."""
    top = 0.16 if sex == "M" and age < 40 else 0.12 if sex == "M" else 0.07
    return "anteroseptal", float(rng.uniform(0.0, top))


def sample_features(
    rng: np.random.Generator,
    labels: tuple[str, ...],
    difficulty: float,
    sex: str = "M",
    age: float = 50.0,
) -> Features:
    """Features consistent with ``labels`` (already normalised) for a person of this sex and age."""
    has = set(labels)
    borderline = bool(rng.random() < difficulty)
    afib = "AFIB" in has
    rate = _rate(rng, has, borderline)
    pr = None if afib else _pick(rng, borderline, (130, 185), (185, 199))
    p_ms, p_mv = _p_wave(rng, has, borderline)
    if pr is not None:  # an isoelectric PR segment of >= 40 ms follows even a long P wave
        pr = max(pr, p_ms + 40)
    if "1AVB" in has:
        pr = _pick(rng, borderline, (220, 320), (202, 218))
    conduction, qrs = _conduction(rng, has, borderline)
    walls, stage, q_ms, mi_st, mi_turn = _infarct(rng, has, borderline)
    sttc_st, sttc_turn = _st_t(rng, has, borderline)
    hyp = _hypertrophy(rng, has, borderline)
    st = [_normal_st(rng, sex, age)] + mi_st + sttc_st + hyp["st"]
    qtc = None
    if "LNGQT" in has:
        limit = LONG_QTC_MS[sex]
        qtc = _pick(rng, borderline, (limit + 20, limit + 80), (limit + 5, limit + 20))
    fine = 1 - 0.6 * difficulty
    return Features(
        rhythm="afib" if afib else "sinus",
        rate_bpm=rate,
        pr_ms=pr,
        p_ms=p_ms,
        p_mv=p_mv,
        left_atrial="LAO/LAE" in has,
        right_atrial="RAO/RAE" in has,
        qrs_ms=qrs,
        conduction=conduction,
        block_strength=_pick(rng, borderline, (0.8, 1.2), (0.45, 0.8)),
        qrs_voltage=hyp["qrs_voltage"],
        rv_share=hyp["rv_share"],
        infarcts=walls,
        infarct_stage=stage,
        q_ms=q_ms,
        st_mv=tuple(st),
        t_turn=tuple(mi_turn + sttc_turn + hyp["turn"]),
        qtc_ms=qtc,
        strain=hyp["strain"],
        rr_cv=_pick(rng, borderline, (0.12, 0.3), (0.05, 0.1)) if afib else 0.0,
        fwave_mv=float(rng.uniform(0.03, 0.15) * fine) if afib else 0.0,
        borderline=borderline,
    )
