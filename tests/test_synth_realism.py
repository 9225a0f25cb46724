"""Independent measurements of synthetic ECGs with neurokit2: do they show what they claim?"""

import warnings

import numpy as np
import pytest

from simulations.synth import CLEAN, generate_record, random_subject

nk = pytest.importorskip("neurokit2")
FS = 500
LEAD_II, LEAD_V6 = 1, 11


def _record(i: int, labels: list[str], **kw) -> tuple[np.ndarray, dict]:
    person = np.random.default_rng(10_000 + i)
    subject = random_subject(person, person.uniform(20, 85), "MF"[i % 2])
    return generate_record(i, labels, fs=FS, subject=subject, **kw)


def _r_peaks(lead: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    clean = nk.ecg_clean(lead, sampling_rate=FS)
    _, found = nk.ecg_peaks(clean, sampling_rate=FS)
    return clean, np.asarray(found["ECG_R_Peaks"])


def _waves(lead: np.ndarray) -> tuple[np.ndarray, dict]:
    clean, peaks = _r_peaks(lead)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, waves = nk.ecg_delineate(clean, peaks, sampling_rate=FS, method="dwt")
    return peaks, {k: np.asarray(v, float) for k, v in waves.items()}


def _median_ms(samples: np.ndarray) -> float:
    """Median over beats; NaN where delineation found none (skipped by the callers' medians)."""
    samples = samples[np.isfinite(samples)]
    return float(np.median(samples)) * 1000 / FS if len(samples) else np.nan


def _pr_ms(lead: np.ndarray) -> float:
    """P onset to R peak: PR plus a fixed part of the QRS, robust where Q is absent."""
    peaks, w = _waves(lead)
    return _median_ms(peaks - w["ECG_P_Onsets"])


def _qrs_ms(lead: np.ndarray) -> float:
    _, w = _waves(lead)
    return _median_ms(w["ECG_R_Offsets"] - w["ECG_R_Onsets"])


def _rr_cv(lead: np.ndarray) -> float:
    rr = np.diff(_r_peaks(lead)[1])
    return float(rr.std() / rr.mean())


def test_detected_heart_rate_matches_intended_rate_on_sinus_records():
    kinds = [["NORM"], ["SBRAD"], ["STACH"], ["1AVB"], ["CRBBB"], ["CLBBB"], ["LVH"]]
    hits = []
    for i in range(56):
        signal, info = _record(i, kinds[i % len(kinds)])
        rr = np.diff(_r_peaks(signal[LEAD_II])[1]) / FS
        hits.append(abs(60 / rr.mean() - info["heart_rate"]) <= 5)
    assert np.mean(hits) >= 0.95


def test_atrial_fibrillation_is_irregular_and_sinus_rhythm_is_not():
    afib = [_rr_cv(_record(i, ["AFIB"], difficulty="easy")[0][LEAD_II]) for i in range(15)]
    sinus = [_rr_cv(_record(i, ["NORM"], difficulty="easy")[0][LEAD_II]) for i in range(15)]
    assert np.median(afib) > 3 * np.median(sinus)
    assert np.median(afib) > 0.1


def test_first_degree_block_has_longer_pr_than_normal():
    norm = np.nanmedian([_pr_ms(_record(i, ["NORM"])[0][LEAD_II]) for i in range(12)])
    avb = np.nanmedian([_pr_ms(_record(i, ["1AVB"])[0][LEAD_II]) for i in range(12)])
    assert avb > norm + 40


def test_bundle_branch_blocks_have_wider_qrs_than_normal():
    norm = np.nanmedian([_qrs_ms(_record(i, ["NORM"])[0][LEAD_V6]) for i in range(12)])
    for block in ("CRBBB", "CLBBB"):
        wide = np.nanmedian([_qrs_ms(_record(i, [block])[0][LEAD_V6]) for i in range(12)])
        assert wide > norm + 15, block


def test_limb_leads_obey_einthoven_and_goldberger_without_noise():
    for i, labels in enumerate([["NORM"], ["AFIB", "CLBBB"], ["1AVB", "CRBBB"]]):
        s, _ = _record(i, labels, acquisition=CLEAN)
        lead_i, lead_ii, lead_iii, avr, avl, avf = s[:6].astype(np.float64)
        assert np.abs(lead_i + lead_iii - lead_ii).max() < 1e-5
        assert np.abs(avr + avl + avf).max() < 1e-5


def test_precordial_leads_progress_from_rs_in_v1_to_qr_in_v6():
    s, info = _record(0, ["NORM"], acquisition=CLEAN)
    onset = info["qrs_onsets"][1]
    qrs = s[6:, onset : onset + int(0.12 * FS)]
    v1, v6 = qrs[0], qrs[5]
    assert -v1.min() > v1.max() and v6.max() > -v6.min()
