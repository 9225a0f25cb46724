"""One beat's waves as dipole lobes: P (atria), QRS (ventricular activation), T (recovery).

Directions are in Frank axes (X left, Y feet, Z back) for a textbook-oriented heart; the
subject's rotation and the lead projection happen later (``dipole``). The conduction pattern
decides the QRS: normal septal-then-free-wall activation, a late rightward-anterior lobe for
right bundle branch block, or slow right-to-left activation without septal q for left block.
Disease then edits these lobes: an infarcted wall loses its forces (Q waves), a hypertrophied
right ventricle adds its own, injury or ischaemia shifts the ST segment toward or away from a
wall, and repolarisation changes turn the T vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONDUCTIONS = ("normal", "irbbb", "crbbb", "clbbb")


def _unit(x: float, y: float, z: float) -> np.ndarray:
    return np.array([x, y, z]) / np.linalg.norm([x, y, z])


#: Walls of the textbook heart as unit vectors, each pointing at the leads that face it: inferior
#: (II, III, aVF), anteroseptal (V1-V3), lateral (I, aVL, V5-V6), anterolateral (V3-V6, I).
REGIONS = {
    "inferior": _unit(0.0, 1.0, -0.1),
    "anteroseptal": _unit(0.1, -0.1, -1.0),
    "lateral": _unit(0.9, -0.4, 0.1),
    "anterolateral": _unit(0.8, 0.1, -0.6),
}
#: Where a hypertrophied right ventricle pulls the main QRS forces: rightward, down, anterior.
_RIGHT_VENTRICLE = _unit(-0.55, 0.45, -0.7)


@dataclass(frozen=True)
class Lobes:
    """Gaussian lobes: center offsets and widths in seconds, amplitude vectors (k, 3) in mV."""

    offsets: np.ndarray
    widths: np.ndarray
    vectors: np.ndarray

    def at(self, refs: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, ...]:
        """The same lobes placed at each reference time, amplitudes scaled per beat."""
        centers = (refs[:, None] + self.offsets).ravel()
        widths = np.broadcast_to(self.widths, (len(refs), len(self.widths))).ravel()
        vectors = (scale[:, None, None] * self.vectors).reshape(-1, 3)
        return centers, widths, vectors


def _lobes(rows: list[tuple[float, float, tuple[float, float, float], float]]) -> Lobes:
    """Rows of (center ms, width ms, direction, amplitude mV) -> Lobes in seconds."""
    offsets = np.array([r[0] for r in rows]) / 1000
    widths = np.array([r[1] for r in rows]) / 1000
    vectors = np.array([np.asarray(r[2]) / np.linalg.norm(r[2]) * r[3] for r in rows])
    return Lobes(offsets, widths, vectors)


def qrs_complex(conduction: str, qrs_ms: float, amplitude: float, strength: float = 1.0) -> Lobes:
    """QRS lobes relative to QRS onset; ``qrs_ms`` is onset to end of the last lobe (~2 widths).

    ``strength`` scales the late lobe that makes a block recognisable (atypical blocks are weak).
    """
    septal = (10.0, 5.0, (-0.55, 0.15, -0.7), 0.22 * amplitude)  # q < 30 ms in I, V5-V6
    if conduction == "normal":
        s = qrs_ms / 90
        return _lobes(
            [
                (10 * s, 5 * s, septal[2], septal[3]),
                (40 * s, 11 * s, (0.85, 0.5, 0.25), amplitude),
                (66 * s, 8 * s, (-0.3, -0.4, 0.6), 0.35 * amplitude),
            ]
        )
    if conduction in ("irbbb", "crbbb"):
        width = 0.14 * qrs_ms
        late = (0.45 if conduction == "irbbb" else 0.8) * strength
        return _lobes(
            [
                septal,
                (40.0, 11.0, (0.85, 0.5, 0.25), 0.85 * amplitude),
                (qrs_ms - 2 * width, width, (-0.6, 0.1, -0.75), late * amplitude),
            ]
        )
    if conduction == "clbbb":
        first, second = 0.12 * qrs_ms, 0.13 * qrs_ms
        return _lobes(
            [
                (2 * first + 0.04 * qrs_ms, first, (0.75, 0.15, 0.55), 1.0 * amplitude),
                (qrs_ms - 2 * second, second, (0.55, 0.1, 0.85), 1.1 * strength * amplitude),
            ]
        )
    raise ValueError(f"unknown conduction {conduction!r}; expected one of {CONDUCTIONS}")


def _with(qrs: Lobes, vectors: np.ndarray, extra: Lobes) -> Lobes:
    """``qrs`` with its amplitude vectors replaced by ``vectors`` and the ``extra`` lobes added."""
    return Lobes(
        np.concatenate([qrs.offsets, extra.offsets]),
        np.concatenate([qrs.widths, extra.widths]),
        np.concatenate([vectors, extra.vectors]),
    )


def without_walls(qrs: Lobes, walls: tuple[str, ...], q_ms: float, amplitude: float) -> Lobes:
    """An infarct as an electrical window (Wilson): the dead wall's early forces are gone, so the
    leads facing it see the opposite ones, a Q wave lasting about ``q_ms``. Each wall adds one
    early lobe pointing away from it and loses most of every lobe's pull toward it (the septal
    r in V1-V2 goes with an anteroseptal infarct)."""
    if not walls:
        return qrs
    vectors = qrs.vectors.copy()
    rows = []
    for wall in walls:
        toward = REGIONS[wall]
        vectors -= 0.8 * np.clip(vectors @ toward, 0, None)[:, None] * toward
        rows.append((q_ms / 2, q_ms / 4.5, tuple(-toward), 0.6 * amplitude))
    return _with(qrs, vectors, _lobes(rows))


def with_right_ventricle(qrs: Lobes, share: float, qrs_ms: float, amplitude: float) -> Lobes:
    """Right ventricular hypertrophy: during the main QRS a ``share`` of the forces comes from
    the right ventricle (tall R in V1, deep S in V5-V6, right axis) instead of the left."""
    if not share:
        return qrs
    vectors = qrs.vectors.copy()
    vectors[1:] *= 1 - share
    s = qrs_ms / 90
    right = _lobes([(45 * s, 12 * s, tuple(_RIGHT_VENTRICLE), 1.4 * share * amplitude)])
    return _with(qrs, vectors, right)


def p_wave(
    duration_ms: float, amplitude: float, left_atrial: bool = False, right_atrial: bool = False
) -> Lobes:
    """Right then left atrium, relative to P onset: biphasic in V1, upright in II.

    Left atrial enlargement delays, enlarges and turns posterior the left-atrial lobe: a notched
    P in II and a deep negative terminal P in V1 (Morris' P terminal force). Right atrial
    enlargement turns the right-atrial lobe down and forward: tall in II, III, aVF and V1.
    """
    d = duration_ms
    right = (0.35 * d, d / 6, (0.1, 0.85, -0.5) if right_atrial else (0.2, 0.8, -0.4), amplitude)
    left = (0.62 * d, d / 6, (0.7, 0.5, 0.4), 0.8 * amplitude)
    if left_atrial:
        left = (0.7 * d, d / 5.5, (0.3, 0.2, 0.95), 1.8 * amplitude)
    return _lobes([right, left])


def st_plateau(
    onsets: np.ndarray, start_s: float, ends_s: np.ndarray, vector: np.ndarray, scale: np.ndarray
) -> tuple[np.ndarray, ...]:
    """An ST-segment shift of ``vector`` (mV) held from ``start_s`` to ``ends_s`` after each
    onset: Gaussians one width apart, whose sum is flat within 0.1 %, so the plateau has a level
    that can be measured like a real ST segment."""
    count = max(int(np.ceil((ends_s - start_s).max() / 0.01)), 2)
    spacing = (ends_s - start_s) / (count - 1)
    centers = (onsets + start_s)[:, None] + np.arange(count) * spacing[:, None]
    widths = np.repeat(spacing[:, None], count, axis=1)
    vectors = scale[:, None, None] * np.broadcast_to(vector / np.sqrt(2 * np.pi), (count, 3))
    return centers.ravel(), widths.ravel(), vectors.reshape(-1, 3)


def turned(t: np.ndarray, turns: tuple[tuple[str, float], ...]) -> np.ndarray:
    """The T vector with its component toward each region set to ``share`` x |T|: 1 keeps a full
    T in the leads facing the region, 0 flattens it there, a negative share inverts it."""
    size = np.linalg.norm(t)
    for region, share in turns:
        toward = REGIONS[region]
        t = t + (share * size - t @ toward) * toward
    return t


def t_vector(conduction: str, amplitude: float) -> np.ndarray:
    """T-wave direction: concordant with the QRS normally, discordant after abnormal activation."""
    if conduction == "clbbb":
        direction = np.array([-0.6, -0.1, 0.7])
    else:
        direction = np.array([0.6, 0.55, -0.35])
        if conduction == "crbbb":
            direction = direction + np.array([0.25, 0.0, 0.35])
    return amplitude * direction / np.linalg.norm(direction)


def t_peak(qt_s: np.ndarray) -> np.ndarray:
    """When the T wave peaks after QRS onset: two of its widths (0.12 QT each) before QT ends."""
    return qt_s - 2.0 * 0.12 * qt_s


def t_waves(
    onsets: np.ndarray, qt_s: np.ndarray, vector: np.ndarray, scale: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Asymmetric T waves (slow upstroke, faster downstroke) ending at onset + QT of each beat."""
    sigma = 0.12 * qt_s
    peak = onsets + t_peak(qt_s)
    centers = np.stack([peak - 0.6 * sigma, peak], axis=1).ravel()
    widths = np.stack([1.1 * sigma, 0.7 * sigma], axis=1).ravel()
    weights = np.array([0.55, 0.6])
    vectors = (scale[:, None, None] * weights[None, :, None] * vector).reshape(-1, 3)
    return centers, widths, vectors
