"""One synthetic 12-lead ECG in memory: labels -> features -> beats -> dipole -> leads -> device."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from simulations.synth import beats, rhythm
from simulations.synth.device import IDEAL, Acquisition, Device, acquire
from simulations.synth.dipole import (
    LEAD_VECTORS,
    Subject,
    facing_gain,
    independent_leads,
    render,
    textbook_subject,
)
from simulations.synth.pathology import (
    LONG_QTC_MS,
    Features,
    difficulty_value,
    normalise,
    sample_features,
)

#: Direction of the fibrillating atria's dipole: anterior and inferior, largest in V1 and II.
_FWAVE_DIRECTION = np.array([-0.2, 0.5, -0.8]) / np.linalg.norm([-0.2, 0.5, -0.8])


def _rng(rng_or_seed: np.random.Generator | np.random.SeedSequence | int) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def _p_lobes(feats: Features) -> beats.Lobes:
    """P-wave lobes scaled so that the textbook heart shows ``feats.p_mv`` in lead II."""
    unit = beats.p_wave(feats.p_ms, 1.0, feats.left_atrial, feats.right_atrial)
    fs, margin = 1000, 0.05
    shape = render(unit.offsets + margin, unit.widths, unit.vectors, fs, int(fs * 0.3))
    peak = float((LEAD_VECTORS[1] @ shape).max())
    return beats.Lobes(unit.offsets, unit.widths, unit.vectors * feats.p_mv / peak)


def _st_vector(feats: Features) -> np.ndarray:
    """The ST shifts of ``feats`` as one dipole: each region's level (mV in the lead facing it)
    divided by how strongly that lead sees the region."""
    out = np.zeros(3)
    for region, level in feats.st_mv:
        toward = beats.REGIONS[region]
        out += level / facing_gain(toward) * toward
    return out


def _waves(
    rng: np.random.Generator, feats: Features, subject: Subject, duration_s: float
) -> tuple[list, np.ndarray, np.ndarray]:
    """Every beat's waves as dipole lobes (QRS, P, T, ST plateau), the beat onsets and the RR
    intervals, for ``duration_s`` seconds of the rhythm ``feats`` describe."""
    if feats.rhythm == "afib":
        rr = rhythm.afib_rr(rng, feats.rate_bpm, duration_s, feats.rr_cv)
    else:
        rr = rhythm.sinus_rr(rng, feats.rate_bpm, duration_s)
    onsets = rhythm.beat_onsets(rng, rr)
    rr_before = np.concatenate([[rr[0]], rr[:-1]])
    breathing = 1 + 0.05 * np.sin(2 * np.pi * 0.25 * onsets + rng.uniform(0, 2 * np.pi))

    qrs_amp = 1.6 * subject.qrs_gain * feats.qrs_voltage
    qrs = beats.qrs_complex(feats.conduction, feats.qrs_ms, qrs_amp, feats.block_strength)
    qrs = beats.with_right_ventricle(qrs, feats.rv_share, feats.qrs_ms, qrs_amp)
    qrs = beats.without_walls(qrs, feats.infarcts, feats.q_ms, qrs_amp)
    parts = [qrs.at(onsets, breathing)]
    if feats.pr_ms is not None:
        parts.append(_p_lobes(feats).at(onsets - feats.pr_ms / 1000, breathing))
    wide = max(feats.qrs_ms - 95, 0) / 1000  # a wide QRS lengthens QT by its excess
    # Fridericia's correction; without long QT the subject stays 10 ms below the limit.
    qtc = feats.qtc_ms or min(subject.qtc_ms, LONG_QTC_MS[subject.sex] - 10)
    qt = qtc / 1000 * np.cbrt(rr_before) + wide
    t_amp = rng.uniform(0.25, 0.45) * np.sqrt(subject.qrs_gain)
    t_vec = beats.turned(beats.t_vector(feats.conduction, t_amp), feats.t_turn)
    parts.append(beats.t_waves(onsets, qt, t_vec, breathing))
    # ST from 20 ms before the J point (injury current flows while the wall depolarises) to
    # the T peak, where the T wave takes over.
    j_s = feats.qrs_ms / 1000
    st_vector = _st_vector(feats)
    parts.append(beats.st_plateau(onsets, j_s - 0.02, beats.t_peak(qt), st_vector, breathing))
    return parts, onsets, rr


def generate_record(
    rng_or_seed: np.random.Generator | np.random.SeedSequence | int,
    labels: Iterable[str] = ("NORM",),
    duration_s: float = 10.0,
    difficulty: float | str = "default",
    subject: Subject | None = None,
    device: Device = IDEAL,
    acquisition: Acquisition | None = None,
) -> tuple[np.ndarray, dict]:
    """A (12, n) float32 mV ECG showing ``labels`` and a dict of what was generated.

    ``device`` sets the rate (the default is an ideal 500 Hz recorder) and ``acquisition=None``
    the typical noise of ``difficulty`` (pass ``device.CLEAN`` for none). The info dict holds the
    true labels, features, mean heart rate and QRS onset samples.
    """
    rng = _rng(rng_or_seed)
    level = difficulty_value(difficulty)
    labels = normalise(labels)
    subject = subject or textbook_subject()
    acquisition = acquisition if acquisition is not None else Acquisition.typical(level)
    feats = sample_features(rng, labels, level, subject.sex, subject.age)
    n = int(round(duration_s * device.fs))

    parts, onsets, rr = _waves(rng, feats, subject, duration_s)
    centers, widths, vectors = (np.concatenate(x) for x in zip(*parts, strict=True))
    dipole = render(centers, widths, vectors, device.fs, n)
    if feats.rhythm == "afib":
        f = rhythm.fibrillatory_waves(rng, n, device.fs, feats.fwave_mv)
        dipole += _FWAVE_DIRECTION[:, None] * f

    leads, fault = acquire(rng, independent_leads(dipole, subject), device, acquisition)
    inside = onsets[(onsets >= 0) & (onsets < duration_s)]
    in_window = rr[1:][(onsets[1:] >= 0) & (onsets[1:] < duration_s)]
    info = {
        "labels": labels,
        "fs": device.fs,
        "heart_rate": float(60 / in_window.mean()) if len(in_window) else feats.rate_bpm,
        "qrs_onsets": np.round(inside * device.fs).astype(int),
        "fault": fault,
        **vars(feats),
    }
    return leads.astype(np.float32), info
