"""One preprocessing pipeline for every path: resample, filter, crop/pad, normalise.

Every site must prepare its data with the same pipeline, so a pipeline has a fingerprint that
caches and checkpoints carry; data prepared otherwise is refused rather than silently mixed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Annotated

import numpy as np

from common.config import above

#: Bump when the code below changes what a given config produces.
PIPELINE_VERSION = 1
#: Shorter records carry too little rhythm to classify; prepare skips them with this reason.
MIN_DURATION_S = 2.0
#: Resource caps (docs/formats.md#configuration-limits): 10 minutes of 12 leads at 10 kHz is
#: 72 M samples (290 MB) a record, past any ECG device's rate and any resting ECG's length.
MAX_FS = 10_000.0
MAX_DURATION_S = 600.0


@dataclass(frozen=True)
class PipelineConfig:
    """How raw records become model input.

    The default (100 Hz, 10 s, 0.5-40 Hz band, per-lead z-score) follows the PTB-XL benchmark's
    input rate, which keeps CPU training affordable; the paper's 500 Hz is one setting away.
    """

    fs: Annotated[float, above(0, cap=MAX_FS)] = 100.0
    length_s: Annotated[float, above(0, cap=MAX_DURATION_S)] = 10.0
    highpass_hz: float | None = 0.5
    lowpass_hz: float | None = 40.0
    notch_hz: float | None = None
    normalise: str = "zscore"  # per lead: "zscore", "none"
    crop: str = "center"  # where to cut a longer record: "center" or "start"

    def validate(self) -> None:
        if self.length < 1:
            raise ValueError(f"fs * length_s = {self.fs * self.length_s:g}: not one sample")
        nyquist = self.fs / 2
        for name in ("highpass_hz", "lowpass_hz", "notch_hz"):
            value = getattr(self, name)
            if value is not None and not 0 < value < nyquist:
                raise ValueError(f"{name}={value} must lie between 0 and fs/2={nyquist}")
        if self.highpass_hz and self.lowpass_hz and self.highpass_hz >= self.lowpass_hz:
            raise ValueError("highpass_hz must be below lowpass_hz")
        if self.normalise not in ("zscore", "none"):
            raise ValueError(f"normalise={self.normalise!r}: expected 'zscore' or 'none'")
        if self.crop not in ("center", "start"):
            raise ValueError(f"crop={self.crop!r}: expected 'center' or 'start'")

    @property
    def length(self) -> int:
        """Samples per lead after preprocessing."""
        return int(round(self.fs * self.length_s))

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def fingerprint(self) -> str:
        payload = json.dumps({"v": PIPELINE_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def resample(x: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Polyphase resampling along the last axis (anti-aliased)."""
    from scipy import signal as sps  # here: config readers need no scipy

    if fs_in == fs_out:
        return x
    ratio = Fraction(fs_out / fs_in).limit_denominator(1000)
    return sps.resample_poly(x, ratio.numerator, ratio.denominator, axis=-1)


@lru_cache(maxsize=32)
def _bandpass(fs: float, low: float | None, high: float | None) -> np.ndarray | None:
    from scipy import signal as sps  # here: config readers need no scipy

    if low and high:
        return sps.butter(2, [low, high], btype="bandpass", fs=fs, output="sos")
    if low:
        return sps.butter(2, low, btype="highpass", fs=fs, output="sos")
    if high:
        return sps.butter(2, high, btype="lowpass", fs=fs, output="sos")
    return None


def fit_length(x: np.ndarray, length: int, crop: str = "center") -> np.ndarray:
    """Crop or zero-pad the last axis to ``length`` samples."""
    n = x.shape[-1]
    if n > length:
        start = (n - length) // 2 if crop == "center" else 0
        return x[..., start : start + length]
    if n < length:
        pad = [(0, 0)] * (x.ndim - 1) + [(0, length - n)]
        return np.pad(x, pad)
    return x


def apply(cfg: PipelineConfig, signal: np.ndarray, fs: float) -> np.ndarray:
    """Preprocess one (12, n) mV signal into the model's (12, cfg.length) float32 input.

    Raises ValueError for a record shorter than ``MIN_DURATION_S``.
    """
    from scipy import signal as sps  # here: config readers need no scipy

    if signal.shape[-1] < MIN_DURATION_S * fs:
        raise ValueError(f"{signal.shape[-1] / fs:.2f} s long, need at least {MIN_DURATION_S} s")
    x = resample(np.asarray(signal, np.float64), fs, cfg.fs)
    sos = _bandpass(cfg.fs, cfg.highpass_hz, cfg.lowpass_hz)
    if sos is not None:
        x = sps.sosfiltfilt(sos, x, axis=-1)
    if cfg.notch_hz:
        b, a = sps.iirnotch(cfg.notch_hz, Q=30.0, fs=cfg.fs)
        x = sps.filtfilt(b, a, x, axis=-1)
    x = fit_length(x, cfg.length, cfg.crop)
    if cfg.normalise == "zscore":
        std = x.std(axis=-1, keepdims=True)
        x = (x - x.mean(axis=-1, keepdims=True)) / np.where(std > 1e-6, std, 1.0)
    return np.ascontiguousarray(x, np.float32)
