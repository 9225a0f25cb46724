"""PhysioNet/CinC 2020-2021 reader, specified against the real sample (../shared/data)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import wfdb
from test_sources_ptbxl import read_all, tree_digest

from common import sources
from common.cache import SiteCache
from common.labels import LabelSpace
from common.preprocess import PipelineConfig
from common.record import LEADS

IDS = ["E07500", "E07501", "HR06000", "HR06001", "JS20000", "JS20001"]


@pytest.fixture
def site(cinc_sample: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "cinc"
    shutil.copytree(cinc_sample, dst)
    for path in [dst, *dst.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dst


def test_folder_of_hea_and_mat_files_is_detected_as_cinc(cinc_sample):
    assert sources.detect_format(cinc_sample) == "cinc"


def test_all_six_records_read_as_12_by_5000_at_500_hz(cinc_sample):
    records, problems = read_all(cinc_sample)
    assert not problems
    assert sorted(records) == IDS
    for rec in records.values():
        assert rec.signal.shape == (12, 5000) and rec.signal.dtype == np.float32
        assert rec.fs == 500.0 and rec.info.coding == "snomed" and rec.source == "cinc"


@pytest.mark.parametrize("record_id", ["E07500", "HR06000", "JS20001"])
def test_samples_equal_wfdb_physical_signal(cinc_sample, record_id):
    records, _ = read_all(cinc_sample)
    expected = wfdb.rdrecord(str(cinc_sample / record_id))
    order = [[n.upper() for n in expected.sig_name].index(lead.upper()) for lead in LEADS]
    np.testing.assert_allclose(
        records[record_id].signal, expected.p_signal[:, order].T.astype(np.float32), atol=1e-6
    )
    assert records[record_id].signal[LEADS.index("V3"), 100] == pytest.approx(
        expected.p_signal[100, order[LEADS.index("V3")]], abs=1e-6
    )


def test_site_is_the_record_name_prefix(cinc_sample):
    records, _ = read_all(cinc_sample)
    assert {rid: rec.info.site for rid, rec in records.items()} == {
        "E07500": "E",
        "E07501": "E",
        "HR06000": "HR",
        "HR06001": "HR",
        "JS20000": "JS",
        "JS20001": "JS",
    }


def test_age_sex_and_dx_come_from_header_comments(cinc_sample):
    records, _ = read_all(cinc_sample)
    e = records["E07500"]
    assert e.info.extra == {"age": 78.0, "sex": "M"}
    assert e.info.codes == ("67741000119109", "426177001")
    assert e.info.patient_id == "E07500"  # no patient ids in CinC: each record is its own patient
    assert records["HR06000"].info.extra["sex"] == "F"


def test_snomed_sinus_bradycardia_is_sbrad_and_norm_is_masked(cinc_sample):
    records, _ = read_all(cinc_sample)
    space = LabelSpace.load("seed6")
    y, mask = space.encode(records["E07500"].info.codes, "snomed")
    assert y[space.index("SBRAD")] == 1.0
    assert mask[space.index("NORM")] == 0.0  # SNOMED cannot say "normal ECG": unknown, not absent
    assert mask.sum() == len(space) - 1
    assert y.sum() == 1.0  # 67741000119109 is outside the space: ignored


def test_snomed_sinus_tachycardia_is_stach(cinc_sample):
    records, _ = read_all(cinc_sample)
    space = LabelSpace.load("seed6")
    y, _ = space.encode(records["E07501"].info.codes, "snomed")
    assert [lab for lab, v in zip(space.labels, y, strict=True) if v] == ["STACH"]


def test_truncated_mat_is_skipped_and_the_rest_read(site):
    mat = site / "E07501.mat"
    mat.write_bytes(mat.read_bytes()[:5000])
    records, problems = read_all(site)
    assert sorted(records) == [i for i in IDS if i != "E07501"]
    assert problems["E07501"].reason == "5000 bytes, header promises 120024 (truncated?)"
    assert problems["E07501"].path.endswith("E07501.mat")


def test_mat_with_trailing_bytes_is_skipped(site):
    mat = site / "HR06000.mat"
    mat.write_bytes(mat.read_bytes() + bytes(24))
    _, problems = read_all(site)
    assert list(problems) == ["HR06000"]
    assert "120048 bytes, header promises 120024" in problems["HR06000"].reason


def test_header_without_dx_line_is_rejected_at_scan(site):
    hea = site / "JS20000.hea"
    hea.write_text(hea.read_text().replace("# Dx:", "# Diagnosis:"))
    scan = sources.scan(site)
    assert [(e.record_id, e.reason) for e in scan.problems] == [
        ("JS20000", "no '# Dx:' line in the header")
    ]
    assert len(scan.refs) == 5


def test_missing_mat_is_skipped(site):
    (site / "JS20001.mat").unlink()
    records, problems = read_all(site)
    assert problems["JS20001"].reason == "signal file missing"
    assert len(records) == 5


def test_unknown_and_odd_comment_values_are_kept_or_none(site):
    hea = site / "E07500.hea"
    text = hea.read_text().replace("# Age: 78", "# Age: NaN").replace("# Sex: Male", "# Sex: ?")
    hea.write_text(text.replace("426177001", "426177001,999999999"))
    records, problems = read_all(site)
    assert not problems
    rec = records["E07500"]
    assert rec.info.extra == {"age": None, "sex": None}
    assert rec.info.codes == ("67741000119109", "426177001", "999999999")


def test_institution_subfolders_are_scanned(site):
    for prefix in ("E", "HR", "JS"):
        (site / prefix).mkdir()
        for path in site.glob(f"{prefix}[0-9]*.*"):
            path.rename(site / prefix / path.name)
    records, problems = read_all(site)
    assert not problems and sorted(records) == IDS


def test_prepare_counts_the_bad_record_and_leaves_sources_unchanged(site, tmp_path):
    (site / "E07501.mat").write_bytes((site / "E07501.mat").read_bytes()[:100])
    before = tree_digest(site)
    cache = SiteCache.prepare(site, tmp_path / "cache", PipelineConfig(), progress=False)
    assert len(cache) == 5 and sorted(cache.index.record_id) == [i for i in IDS if i != "E07501"]
    assert [p["record_id"] for p in cache.problems] == ["E07501"]
    assert tree_digest(site) == before
