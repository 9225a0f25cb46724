"""When the ventricles beat: RR-interval processes, and the atrial activity of fibrillation."""

from __future__ import annotations

import numpy as np

#: Seconds simulated before the record starts, so the first samples show a beat in progress.
LEAD_IN_S = 1.5


def _oscillation(rng: np.random.Generator, t: np.ndarray, f_lo: float, f_hi: float) -> np.ndarray:
    """A unit sinusoid of random frequency in [f_lo, f_hi] Hz and random phase."""
    return np.sin(2 * np.pi * rng.uniform(f_lo, f_hi) * t + rng.uniform(0, 2 * np.pi))


def sinus_rr(rng: np.random.Generator, rate_bpm: float, duration_s: float) -> np.ndarray:
    """RR intervals (s) of sinus rhythm covering the record plus lead-in and lead-out.

    Heart-rate variability as two oscillations sampled at the beats: Mayer waves (LF, ~0.1 Hz)
    and respiratory sinus arrhythmia (HF, 0.15-0.4 Hz), plus a little beat-to-beat jitter.
    The series is rescaled so its mean is exactly the intended rate.
    """
    mean_rr = 60.0 / rate_bpm
    n = int(np.ceil((duration_s + 2 * LEAD_IN_S) / mean_rr)) + 2
    t = np.arange(n) * mean_rr
    lf = rng.uniform(0.005, 0.025) * _oscillation(rng, t, 0.08, 0.12)
    hf = rng.uniform(0.005, 0.03) * _oscillation(rng, t, 0.15, 0.4)
    rr = 1 + lf + hf + rng.normal(0, 0.005, n)
    return rr * mean_rr / rr.mean()


def afib_rr(rng: np.random.Generator, rate_bpm: float, duration_s: float, cv: float) -> np.ndarray:
    """Irregularly irregular RR: independent log-normal draws, no memory between beats."""
    mean_rr = 60.0 / rate_bpm
    n = int(np.ceil((duration_s + 2 * LEAD_IN_S) / mean_rr * 1.3)) + 2
    sigma = np.sqrt(np.log1p(cv**2))
    rr = mean_rr * rng.lognormal(-(sigma**2) / 2, sigma, n)
    return np.maximum(rr, 0.25)


def beat_onsets(rng: np.random.Generator, rr: np.ndarray) -> np.ndarray:
    """QRS onset times (s) from RR intervals, with a random phase so record start is arbitrary."""
    return np.cumsum(rr) - LEAD_IN_S - rng.uniform(0, rr[0])


def fibrillatory_waves(
    rng: np.random.Generator, n: int, fs: float, amplitude_mv: float
) -> np.ndarray:
    """f-waves (n,): a 4-9 Hz oscillation whose frequency and amplitude wander over seconds."""
    t = np.arange(n) / fs
    out = np.zeros(n)
    for _ in range(2):
        f0 = rng.uniform(4.0, 9.0)
        drift = 0.6 * _oscillation(rng, t, 0.05, 0.3)
        phase = 2 * np.pi * np.cumsum(f0 + drift) / fs + rng.uniform(0, 2 * np.pi)
        envelope = 1 + 0.4 * _oscillation(rng, t, 0.1, 0.5)
        out += envelope * np.sin(phase)
    return amplitude_mv * out / 2
