"""``ecgfl-hospital check``: what a folder holds and what is wrong with it, changing nothing."""

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_sources_ptbxl import tree_digest
from test_sources_tis import lead_signals, record_text, write_site

from client import cli
from common.labels import LabelSpace
from common.sitecheck import check_site


@pytest.fixture
def site(ptbxl_sample: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "ptbxl"
    shutil.copytree(ptbxl_sample, dst)
    for path in [dst, *dst.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dst


@pytest.fixture(scope="module")
def csv_codes(ptbxl_sample: Path) -> list[list[str]]:
    db = pd.read_csv(ptbxl_sample / "ptbxl_database.csv")
    return [list(ast.literal_eval(s)) for s in db.scp_codes]


def test_real_ptbxl_sample_is_twenty_readable_records(ptbxl_sample, csv_codes):
    report = check_site(ptbxl_sample)
    assert report.format == "ptbxl" and report.space == "seed6"
    assert (report.found, report.readable, report.skipped) == (20, 20, [])
    assert report.sampling_rates == {"500": 20}
    assert report.durations_s == {"min": 10.0, "median": 10.0, "max": 10.0}
    assert report.positives == {
        label: sum(label in codes for codes in csv_codes) for label in report.labels
    }
    assert report.positives["NORM"] == 11 and report.positives["AFIB"] == 1
    assert report.annotated == dict.fromkeys(report.labels, 20)
    assert report.flat_leads == {}


def test_codes_outside_the_space_are_listed_as_unmapped_with_counts(ptbxl_sample, csv_codes):
    report = check_site(ptbxl_sample, rate=100)
    assert report.sampling_rates == {"100": 20}
    known = LabelSpace.load("seed6").known_codes("scp")
    outside = [c for codes in csv_codes for c in codes if c not in known]
    assert report.unmapped_codes == {c: outside.count(c) for c in set(outside)}
    assert report.unmapped_codes["SR"] == 15 and "NORM" not in report.unmapped_codes


def test_superclass_counts_on_the_real_sample(ptbxl_sample):
    report = check_site(ptbxl_sample, space=LabelSpace.load("superclasses"))
    assert report.positives == {"NORM": 11, "MI": 2, "STTC": 2, "CD": 4, "HYP": 1}


def test_corrupted_record_is_skipped_with_id_and_reason_and_the_rest_counted(site):
    dat = site / "records500/00000/00256_hr.dat"
    dat.write_bytes(dat.read_bytes()[:5000])
    report = check_site(site)
    assert (report.found, report.readable) == (20, 19)
    [skipped] = report.skipped
    assert skipped["record_id"] == "256"
    assert skipped["path"].endswith("00256_hr.dat")
    assert skipped["reason"] == "5000 bytes, header promises 120000 (truncated?)"
    assert report.positives["CLBBB"] == 0  # 256 was the only CLBBB
    assert "skipped 256:" in report.to_text()


def test_check_leaves_the_folder_byte_identical(site):
    (site / "records500/00000/00001_hr.dat").write_bytes(b"\0" * 10)
    before = tree_digest(site)
    names = sorted(p.name for p in site.rglob("*"))
    check_site(site)
    check_site(site, rate=100)
    assert tree_digest(site) == before
    assert sorted(p.name for p in site.rglob("*")) == names


def _tis_site(root: Path) -> Path:
    flat = lead_signals(seed=2)
    flat[8] = 0  # V3
    return write_site(
        root,
        {
            "r1": record_text(lead_signals(seed=1), diagnosis="3.2.1.4"),
            "r2": record_text(flat, diagnosis="1.1;9.9"),
            "r3": record_text(lead_signals(seed=3), diagnosis="2.4;3.1.1;7"),
            "r4": record_text(lead_signals(seed=4)) + "1,2,3\n",
        },
    )


def test_tis_site_report_counts_flat_leads_unmapped_codes_and_skips(tmp_path):
    report = check_site(_tis_site(tmp_path))
    assert report.format == "tis"
    assert (report.found, report.readable) == (4, 3)
    assert [s["record_id"] for s in report.skipped] == ["r4"]
    assert report.skipped[0]["reason"].startswith("sample row 1001, lead aVR: missing")
    assert report.flat_leads == {"V3": ["r2"]}
    ones = {"CRBBB": 1, "NORM": 1, "AFIB": 1, "1AVB": 1}
    assert report.positives == {**dict.fromkeys(report.labels, 0), **ones}
    assert report.unmapped_codes == {"9.9": 1, "7": 1}  # 3.2.1.4 is CRBBB: mapped
    text = report.to_text()
    assert "flat lead V3: 1 record(s): r2" in text and "9.9 x1" in text


def test_tis_descendant_codes_count_as_mapped(tmp_path):
    write_site(tmp_path, {"r1": record_text(diagnosis="3.2.1.4;3.1.1.2;2.4")})
    report = check_site(tmp_path)
    assert report.positives["CRBBB"] == report.positives["1AVB"] == report.positives["AFIB"] == 1
    assert report.unmapped_codes == {}
    report = check_site(tmp_path, space=LabelSpace.load("superclasses"))
    assert report.unmapped_codes == {"2.4": 1}  # rhythm: outside the superclasses


def test_flat_lead_threshold_is_one_microvolt(tmp_path):
    signal = lead_signals(seed=5)
    signal[0] = np.tile([0, 1], 500)  # std 0.5 µV: flat
    signal[1] = np.tile([0, 3], 500)  # std 1.5 µV: a (tiny) signal
    write_site(tmp_path, {"r1": record_text(signal)})
    assert check_site(tmp_path).flat_leads == {"I": ["r1"]}


def test_cli_json_output_parses_and_matches_the_report(ptbxl_sample, capsys):
    assert cli.main(["check", str(ptbxl_sample), "--json", "--rate", "100"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["found"] == 20 and out["readable"] == 20 and out["skipped"] == []
    assert out["format"] == "ptbxl" and out["labels"] == list(LabelSpace.load("seed6").labels)
    assert out["sampling_rates"] == {"100": 20}
    assert out == json.loads(json.dumps(check_site(ptbxl_sample, rate=100).to_json()))


def test_cli_json_on_a_tis_site_with_a_user_label_space(tmp_path, capsys):
    _tis_site(tmp_path / "site")
    space = tmp_path / "space.yaml"
    space.write_text("name: rbbb\nlabels: [RBBB]\ncodebooks: {tis: {RBBB: ['3.2']}}\n")
    space.write_text(space.read_text() + "hierarchical: [tis]\n")
    args = ["check", str(tmp_path / "site"), "--json", "--labels", str(space)]
    assert cli.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["space"] == "rbbb" and out["positives"] == {"RBBB": 1}
    assert out["flat_leads"] == {"V3": ["r2"]}
    assert [s["record_id"] for s in out["skipped"]] == ["r4"]


def test_cli_text_output_names_counts(ptbxl_sample, capsys):
    assert cli.main(["check", str(ptbxl_sample)]) == 0
    out = capsys.readouterr().out
    assert "records: 20 found, 20 readable, 0 skipped" in out
    assert "500 Hz x20" in out


def test_cli_on_an_empty_folder_fails_with_a_clear_message(tmp_path, capsys):
    assert cli.main(["check", str(tmp_path)]) == 2
    assert "no ECG data format recognised" in capsys.readouterr().err
