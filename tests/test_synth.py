"""The synthetic data generator: determinism, on-disk formats, labels as intended."""

import ast
import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb

from common.labels import LabelSpace
from common.record import LEADS
from simulations.synth import (
    PtbxlLikeSpec,
    TisNetworkSpec,
    generate_record,
    plan_ptbxl_like,
    write_ptbxl_like,
    write_tis_network,
)
from simulations.synth.annotation import TIS_CODES
from simulations.synth.pathology import is_consistent
from simulations.synth.writers import WFDB_LEADS, write_tis_record, write_wfdb16

TIS = TisNetworkSpec(n_records=24, n_hospitals=3, seed=7)
PTBXL = PtbxlLikeSpec(n_records=20, n_sites=2, seed=7)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tis_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tis")
    write_tis_network(TIS, out, progress=False)
    return out


@pytest.fixture(scope="module")
def ptbxl_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ptbxl")
    write_ptbxl_like(PTBXL, out, progress=False)
    return out


def test_same_seed_same_signal_and_different_seed_different_signal():
    a, info = generate_record(3, ["AFIB", "CRBBB"])
    b, _ = generate_record(3, ["AFIB", "CRBBB"])
    c, _ = generate_record(4, ["AFIB", "CRBBB"])
    assert a.dtype == np.float32 and a.shape == (12, 5000)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert info["labels"] == ("AFIB", "CRBBB") and info["pr_ms"] is None


def test_inconsistent_labels_are_refused():
    for labels in (["AFIB", "SBRAD"], ["NORM", "1AVB"], ["CRBBB", "CLBBB"], ["XYZ"]):
        with pytest.raises(ValueError):
            generate_record(0, labels)


def test_same_spec_writes_byte_identical_files_with_any_worker_count(tis_dir, tmp_path):
    write_tis_network(TIS, tmp_path / "again", workers=2, progress=False)
    assert _digest(tis_dir) == _digest(tmp_path / "again")


def test_ptbxl_like_is_byte_identical_for_a_seed(ptbxl_dir, tmp_path):
    write_ptbxl_like(PTBXL, tmp_path / "again", progress=False)
    assert _digest(ptbxl_dir) == _digest(tmp_path / "again")


def test_existing_dataset_is_kept_unless_forced(tis_dir, tmp_path):
    from common.config import ConfigError

    out = tmp_path / "tis"
    write_tis_network(TIS, out, progress=False)
    with pytest.raises(ConfigError, match="--force"):
        write_tis_network(TIS, out, progress=False)
    write_tis_network(TIS, out, force=True, progress=False)
    assert _digest(out) == _digest(tis_dir)


def test_tis_files_follow_the_documented_format(tis_dir):
    index = pd.read_csv(tis_dir / "index.csv", dtype=str, keep_default_na=False)
    assert {"record_id", "hospital", "patient_id", "file", "diagnosis"} <= set(index.columns)
    assert len(index) == TIS.n_records and index.record_id.is_unique
    assert index.hospital.nunique() == TIS.n_hospitals
    row = index.iloc[0]
    lines = (tis_dir / row.file).read_text().splitlines()
    split = next(i for i, line in enumerate(lines) if "," in line)
    header = dict(line.split(": ", 1) for line in lines[:split])
    assert header["units"] == "uV" and header["diagnosis"] == row.diagnosis
    assert lines[split].split(",") == list(LEADS)
    data = np.loadtxt(lines[split + 1 :], delimiter=",", dtype=np.int64)
    assert data.shape == (10 * int(header["sampling_rate"]), 12)


def test_tis_codes_decode_to_the_intended_labels(tis_dir):
    space = LabelSpace.load("seed6")
    index = pd.read_csv(tis_dir / "index.csv", dtype=str, keep_default_na=False)
    truth = {f"R{r.index + 1:06d}": r.truth for r in _tis_plan()}
    for row in index.itertuples():
        target, _ = space.encode(row.true_diagnosis.split(";"), "tis")
        want = [lab in truth[row.record_id] for lab in space.labels]
        assert target.astype(bool).tolist() == want, row


def _tis_plan():
    from simulations.synth.network import plan_tis

    return plan_tis(TIS)


def test_wfdb_files_are_byte_identical_to_wfdb_wrsamp(tmp_path):
    """Our format-16 writer must write what wfdb itself writes, at both rates and at the
    rounding and clipping edges."""
    rng = np.random.default_rng(0)
    for fs, n in ((100, 1000), (500, 5000)):
        signal = rng.normal(0, 3, (12, n))
        signal[0, :6] = [40.0, -40.0, 0.0005, -0.0005, 0.0015, -32.0]
        write_wfdb16(tmp_path / "ours" / f"r{fs}", signal, fs)
        wfdb.wrsamp(
            f"r{fs}",
            fs=fs,
            units=["mV"] * 12,
            sig_name=WFDB_LEADS,
            p_signal=np.clip(signal.T, -32.0, 32.0),
            fmt=["16"] * 12,
            adc_gain=[1000.0] * 12,
            baseline=[0] * 12,
            write_dir=str(tmp_path),
        )
        for ext in ("hea", "dat"):
            ours = (tmp_path / "ours" / f"r{fs}.{ext}").read_bytes()
            assert ours == (tmp_path / f"r{fs}.{ext}").read_bytes(), (fs, ext)


def test_tis_samples_are_written_as_numpy_savetxt_would(tmp_path):
    signal = np.random.default_rng(1).normal(0, 2, (12, 500))
    write_tis_record(tmp_path / "r.csv", signal, {"sampling_rate": 50})
    buf = io.StringIO()
    np.savetxt(buf, np.rint(signal.T * 1000).astype(np.int32), fmt="%d", delimiter=",")
    table = (tmp_path / "r.csv").read_text().split("units: uV\n", 1)[1].split("\n", 1)[1]
    assert table == buf.getvalue()


def test_ptbxl_like_database_and_wfdb_records(ptbxl_dir):
    db = pd.read_csv(ptbxl_dir / "ptbxl_database.csv")
    for col in (
        "ecg_id",
        "patient_id",
        "age",
        "sex",
        "site",
        "device",
        "recording_date",
        "scp_codes",
        "strat_fold",
        "validated_by_human",
        "filename_lr",
        "filename_hr",
    ):
        assert col in db.columns
    assert db.strat_fold.between(1, 10).all()
    assert (db.groupby("patient_id").strat_fold.nunique() == 1).all()
    statements = pd.read_csv(ptbxl_dir / "scp_statements.csv", index_col=0)
    for codes in db.scp_codes:
        assert set(ast.literal_eval(codes)) <= set(statements.index)
    row = db.iloc[0]
    hr = wfdb.rdrecord(str(ptbxl_dir / row.filename_hr))
    lr = wfdb.rdrecord(str(ptbxl_dir / row.filename_lr))
    assert (hr.fs, hr.p_signal.shape, lr.fs, lr.p_signal.shape) == (
        500,
        (5000, 12),
        100,
        (1000, 12),
    )
    assert hr.sig_name == ["I", "II", "III", "AVR", "AVL", "AVF"] + [f"V{i}" for i in range(1, 7)]
    assert hr.units == ["mV"] * 12


def test_ptbxl_like_scp_codes_decode_to_the_intended_labels(ptbxl_dir):
    space = LabelSpace.load("seed6")
    db = pd.read_csv(ptbxl_dir / "ptbxl_database.csv")
    for row, planned in zip(db.itertuples(), plan_ptbxl_like(PTBXL), strict=True):
        target, mask = space.encode(ast.literal_eval(row.true_scp_codes), "scp")
        assert mask.all()
        assert target.astype(bool).tolist() == [lab in planned.truth for lab in space.labels]


def test_patients_come_back_and_true_labels_stay_consistent():
    plan = plan_ptbxl_like(PtbxlLikeSpec(n_records=300, seed=1))
    assert len({r.patient_index for r in plan}) < len(plan)
    assert all(is_consistent(r.truth) and is_consistent(r.written) for r in plan)
    assert set(TIS_CODES) >= {lab for r in plan for lab in r.truth}


def test_written_tis_network_reads_back_through_the_project_reader(tis_dir):
    from common import sources

    scan = sources.scan(tis_dir, "tis")
    assert len(scan.refs) == TIS.n_records and not scan.problems
    ref = scan.refs[0]
    rec = sources.read_record(ref)
    assert rec.signal.shape[0] == 12 and rec.info.coding == "tis"
    raw = pd.read_csv(tis_dir / "index.csv", dtype=str, keep_default_na=False)
    row = raw.set_index("record_id").loc[rec.record_id]
    assert set(rec.info.codes) == set(row.diagnosis.split(";"))


def test_written_ptbxl_like_reads_back_through_the_project_reader(ptbxl_dir):
    from common import sources

    scan = sources.scan(ptbxl_dir, "ptbxl")
    assert len(scan.refs) == PTBXL.n_records and not scan.problems
    rec = sources.read_record(scan.refs[0])
    assert rec.signal.shape == (12, 10 * int(rec.fs)) and rec.info.coding == "scp"
    assert set(rec.info.codes) == set(
        ast.literal_eval(
            pd.read_csv(ptbxl_dir / "ptbxl_database.csv").set_index("ecg_id").scp_codes.iloc[0]
        )
    )


SUPERCLASS = {
    "IMI": "MI", "ASMI": "MI", "LMI": "MI", "ISC_": "STTC", "NDT": "STTC", "LNGQT": "STTC",
    "LVH": "HYP", "RVH": "HYP", "LAO/LAE": "HYP", "RAO/RAE": "HYP",
    "1AVB": "CD", "CRBBB": "CD", "CLBBB": "CD", "IRBBB": "CD", "NORM": "NORM",
}  # fmt: skip


@pytest.mark.parametrize("coding", ["scp", "tis"])
def test_every_written_label_decodes_to_its_ptbxl_superclass_in_both_codings(coding):
    import ast

    from simulations.synth.annotation import scp_codes, tis_codes

    space = LabelSpace.load("superclasses")
    plan = plan_ptbxl_like(PtbxlLikeSpec(n_records=400, seed=3, prevalence=PREVALENT))
    for r in plan:
        codes = ast.literal_eval(scp_codes(r.truth)) if coding == "scp" else tis_codes(r.truth)
        codes = codes if coding == "scp" else codes.split(";")
        target, mask = space.encode(codes, coding)
        assert mask.all()
        want = {SUPERCLASS[lab] for lab in r.truth if lab in SUPERCLASS}
        assert {lab for lab, y in zip(space.labels, target, strict=True) if y} == want, r.truth


#: Every finding common enough that a few hundred records hold all of them and their mixtures.
PREVALENT = {label: 0.12 for label in TIS_CODES if label != "NORM"}


def test_norm_is_ptbxl_normal_ecg_no_diagnosis_but_a_sinus_rate_may_come_with_it():
    space = LabelSpace.load("seed6")
    cases = [(["SBRAD"], True), (["STACH"], True), (["LVH"], False), (["IMI"], False),
             (["AFIB"], False), (["LNGQT", "SBRAD"], False)]  # fmt: skip
    for labels, norm in cases:
        _, info = generate_record(0, labels)
        assert ("NORM" in info["labels"]) == norm, labels
        target, _ = space.encode(info["labels"], "scp")
        assert bool(target[space.index("NORM")]) == norm
        assert target.sum() == norm + sum(lab in space.labels for lab in labels)


def test_findings_go_together_the_way_they_do_in_ptbxl():
    plan = plan_ptbxl_like(PtbxlLikeSpec(n_records=3000, seed=5, prevalence=PREVALENT))
    truths = [set(r.truth) for r in plan]
    assert all(is_consistent(t) for t in truths)

    def share(label, given):
        with_it = [label in t for t in truths if given & t]
        without = [label in t for t in truths if not given & t]
        return np.mean(with_it), np.mean(without)

    assert share("LAO/LAE", {"LVH"})[0] > 2 * share("LAO/LAE", {"LVH"})[1]
    assert share("ISC_", {"IMI", "ASMI", "LMI"})[0] > 1.5 * share("ISC_", {"IMI", "ASMI", "LMI"})[1]
    assert not any({"CLBBB", "IMI"} <= t or {"AFIB", "LAO/LAE"} <= t for t in truths)
    assert sum({"IMI", "LMI"} <= t for t in truths) > 0  # inferolateral infarcts exist
