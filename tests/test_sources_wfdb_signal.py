"""Format-16 WFDB decoding without ``wfdb.rdrecord``: bit for bit what ``rdrecord`` reads, on
PhysioNet's own files (../shared/data) and on records written by our writer and by wfdb's."""

import random
from pathlib import Path

import numpy as np
import pytest
import wfdb

from common.record import RecordError
from common.sources.wfdb_signal import read_header, read_samples, read_signal
from simulations.synth.writers import WFDB_LEADS, write_wfdb16


def assert_decodes_as_rdrecord(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``read_samples`` equals ``wfdb.rdrecord(physical=True).p_signal`` exactly (dtype, shape,
    every value, NaN where wfdb has NaN), with ``rdrecord`` unavailable while it decodes."""
    expected = wfdb.rdrecord(str(base), physical=True).p_signal
    header = read_header(base.name, base)
    with monkeypatch.context() as m:
        m.setattr(wfdb, "rdrecord", lambda *a, **k: pytest.fail("format 16 went to rdrecord"))
        samples = read_samples(base.name, base, header)
    assert samples.dtype == expected.dtype and samples.shape == expected.shape, base
    assert np.array_equal(samples, expected, equal_nan=True), base


def bases(folder: Path) -> list[Path]:
    """Every record under ``folder``, as a path without extension."""
    return [hea.with_suffix("") for hea in sorted(folder.rglob("*.hea"))]


def test_every_real_ptbxl_record_decodes_as_rdrecord(ptbxl_sample, monkeypatch):
    records = bases(ptbxl_sample)
    assert len(records) == 40  # 20 records at 100 Hz and at 500 Hz
    for base in records:
        assert_decodes_as_rdrecord(base, monkeypatch)


def test_every_real_cinc_record_decodes_as_rdrecord(cinc_sample, monkeypatch):
    """MATLAB v4 files: format 16 after a 24-byte byte offset, gains per lead, lower-case 'mv'."""
    records = bases(cinc_sample)
    assert len(records) == 6
    for base in records:
        assert_decodes_as_rdrecord(base, monkeypatch)


def test_records_of_our_writer_decode_as_rdrecord(tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    for fs, n in ((100, 1000), (500, 5000), (500, 1)):
        signal = rng.normal(0, 3, (12, n))
        signal[:, 0] = [40.0, -40.0, -0.0015, 0.0015, -32.0, 32.0, -1e-4, 0, 1, -1, 2, -2]
        write_wfdb16(tmp_path / f"r{fs}_{n}", signal, fs)
        assert_decodes_as_rdrecord(tmp_path / f"r{fs}_{n}", monkeypatch)


def test_records_of_wfdb_wrsamp_decode_as_rdrecord(tmp_path, monkeypatch):
    """Non-zero baselines, odd gains, the int16 extremes, -32768 (WFDB's NaN), leads in another
    order than LEADS, and more samples than leads so a transposition cannot pass."""
    rng = np.random.default_rng(11)
    names = random.Random(3).sample(WFDB_LEADS, 12)
    digital = rng.integers(-32767, 32768, (1234, 12), dtype=np.int64)
    digital[:4, 0] = [-32767, 32767, -32768, 0]
    gains = [1000.0, 200.0, 2500.0, 0.37, 4.88, 1.0, 65.536, 1e5, 3.3, 1000.0, 12.5, 999.9]
    baselines = [0, -1024, 37, 32767, -32768, 5, -1, 1, 1000, -3000, 12345, -54321]
    wfdb.wrsamp(
        "given", fs=500, units=["mV"] * 6 + ["uV"] * 6, sig_name=names, d_signal=digital,
        fmt=["16"] * 12, adc_gain=gains, baseline=baselines, write_dir=str(tmp_path),
    )  # fmt: skip
    assert np.isnan(wfdb.rdrecord(str(tmp_path / "given")).p_signal[2, 0])
    assert_decodes_as_rdrecord(tmp_path / "given", monkeypatch)

    # wfdb choosing gains and baselines itself, with a gap (NaN) in one lead
    physical = rng.normal(0, 1, (777, 12)) * np.linspace(0.1, 20, 12) + np.linspace(-5, 5, 12)
    physical[10:20, 4] = np.nan
    wfdb.wrsamp(
        "chosen", fs=250, units=["mV"] * 12, sig_name=names, p_signal=physical,
        fmt=["16"] * 12, write_dir=str(tmp_path),
    )  # fmt: skip
    assert any(wfdb.rdheader(str(tmp_path / "chosen")).baseline)
    assert_decodes_as_rdrecord(tmp_path / "chosen", monkeypatch)


def test_a_format16_record_is_read_with_one_header_parse(tmp_path, monkeypatch):
    """wfdb parses the header once (pandas lookups: most of the decoding time) and never opens
    the signal file by name after it was checked."""
    write_wfdb16(tmp_path / "once", np.ones((12, 1000)), 100)
    parses = []
    parse = wfdb.rdheader
    monkeypatch.setattr(wfdb, "rdheader", lambda *a, **k: parses.append(a) or parse(*a, **k))
    monkeypatch.setattr(wfdb, "rdrecord", lambda *a, **k: pytest.fail("rdrecord called"))
    signal, fs, _ = read_signal("once", tmp_path / "once")
    assert len(parses) == 1 and signal.shape == (12, 1000) and fs == 100.0


def test_other_formats_are_still_read_by_wfdb(tmp_path, monkeypatch):
    """Format 212 (MIT-BIH's) is not decoded here: wfdb.rdrecord reads it."""
    reads = []
    read = wfdb.rdrecord
    monkeypatch.setattr(wfdb, "rdrecord", lambda *a, **k: reads.append(a) or read(*a, **k))
    digital = np.random.default_rng(5).integers(-2047, 2048, (300, 12), dtype=np.int64)
    wfdb.wrsamp(
        "r212", fs=500, units=["mV"] * 12, sig_name=WFDB_LEADS, d_signal=digital,
        fmt=["212"] * 12, adc_gain=[200.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path),
    )  # fmt: skip
    header = read_header("r212", tmp_path / "r212")
    samples = read_samples("r212", tmp_path / "r212", header)
    assert len(reads) == 1 and np.array_equal(samples, digital / 200.0)


def test_a_baseline_past_64_bits_is_a_record_error(tmp_path):
    write_wfdb16(tmp_path / "big", np.zeros((12, 100)), 500)
    hea = tmp_path / "big.hea"
    hea.write_text(hea.read_text().replace("(0)", f"({2**64})", 1))
    with pytest.raises(RecordError, match="unreadable signal"):
        read_signal("big", tmp_path / "big")
