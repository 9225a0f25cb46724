"""What recording adds to the heart's signal: device bandwidth and gain, noise, electrode faults.

Noise enters the eight independently measured channels (I, II, V1..V6) before the device derives
the other limb leads, as in a real electrocardiograph; electrode faults come after, which is why
a swapped or flat lead can break Einthoven's relation while ordinary noise does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import signal as sps

from simulations.synth.dipole import twelve_leads

FAULTS = ("flat", "noisy", "limb_swap", "precordial_swap")


@dataclass(frozen=True)
class Device:
    """An electrocardiograph model as one hospital runs it."""

    name: str
    fs: int
    lowpass_hz: float | None  # the device's own filter; None = full bandwidth
    resolution_uv: float  # quantisation step of the stored samples
    notch: bool  # removes mains interference
    gain: float = 1.0  # calibration error of this unit


#: An ideal recorder: no filtering, no quantisation, no gain error.
IDEAL = Device("ideal", 500, None, 0.0, True)


@dataclass(frozen=True)
class Acquisition:
    """Noise levels (mV) typical of one site; each record scatters around them."""

    mains_hz: float = 50.0
    mains_mv: float = 0.0
    wander_mv: float = 0.0
    emg_mv: float = 0.0
    fault_rate: float = 0.0

    @classmethod
    def typical(cls, difficulty: float, mains_hz: float = 50.0) -> Acquisition:
        """Levels of an ordinary resting-ECG room, scaled by difficulty (0.5 = default)."""
        k = 0.3 + 2.4 * difficulty
        return cls(mains_hz, 0.02 * k, 0.2 * k, 0.02 * k, 0.04 * difficulty)


#: No noise at all: what tests of the heart model use.
CLEAN = Acquisition()


@lru_cache(maxsize=32)
def _lowpass(cutoff: float, fs: float) -> np.ndarray:
    return sps.butter(2, cutoff, fs=fs, output="sos")


def _wander(rng: np.random.Generator, t: np.ndarray, level: float, channels: int) -> np.ndarray:
    """Breathing and movement: slow sinusoids shared across channels with per-channel weights."""
    freqs = np.concatenate([[rng.uniform(0.15, 0.4)], rng.uniform(0.03, 0.2, 2)])
    waves = np.sin(2 * np.pi * freqs[:, None] * t + rng.uniform(0, 2 * np.pi, (3, 1)))
    weights = rng.normal(0, 1, (channels, 3)) * [1.0, 0.7, 0.7]
    return level * rng.lognormal(0, 0.5) * (weights @ waves) / 1.5


def _emg(rng: np.random.Generator, n: int, fs: float, level: float, channels: int) -> np.ndarray:
    """Muscle noise: broadband, louder in bursts (a patient who tenses up for a second)."""
    noise = rng.normal(0, 1, (channels, n))
    envelope = np.ones(n)
    if rng.random() < 0.3:
        t = np.arange(n) / fs
        center, width = rng.uniform(0, n / fs), rng.uniform(0.3, 1.5)
        envelope += rng.uniform(1, 4) * np.exp(-0.5 * ((t - center) / width) ** 2)
    return level * rng.lognormal(0, 0.5) * noise * envelope


def _mains(rng: np.random.Generator, t: np.ndarray, acq: Acquisition, channels: int) -> np.ndarray:
    phase = 2 * np.pi * acq.mains_hz * t + rng.uniform(0, 2 * np.pi)
    hum = np.sin(phase) + 0.2 * np.sin(3 * phase)
    return acq.mains_mv * rng.lognormal(0, 0.6) * rng.uniform(0.3, 1.0, (channels, 1)) * hum


def _fault(rng: np.random.Generator, leads: np.ndarray) -> str:
    """Damage ``leads`` (12, n) in place the way a bad electrode does; returns what happened."""
    kind = FAULTS[rng.integers(len(FAULTS))]
    if kind == "flat":
        lead = rng.integers(12)
        leads[lead] = rng.normal(0, 0.002, leads.shape[1])
        kind = f"flat:{lead}"
    elif kind == "noisy":
        lead = rng.integers(12)
        leads[lead] += rng.normal(0, rng.uniform(0.15, 0.5), leads.shape[1])
        kind = f"noisy:{lead}"
    elif kind == "limb_swap":  # left/right arm reversal
        leads[[0, 1, 2, 3, 4]] = np.stack([-leads[0], leads[2], leads[1], leads[4], leads[3]])
    else:
        v = 6 + rng.integers(5)
        leads[[v, v + 1]] = leads[[v + 1, v]]
    return kind


def acquire(
    rng: np.random.Generator, independent: np.ndarray, device: Device, acq: Acquisition
) -> tuple[np.ndarray, str | None]:
    """(8, n) clean I, II, V1..V6 at device.fs -> (12, n) as stored, and the fault if any."""
    n = independent.shape[1]
    fs = device.fs
    t = np.arange(n) / fs
    x = independent * device.gain * rng.normal(1, 0.003, (8, 1))
    if acq.wander_mv:
        x = x + _wander(rng, t, acq.wander_mv, 8)
    if acq.emg_mv:
        x = x + _emg(rng, n, fs, acq.emg_mv, 8)
    if acq.mains_mv and not device.notch:
        x = x + _mains(rng, t, acq, 8)
    if device.lowpass_hz and device.lowpass_hz < fs / 2:
        x = sps.sosfiltfilt(_lowpass(device.lowpass_hz, fs), x, axis=1)
    leads = twelve_leads(x)
    fault = _fault(rng, leads) if rng.random() < acq.fault_rate else None
    if device.resolution_uv:
        step = device.resolution_uv / 1000
        leads = np.round(leads / step) * step
    return leads, fault
