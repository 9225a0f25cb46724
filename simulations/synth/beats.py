"""One beat's waves as dipole lobes: P (atria), QRS (ventricular activation), T (recovery).

Directions are in Frank axes (X left, Y feet, Z back) for a textbook-oriented heart; the
subject's rotation and the lead projection happen later (``dipole``). The conduction pattern
decides the QRS: normal septal-then-free-wall activation, a late rightward-anterior lobe for
right bundle branch block, or slow right-to-left activation without septal q for left block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONDUCTIONS = ("normal", "irbbb", "crbbb", "clbbb")


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
    septal = (12.0, 6.0, (-0.55, 0.15, -0.7), 0.3 * amplitude)
    if conduction == "normal":
        s = qrs_ms / 90
        return _lobes(
            [
                (12 * s, 6 * s, septal[2], septal[3]),
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


def p_wave(duration_ms: float, amplitude: float) -> Lobes:
    """Right then left atrium, relative to P onset: biphasic in V1, upright in II."""
    return _lobes(
        [
            (0.35 * duration_ms, duration_ms / 6, (0.2, 0.8, -0.4), amplitude),
            (0.62 * duration_ms, duration_ms / 6, (0.7, 0.5, 0.4), 0.8 * amplitude),
        ]
    )


def t_vector(conduction: str, strain: bool, amplitude: float) -> np.ndarray:
    """T-wave direction: concordant with the QRS normally, discordant after abnormal activation."""
    if conduction == "clbbb" or strain:
        direction = np.array([-0.6, -0.1, 0.7]) * (1.3 if conduction == "clbbb" else 1.0)
    else:
        direction = np.array([0.6, 0.55, -0.35])
        if conduction == "crbbb":
            direction = direction + np.array([0.25, 0.0, 0.35])
    return amplitude * direction / np.linalg.norm(direction)


def t_waves(
    onsets: np.ndarray, qt_s: np.ndarray, vector: np.ndarray, scale: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Asymmetric T waves (slow upstroke, faster downstroke) ending at onset + QT of each beat."""
    sigma = 0.12 * qt_s
    peak = onsets + qt_s - 2.0 * sigma
    centers = np.stack([peak - 0.6 * sigma, peak], axis=1).ravel()
    widths = np.stack([1.1 * sigma, 0.7 * sigma], axis=1).ravel()
    weights = np.array([0.55, 0.6])
    vectors = (scale[:, None, None] * weights[None, :, None] * vector).reshape(-1, 3)
    return centers, widths, vectors
