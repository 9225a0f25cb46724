"""The heart as a moving 3-D dipole: Gaussian lobes in Frank (X, Y, Z) space -> 12 leads.

Frank axes: X to the patient's left, Y to the feet, Z to the back. Leads I, II and V1..V6 are
projections through the Dower matrix (torso geometry); III, aVR, aVL and aVF are computed from
I and II as an electrocardiograph does, so Einthoven's and Goldberger's relations hold exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Dower inverse transform rows for I, II, V1..V6 (Dower et al. 1988), columns X, Y, Z.
DOWER = np.array(
    [
        [0.632, -0.235, 0.059],
        [0.235, 1.066, -0.132],
        [-0.515, 0.157, -0.917],
        [0.044, 0.164, -1.387],
        [0.882, 0.098, -1.277],
        [1.213, 0.127, -0.601],
        [1.125, 0.127, -0.086],
        [0.831, 0.076, 0.230],
    ]
)


@dataclass(frozen=True)
class Subject:
    """What stays the same across one person's recordings: heart orientation and torso."""

    age: float
    sex: str  # 'M' or 'F'
    rotation: np.ndarray  # (3, 3) heart orientation relative to the textbook axis
    qrs_gain: float  # body build: thin chests show larger QRS voltages
    lead_gain: np.ndarray  # (8,) electrode placement / tissue scatter for I, II, V1..V6
    qtc_ms: float


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return z @ y @ x


def random_subject(rng: np.random.Generator, age: float, sex: str) -> Subject:
    """A plausible person: older hearts lie more horizontal (left axis drift), women have
    smaller QRS voltages and longer QTc."""
    frontal = np.deg2rad(rng.normal(-0.25 * (age - 50), 15.0))
    rotation = _rotation(rng.normal(0, 0.15), rng.normal(0, 0.2), frontal)
    qrs_gain = float(np.exp(rng.normal(0, 0.18)) * (0.85 if sex == "F" else 1.0))
    qrs_gain *= float(np.clip(1.15 - 0.005 * (age - 40), 0.8, 1.2))
    lead_gain = np.exp(rng.normal(0, 0.1, 8))
    qtc = rng.normal(410 if sex == "F" else 398, 15)
    return Subject(float(age), sex, rotation, qrs_gain, lead_gain, float(qtc))


def textbook_subject() -> Subject:
    """The average adult: used where a caller wants the model without person-to-person scatter."""
    return Subject(50.0, "M", np.eye(3), 1.0, np.ones(8), 400.0)


def render(
    centers_s: np.ndarray, widths_s: np.ndarray, vectors: np.ndarray, fs: float, n: int
) -> np.ndarray:
    """Sum Gaussian lobes (center, width in seconds, (3,) amplitude vector) into a (3, n) dipole.

    Each lobe is evaluated only within 4 widths of its center, so cost grows with the number of
    lobes, not with record length times lobes.
    """
    out = np.zeros((3, n))
    c = centers_s * fs
    w = widths_s * fs
    half = int(np.ceil(4 * w.max())) if len(w) else 0
    keep = (c > -half) & (c < n + half)
    c, w, vectors = c[keep], w[keep], vectors[keep]
    if not len(c):
        return out
    idx = np.rint(c).astype(np.int64)[:, None] + np.arange(-half, half + 1)
    g = np.exp(-0.5 * ((idx - c[:, None]) / w[:, None]) ** 2)
    # Shift so the earliest kept window starts at index >= 0; slice the record back out.
    flat = (idx + 2 * half).ravel()
    size = n + 4 * half + 1
    for d in range(3):
        summed = np.bincount(flat, weights=(g * vectors[:, d, None]).ravel(), minlength=size)
        out[d] = summed[2 * half : 2 * half + n]
    return out


def independent_leads(dipole: np.ndarray, subject: Subject) -> np.ndarray:
    """Project a (3, n) dipole in textbook orientation onto I, II, V1..V6 for this subject."""
    return (subject.lead_gain[:, None] * DOWER) @ subject.rotation @ dipole


def twelve_leads(independent: np.ndarray) -> np.ndarray:
    """(8, n) I, II, V1..V6 -> (12, n) in canonical order, limb leads derived from I and II."""
    lead_i, lead_ii = independent[0], independent[1]
    limb = np.stack(
        [
            lead_i,
            lead_ii,
            lead_ii - lead_i,
            -(lead_i + lead_ii) / 2,
            lead_i - lead_ii / 2,
            lead_ii - lead_i / 2,
        ]
    )
    return np.concatenate([limb, independent[2:]])


#: Each of the twelve leads as a direction in Frank space (textbook heart, no scatter).
LEAD_VECTORS = twelve_leads(DOWER)


def facing_gain(direction: np.ndarray) -> float:
    """What the lead that best faces ``direction`` shows per mV of dipole along it: turns a
    level wanted in that lead (an ST elevation, say) into a dipole amplitude."""
    return float((LEAD_VECTORS @ direction).max())
