"""Who is recorded where: hospital and site profiles, patients, and every record's plan.

A plan fixes everything about a dataset except the signals (sites, devices, patients, true and
written labels, dates, folds). It is drawn sequentially from the spec's seed; signals are then
drawn per record from ``SeedSequence(seed, spawn_key=(1, index))``, so any worker order gives the
same files.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Annotated

import numpy as np

from common.config import Seed, above, at_least, check
from common.experiment import MAX_SITES
from common.preprocess import MAX_DURATION_S
from simulations.synth.annotation import annotate
from simulations.synth.device import Acquisition, Device
from simulations.synth.dipole import random_subject
from simulations.synth.generate import generate_record
from simulations.synth.pathology import ABNORMAL, difficulty_value, is_consistent, normalise

#: Share of records with each finding before site and age effects (NORM is what is left).
DEFAULT_PREVALENCE = {
    "AFIB": 0.12,
    "SBRAD": 0.09,
    "STACH": 0.09,
    "1AVB": 0.08,
    "CRBBB": 0.08,
    "CLBBB": 0.06,
    "IRBBB": 0.05,
    "LVH": 0.06,
    "RVH": 0.015,
    "LAO/LAE": 0.03,
    "RAO/RAE": 0.015,
    "IMI": 0.04,
    "ASMI": 0.035,
    "LMI": 0.015,
    "ISC_": 0.04,
    "NDT": 0.04,
    "LNGQT": 0.015,
}
#: Findings that grow more common with age.
_AGEING = {"AFIB", "1AVB", "CLBBB", "LVH", "LAO/LAE", "IMI", "ASMI", "LMI", "ISC_"}
#: Findings drawn after the rhythm, the conduction pattern and LVH, each alone or next to what
#: it often accompanies (odds multiplied): atrial enlargement with the same side's ventricular
#: hypertrophy, ischaemic and T-wave changes with an infarct.
_INFARCTS = frozenset({"IMI", "ASMI", "LMI"})
_FURTHER = {
    "RVH": (frozenset(), 1.0),
    "IMI": (frozenset(), 1.0),
    "ASMI": (frozenset(), 1.0),
    "LMI": (_INFARCTS, 2.0),  # infero- and anterolateral infarcts
    "LAO/LAE": (frozenset({"LVH"}), 4.0),
    "RAO/RAE": (frozenset({"RVH"}), 6.0),
    "ISC_": (_INFARCTS, 2.5),
    "NDT": (_INFARCTS, 1.5),
    "LNGQT": (frozenset(), 1.0),
}
#: Resource cap (docs/formats.md#configuration-limits): ten times PTB-XL's 21,799 records times
#: 50 is days of generation and terabytes of disk.
MAX_RECORDS = 10_000_000

TIS_DEVICES = (
    Device("MAC-5500", 500, 150.0, 4.88, notch=True),
    Device("MAC-1200", 500, 40.0, 4.88, notch=True),
    Device("ECG-1350", 500, 100.0, 2.5, notch=False),
    Device("CardioMax-12", 1000, 150.0, 1.0, notch=False),
    Device("AT-102", 1000, 100.0, 2.5, notch=True),
    Device("Cardiovit-CS", 1000, None, 1.0, notch=False),
)
PTBXL_DEVICES = (
    Device("CS-12   E", 500, None, 1.0, notch=False),
    Device("AT-6 C 5.5", 500, 150.0, 1.0, notch=False),
    Device("AT-60    3", 500, 150.0, 1.0, notch=False),
    Device("CS100    3", 500, None, 1.0, notch=False),
)


@dataclass(frozen=True)
class _SpecBase:
    """What every synthetic dataset spec sets: size, population, difficulty, seed."""

    n_records: Annotated[int, at_least(1, cap=MAX_RECORDS)] = 1000
    duration_s: Annotated[float, above(0, cap=MAX_DURATION_S)] = 10.0
    #: Site sizes fall as 1 / rank**size_skew; 0 = equal sizes (past ~20 one site has them all).
    size_skew: Annotated[float, at_least(0, 100)] = 1.0
    prevalence: dict[str, Annotated[float, at_least(0, 1)]] = field(
        default_factory=lambda: dict(DEFAULT_PREVALENCE)
    )
    #: Log-normal spread of each site's prevalence around the spec's.
    heterogeneity: Annotated[float, at_least(0, 10)] = 0.5
    records_per_patient: Annotated[float, at_least(1, 1000)] = 1.3  # mean; some come back
    difficulty: float | str = "default"
    seed: Seed = 0

    def validate(self) -> None:
        difficulty_value(self.difficulty)
        unknown = set(self.prevalence) - set(ABNORMAL)
        if unknown:
            raise ValueError(f"prevalence: unknown label(s) {sorted(unknown)}; use {ABNORMAL}")


@dataclass(frozen=True)
class TisNetworkSpec(_SpecBase):
    """A TIS-like network: many hospitals of unequal size, mixed devices at 500 or 1000 Hz."""

    n_records: Annotated[int, at_least(1, cap=MAX_RECORDS)] = 2000
    n_hospitals: Annotated[int, at_least(1, cap=MAX_SITES)] = 8
    fs_choices: tuple[int, ...] = (500, 1000)

    def validate(self) -> None:
        super().validate()
        if not set(self.fs_choices) <= {d.fs for d in TIS_DEVICES} or not self.fs_choices:
            raise ValueError(f"fs_choices {self.fs_choices}: expected some of 500, 1000")
        if self.n_hospitals > self.n_records:
            raise ValueError("need n_hospitals <= n_records")


@dataclass(frozen=True)
class PtbxlLikeSpec(_SpecBase):
    """A PTB-XL-like dataset: one institution's few sites, written at 500 Hz and 100 Hz."""

    n_sites: Annotated[int, at_least(1, cap=MAX_SITES)] = 4
    heterogeneity: Annotated[float, at_least(0, 10)] = 0.3
    records_per_patient: Annotated[float, at_least(1, 1000)] = 1.15

    def validate(self) -> None:
        super().validate()
        if self.n_sites > self.n_records:
            raise ValueError("need n_sites <= n_records")


@dataclass(frozen=True)
class Site:
    """One hospital (or PTB-XL site): its devices, noise, population and annotators."""

    name: str
    devices: tuple[Device, ...]
    acquisition: Acquisition
    prevalence: dict[str, float]
    age_mean: float
    female_share: float
    annotator_error: float


@dataclass(frozen=True)
class PlannedRecord:
    """Everything about one record except its signal."""

    index: int
    site: Site
    device: Device
    patient_index: int
    age: int
    sex: str
    date: datetime
    truth: tuple[str, ...]
    written: tuple[str, ...]
    fold: int = 0  # PTB-XL strat_fold, by patient
    validated: bool = False


def _site(
    rng: np.random.Generator, name: str, devices: tuple[Device, ...], mains_hz: float, spec
) -> Site:
    level = difficulty_value(spec.difficulty)
    chosen = rng.choice(len(devices), size=min(len(devices), rng.integers(1, 3)), replace=False)
    units = tuple(replace(devices[i], gain=float(rng.normal(1, 0.02))) for i in sorted(chosen))
    typical = Acquisition.typical(level, mains_hz)
    noisiness = rng.lognormal(0, 0.4)
    acquisition = replace(
        typical,
        mains_mv=typical.mains_mv * rng.lognormal(0, 0.5),
        wander_mv=typical.wander_mv * noisiness,
        emg_mv=typical.emg_mv * noisiness,
    )
    prevalence = {
        k: float(min(0.6, v * rng.lognormal(0, spec.heterogeneity)))
        for k, v in spec.prevalence.items()
    }
    return Site(
        name=name,
        devices=units,
        acquisition=acquisition,
        prevalence=prevalence,
        age_mean=float(rng.uniform(50, 68)),
        female_share=float(rng.uniform(0.4, 0.6)),
        annotator_error=float(rng.uniform(0, 0.16) * level),
    )


def _sizes(total: int, n: int, skew: float) -> list[int]:
    """Split ``total`` into ``n`` sizes falling as 1/rank**skew (largest remainder, each >= 1)."""
    weights = 1 / np.arange(1, n + 1) ** skew
    raw = (total - n) * weights / weights.sum()
    sizes = np.floor(raw).astype(int)
    sizes[np.argsort(sizes - raw)[: total - n - sizes.sum()]] += 1
    return [int(s) + 1 for s in sizes]


def draw_labels(rng: np.random.Generator, prevalence: dict[str, float], age: float) -> tuple:
    """A consistent true label set: one rhythm, at most one bundle-branch pattern, extras; a
    further finding that cannot go with those drawn before it is left out."""
    older = np.exp(0.025 * (age - 60))
    p = {k: prevalence.get(k, 0.0) * (older if k in _AGEING else 1.0) for k in ABNORMAL}
    labels = []
    r = rng.random()
    for rhythm in ("AFIB", "SBRAD", "STACH"):
        if r < p[rhythm]:
            labels.append(rhythm)
            break
        r -= p[rhythm]
    r = rng.random()
    for pattern in ("CRBBB", "CLBBB", "IRBBB"):
        if r < p[pattern]:
            labels.append(pattern)
            break
        r -= p[pattern]
    if "AFIB" not in labels and rng.random() < p["1AVB"]:
        labels.append("1AVB")
    if rng.random() < p["LVH"]:
        labels.append("LVH")
    for label, (companions, odds) in _FURTHER.items():
        chance = p[label] * (odds if companions & set(labels) else 1.0)
        if rng.random() < chance and is_consistent([*labels, label]):
            labels.append(label)
    return normalise(labels)


def _patients_records(
    rng: np.random.Generator, site: Site, n: int, first_patient: int, spec, start: datetime
) -> list[PlannedRecord]:
    """Records of one site: patients arrive, some return (usually with the same findings)."""
    out: list[PlannedRecord] = []
    patient = first_patient
    while len(out) < n:
        age = int(np.clip(rng.normal(site.age_mean, 15), 18, 95))
        sex = "F" if rng.random() < site.female_share else "M"
        visits = min(1 + rng.poisson(spec.records_per_patient - 1), n - len(out))
        truth = draw_labels(rng, site.prevalence, age)
        for visit in range(visits):
            if visit and rng.random() < 0.3:
                truth = draw_labels(rng, site.prevalence, age)
            date = start + timedelta(seconds=int(rng.integers(0, 6 * 365 * 86400)))
            device = site.devices[rng.integers(len(site.devices))]
            written = annotate(rng, truth, site.annotator_error)
            out.append(PlannedRecord(0, site, device, patient, age, sex, date, truth, written))
        patient += 1
    return out


def _plan(spec, sites: list[Site], sizes: list[int], rng: np.random.Generator, start: datetime):
    records: list[PlannedRecord] = []
    for site, size in zip(sites, sizes, strict=True):
        first = records[-1].patient_index + 1 if records else 0
        records += _patients_records(rng, site, size, first, spec, start)
    records.sort(key=lambda r: (r.date, r.patient_index))
    return [replace(r, index=i) for i, r in enumerate(records)]


def plan_tis(spec: TisNetworkSpec) -> list[PlannedRecord]:
    """The records of a TIS-like network, in recording order."""
    check(spec, type(spec).__name__)
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(0,)))
    devices = tuple(d for d in TIS_DEVICES if d.fs in spec.fs_choices)
    sites = [
        _site(rng, f"H{i + 1:02d}", devices, float(rng.choice([50.0, 60.0])), spec)
        for i in range(spec.n_hospitals)
    ]
    sizes = _sizes(spec.n_records, spec.n_hospitals, spec.size_skew)
    return _plan(spec, sites, sizes, rng, datetime(2012, 1, 1))


def plan_ptbxl_like(spec: PtbxlLikeSpec) -> list[PlannedRecord]:
    """The records of a PTB-XL-like dataset with folds by patient; folds 9-10 human-validated,
    and validated records carry fewer annotation errors."""
    check(spec, type(spec).__name__)
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(0,)))
    sites = [_site(rng, str(i), PTBXL_DEVICES, 50.0, spec) for i in range(spec.n_sites)]
    sizes = _sizes(spec.n_records, spec.n_sites, spec.size_skew)
    records = _plan(spec, sites, sizes, rng, datetime(1989, 1, 1))
    patients = sorted({r.patient_index for r in records})
    order = rng.permutation(len(patients))
    fold = {patients[j]: int(k % 10) + 1 for k, j in enumerate(order)}
    out = []
    for r in records:
        f = fold[r.patient_index]
        validated = f >= 9 or bool(rng.random() < 0.7)
        error = r.site.annotator_error * (0.3 if validated else 1.0)
        written = annotate(rng, r.truth, error)
        out.append(replace(r, fold=f, validated=validated, written=written))
    return out


def synthesize(record: PlannedRecord, spec: _SpecBase) -> tuple[np.ndarray, dict]:
    """The signal of a planned record; the same patient always gets the same heart and torso."""
    person = np.random.default_rng(
        np.random.SeedSequence(spec.seed, spawn_key=(2, record.patient_index))
    )
    return generate_record(
        np.random.SeedSequence(spec.seed, spawn_key=(1, record.index)),
        record.truth,
        duration_s=spec.duration_s,
        difficulty=spec.difficulty,
        subject=random_subject(person, record.age, record.sex),
        device=record.device,
        acquisition=record.site.acquisition,
    )
