"""PTB-XL reader, specified against PhysioNet's own files (../shared/data/ptbxl-sample)."""

import ast
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb

from common import sources
from common.cache import SiteCache
from common.config import ConfigError
from common.preprocess import PipelineConfig
from common.record import LEADS, RecordError

# File lead order is I, II, III, AVR, AVL, AVF, V1..V6: the same positions as LEADS.
FILE_LEADS = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` -> sha256 of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_all(root: Path, **options):
    """(records by id, problems by id) for a folder, through the public interface."""
    scan = sources.scan(root, **options)
    records, problems = {}, {e.record_id: e for e in scan.problems}
    for ref in scan.refs:
        try:
            records[ref.record_id] = sources.read_record(ref)
        except RecordError as err:
            problems[err.record_id] = err
    return records, problems


@pytest.fixture
def site(ptbxl_sample: Path, tmp_path: Path) -> Path:
    """A writable copy of the real sample that a test may corrupt."""
    dst = tmp_path / "ptbxl"
    shutil.copytree(ptbxl_sample, dst)
    for path in [dst, *dst.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dst


@pytest.fixture(scope="module")
def database(ptbxl_sample: Path) -> pd.DataFrame:
    return pd.read_csv(ptbxl_sample / "ptbxl_database.csv", index_col="ecg_id")


# --- real files ------------------------------------------------------------------------------


def test_folder_with_ptbxl_database_is_detected_as_ptbxl(ptbxl_sample):
    assert sources.detect_format(ptbxl_sample) == "ptbxl"


@pytest.mark.parametrize(("rate", "n_samples", "suffix"), [(100, 1000, "lr"), (500, 5000, "hr")])
def test_both_rates_read_as_12_by_n_float32_millivolts(ptbxl_sample, rate, n_samples, suffix):
    records, problems = read_all(ptbxl_sample, rate=rate)
    assert not problems
    assert len(records) == 20
    for rec in records.values():
        assert rec.signal.shape == (12, n_samples)
        assert rec.signal.dtype == np.float32
        assert rec.fs == rate
        assert rec.duration_s == pytest.approx(10.0)
        assert rec.path.name.endswith(f"_{suffix}")
        assert rec.info.coding == "scp" and rec.source == "ptbxl"


def test_default_rate_is_500_hz(ptbxl_sample):
    ref = sources.scan(ptbxl_sample).refs[0]
    assert str(ref.path).endswith("records500/00000/00001_hr")


def test_rate_other_than_100_or_500_is_a_config_error(ptbxl_sample):
    with pytest.raises(ConfigError, match="rate=250"):
        sources.scan(ptbxl_sample, rate=250)


@pytest.mark.parametrize(
    ("rate", "stem"), [(100, "records100/00000/00002_lr"), (500, "records500/00000/00002_hr")]
)
def test_samples_equal_wfdb_physical_signal_with_leads_in_canonical_order(ptbxl_sample, rate, stem):
    expected = wfdb.rdrecord(str(ptbxl_sample / stem))
    assert expected.sig_name == FILE_LEADS
    ref = next(r for r in sources.scan(ptbxl_sample, rate=rate).refs if r.record_id == "2")
    rec = sources.read_record(ref)
    for lead in LEADS:
        column = expected.p_signal[:, FILE_LEADS.index(lead.upper())]
        row = rec.signal[LEADS.index(lead)]
        np.testing.assert_allclose(row, column.astype(np.float32), rtol=0, atol=1e-6)
    # a few spot values, so the comparison above cannot pass by comparing a thing with itself
    for i in (0, 17, len(expected.p_signal) - 1):
        assert rec.signal[LEADS.index("aVR"), i] == pytest.approx(expected.p_signal[i, 3], abs=1e-6)
        assert rec.signal[LEADS.index("V6"), i] == pytest.approx(expected.p_signal[i, 11], abs=1e-6)


def test_lead_names_avr_avl_avf_map_to_canonical_spelling(ptbxl_sample):
    """The files spell AVR/AVL/AVF; the record's rows follow LEADS, whose spelling is aVR etc."""
    ref = sources.scan(ptbxl_sample).refs[0]
    rec = sources.read_record(ref)
    raw = wfdb.rdrecord(str(ref.path))
    by_name = dict(zip(raw.sig_name, raw.p_signal.T, strict=True))
    for canonical, spelled in (("aVR", "AVR"), ("aVL", "AVL"), ("aVF", "AVF")):
        np.testing.assert_allclose(rec.signal[LEADS.index(canonical)], by_name[spelled], atol=1e-6)


def test_metadata_comes_from_the_database_row(ptbxl_sample, database):
    records, _ = read_all(ptbxl_sample, rate=100)
    rec = records["1"]
    assert rec.info.patient_id == "15709"  # the CSV says 15709.0
    assert rec.info.site == "0"  # the CSV says 0.0
    assert rec.info.device == "CS-12   E"
    assert rec.info.strat_fold == 3 and isinstance(rec.info.strat_fold, int)
    assert rec.info.extra["age"] == 56.0 and rec.info.extra["sex"] == "F"
    for ecg_id, rec in records.items():
        row = database.loc[int(ecg_id)]
        assert rec.info.patient_id == str(int(row.patient_id))
        assert rec.info.site == str(int(row.site))
        assert rec.info.strat_fold == int(row.strat_fold)
        assert rec.info.extra["sex"] == ("F" if row.sex == 1 else "M")


def test_every_scp_code_is_kept_including_likelihood_zero(ptbxl_sample, database):
    records, _ = read_all(ptbxl_sample, rate=100)
    assert records["1"].info.codes == ("NORM", "LVOLT", "SR")
    assert records["2"].info.codes == ("NORM", "SBRAD")  # SBRAD has likelihood 0
    assert records["17"].info.codes == ("AFLT", "ABQRS", "AFIB")
    for ecg_id, rec in records.items():
        assert rec.info.codes == tuple(ast.literal_eval(database.loc[int(ecg_id)].scp_codes))


def test_sites_of_the_sample_are_the_four_recording_sites(ptbxl_sample):
    records, _ = read_all(ptbxl_sample, rate=100)
    assert {r.info.site for r in records.values()} == {"0", "1", "2", "3"}


def test_reading_and_checking_leave_the_source_files_byte_identical(ptbxl_sample, tmp_path):
    before = tree_digest(ptbxl_sample)
    read_all(ptbxl_sample, rate=100)
    read_all(ptbxl_sample, rate=500)
    SiteCache.prepare(ptbxl_sample, tmp_path / "cache", PipelineConfig(), progress=False)
    assert tree_digest(ptbxl_sample) == before
    assert not any(p.name.startswith(".") or "cache" in p.name for p in ptbxl_sample.rglob("*"))


# --- bad records: each is skipped with its reason, the rest of the folder goes on ---------------


def _hea(site: Path, ecg_id: int = 1) -> Path:
    return site / f"records500/00000/{ecg_id:05d}_hr.hea"


def _dat(site: Path, ecg_id: int = 1) -> Path:
    return site / f"records500/00000/{ecg_id:05d}_hr.dat"


def _edit_header(site: Path, edit, ecg_id: int = 1) -> None:
    path = _hea(site, ecg_id)
    path.write_text(edit(path.read_text()))


def _only_record_1_fails(site: Path) -> RecordError:
    records, problems = read_all(site)
    assert list(problems) == ["1"]
    assert len(records) == 19
    return problems["1"]


def test_truncated_dat_is_skipped_with_byte_counts(site):
    _dat(site).write_bytes(_dat(site).read_bytes()[:1000])
    err = _only_record_1_fails(site)
    assert err.reason == "1000 bytes, header promises 120000 (truncated?)"
    assert err.path.endswith("00001_hr.dat")
    assert "record 1 skipped" in str(err)


def test_empty_dat_is_skipped(site):
    _dat(site).write_bytes(b"")
    assert "0 bytes, header promises 120000" in _only_record_1_fails(site).reason


def test_header_promising_more_samples_than_the_dat_holds_is_skipped(site):
    _edit_header(site, lambda t: t.replace("12 500 5000", "12 500 6000", 1))
    assert "120000 bytes, header promises 144000" in _only_record_1_fails(site).reason


def test_header_promising_fewer_samples_than_the_dat_holds_is_skipped(site):
    """wfdb would silently read the first 4000 samples; the mismatch means a broken record."""
    _edit_header(site, lambda t: t.replace("12 500 5000", "12 500 4000", 1))
    reason = _only_record_1_fails(site).reason
    assert "120000 bytes, header promises 96000" in reason and "disagree" in reason


def test_dat_holding_more_channels_than_the_header_is_skipped(site):
    data = np.fromfile(_dat(site), "<i2").reshape(5000, 12)
    np.hstack([data, data[:, :1]]).astype("<i2").tofile(_dat(site))
    assert "130000 bytes, header promises 120000" in _only_record_1_fails(site).reason


def _drop_v6(text: str) -> str:
    lines = text.replace("00001_hr 12 ", "00001_hr 11 ", 1).splitlines()
    return "\n".join(line for line in lines if not line.endswith(" V6")) + "\n"


def test_header_with_eleven_leads_is_skipped_naming_the_missing_lead(site):
    _edit_header(site, _drop_v6)
    assert _only_record_1_fails(site).reason == "11 leads, missing ['V6']"


def test_unknown_lead_name_is_skipped(site):
    _edit_header(site, lambda t: t.replace(" V6\n", " V7\n"))
    assert _only_record_1_fails(site).reason == "unknown lead name(s) ['V7']"


def test_duplicate_lead_name_is_skipped(site):
    _edit_header(site, lambda t: t.replace(" V6\n", " V5\n"))
    assert _only_record_1_fails(site).reason.startswith("duplicate leads in")


def test_malformed_record_line_is_skipped(site):
    _edit_header(site, lambda t: "this is not a header\n" + t.split("\n", 1)[1])
    assert _only_record_1_fails(site).reason.startswith("unreadable header")


def test_zero_sampling_frequency_is_skipped(site):
    _edit_header(site, lambda t: t.replace("12 500 5000", "12 0 5000", 1))
    assert "sampling frequency" in _only_record_1_fails(site).reason


def test_missing_header_and_missing_dat_are_skipped_with_their_own_reasons(site):
    _hea(site, 1).unlink()
    _dat(site, 2).unlink()
    records, problems = read_all(site)
    assert len(records) == 18
    assert problems["1"].reason == "header file missing"
    assert problems["2"].reason == "signal file missing"
    assert problems["2"].path.endswith("00002_hr.dat")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file anyway")
def test_unreadable_header_is_skipped(site):
    _hea(site).chmod(0)
    try:
        assert _only_record_1_fails(site).reason.startswith("unreadable header")
    finally:
        _hea(site).chmod(0o644)


def test_row_with_unparsable_scp_codes_is_rejected_at_scan(site):
    db = pd.read_csv(site / "ptbxl_database.csv", dtype=str)
    db.loc[db.ecg_id == "2", "scp_codes"] = "{'NORM': 100.0"
    db.to_csv(site / "ptbxl_database.csv", index=False)
    scan = sources.scan(site)
    assert [e.record_id for e in scan.problems] == ["2"]
    assert "bad scp_codes" in scan.problems[0].reason
    assert len(scan.refs) == 19


def test_junk_in_an_optional_column_keeps_the_record_without_that_field(site, database):
    db = pd.read_csv(site / "ptbxl_database.csv", dtype=str)
    db.loc[db.ecg_id == "1", "age"] = "about sixty"
    db.loc[db.ecg_id == "2", "age"] = ""
    db.to_csv(site / "ptbxl_database.csv", index=False)
    scan = sources.scan(site)
    assert not scan.problems and len(scan.refs) == 20
    ages = {ref.record_id: ref.info.extra["age"] for ref in scan.refs}
    assert ages["1"] is None and ages["2"] is None
    for record_id, age in ages.items():
        if record_id not in ("1", "2"):
            expected = database.loc[int(record_id), "age"]
            assert age == (None if pd.isna(expected) else pytest.approx(expected))


def test_unknown_scp_code_is_kept_not_an_error(site):
    db = pd.read_csv(site / "ptbxl_database.csv", dtype=str)
    db.loc[db.ecg_id == "1", "scp_codes"] = "{'NORM': 100.0, 'XYZ42': 50.0}"
    db.to_csv(site / "ptbxl_database.csv", index=False)
    records, problems = read_all(site)
    assert not problems
    assert records["1"].info.codes == ("NORM", "XYZ42")


@pytest.mark.parametrize("column", ["scp_codes", "strat_fold", "filename_hr", "patient_id"])
def test_database_without_a_required_column_is_a_config_error_naming_file_and_column(site, column):
    db = pd.read_csv(site / "ptbxl_database.csv", dtype=str)
    db.drop(columns=[column]).to_csv(site / "ptbxl_database.csv", index=False)
    with pytest.raises(
        ConfigError, match=rf"ptbxl_database\.csv: missing column\(s\) \['{column}'\]"
    ):
        sources.scan(site)


def test_prepare_caches_the_good_records_and_lists_the_bad_one(site, tmp_path):
    _dat(site, 195).write_bytes(_dat(site, 195).read_bytes()[:777])
    cache = SiteCache.prepare(site, tmp_path / "cache", PipelineConfig(), progress=False)
    assert len(cache) == 19 and cache.signals.shape[0] == 19
    assert "195" not in set(cache.index.record_id)
    assert cache.manifest["records_found"] == 20 and cache.manifest["records_skipped"] == 1
    [problem] = cache.problems
    assert problem["record_id"] == "195"
    assert problem["reason"] == "777 bytes, header promises 120000 (truncated?)"


# --- found by tests/test_fuzz_readers.py ----------------------------------------------------


def test_repeated_record_line_is_skipped(site):
    _edit_header(site, lambda t: t.split("\n", 1)[0] + "\n" + t)
    assert "signal lines follow" in _only_record_1_fails(site).reason


def test_huge_signal_count_on_the_record_line_is_skipped_at_once(site):
    """wfdb would loop over 33 million declared channels (seconds; minutes for larger counts)."""
    _edit_header(site, lambda t: t.replace("00001_hr 12 ", "00001_hr 33180963 ", 1))
    reason = _only_record_1_fails(site).reason
    assert reason == "record line declares 33180963 signals, 12 signal lines follow"


def test_huge_sample_count_is_rejected_before_wfdb_allocates_it(site):
    _edit_header(
        site, lambda t: t.replace("12 500 5000", "12 500 99999999", 1).replace(" 16 ", " 80 ")
    )
    assert "120000 bytes, header promises 1199999988" in _only_record_1_fails(site).reason
