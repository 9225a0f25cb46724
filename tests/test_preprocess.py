import numpy as np
import pytest

from common.config import ConfigError, from_dict
from common.preprocess import PipelineConfig, apply, fit_length, resample


def test_fingerprint_is_stable_and_changes_with_any_setting():
    assert PipelineConfig().fingerprint == PipelineConfig().fingerprint
    assert PipelineConfig(fs=500).fingerprint != PipelineConfig().fingerprint
    assert PipelineConfig(lowpass_hz=None).fingerprint != PipelineConfig().fingerprint


def test_output_has_model_shape_for_any_input_rate_and_length():
    cfg = PipelineConfig(fs=100, length_s=10)
    for fs, seconds in [(500, 10), (1000, 9.5), (100, 12), (257, 10)]:
        x = np.random.default_rng(0).normal(size=(12, int(fs * seconds))).astype(np.float32)
        out = apply(cfg, x, fs)
        assert out.shape == (12, 1000) and out.dtype == np.float32


def test_resampling_keeps_a_sinusoid():
    t = np.arange(5000) / 500
    x = np.sin(2 * np.pi * 5 * t)[None]
    y = resample(x, 500, 100)
    t100 = np.arange(1000) / 100
    assert np.abs(y[0, 50:-50] - np.sin(2 * np.pi * 5 * t100[50:-50])).max() < 1e-2


def test_bandpass_removes_baseline_wander_and_mains():
    t = np.arange(5000) / 500
    ecg_band = np.sin(2 * np.pi * 10 * t)
    x = np.tile(ecg_band + 2 * np.sin(2 * np.pi * 0.1 * t) + np.sin(2 * np.pi * 50 * t), (12, 1))
    out = apply(PipelineConfig(fs=100, normalise="none"), x, 500)
    core = out[0, 100:-100]
    target = np.sin(2 * np.pi * 10 * np.arange(1000) / 100)[100:-100]
    assert np.corrcoef(core, target)[0, 1] > 0.99


def test_zscore_per_lead_and_flat_lead_stays_finite():
    x = np.random.default_rng(1).normal(3, 5, size=(12, 1000))
    x[4] = 0.0
    out = apply(PipelineConfig(fs=100, highpass_hz=None, lowpass_hz=None), x, 100)
    assert np.allclose(out[0].std(), 1, atol=1e-3) and np.allclose(out[0].mean(), 0, atol=1e-3)
    assert np.isfinite(out).all() and np.all(out[4] == 0)


def test_crop_center_and_pad():
    x = np.arange(10.0)[None]
    assert fit_length(x, 4).tolist() == [[3, 4, 5, 6]]
    assert fit_length(x, 4, "start").tolist() == [[0, 1, 2, 3]]
    assert fit_length(x, 12)[0, -2:].tolist() == [0, 0]


def test_too_short_record_is_refused_with_reason():
    with pytest.raises(ValueError, match="1.00 s long"):
        apply(PipelineConfig(), np.zeros((12, 500)), 500)


def test_invalid_pipeline_config_names_the_key():
    with pytest.raises(ConfigError, match="lowpass_hz=80"):
        from_dict(PipelineConfig, {"fs": 100, "lowpass_hz": 80}, "pipe.yaml")
    with pytest.raises(ConfigError, match=r"pipe.yaml: unknown key\(s\) \['rate'\]"):
        from_dict(PipelineConfig, {"rate": 100}, "pipe.yaml")
