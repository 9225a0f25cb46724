"""TIS-like reader (docs/formats.md): index.csv + one CSV per record, written here in tmp_path."""

import os
from pathlib import Path

import numpy as np
import pytest
from test_sources_ptbxl import read_all, tree_digest

from common import sources
from common.cache import SiteCache
from common.config import ConfigError
from common.labels import LabelSpace
from common.preprocess import PipelineConfig
from common.record import LEADS

INDEX_COLUMNS = ["record_id", "hospital", "patient_id", "file", "diagnosis"]


def lead_signals(n: int = 1000, seed: int = 0) -> np.ndarray:
    """(12, n) integer microvolts, every lead different so a mix-up shows."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return np.round(
        np.stack([(k + 1) * 50 * np.sin(t / (5 + k)) + rng.integers(-20, 20, n) for k in range(12)])
    )


def record_text(
    signal_uv: np.ndarray | None = None,
    leads=LEADS,
    *,
    units: str = "uV",
    diagnosis: str = "1.1",
    fs: object = 100,
    header: dict | None = None,
    drop: tuple[str, ...] = (),
) -> str:
    """A record file: ``key: value`` lines, the lead row, then one row per sample.

    ``signal_uv[i]`` becomes the column named ``leads[i]``.
    """
    signal_uv = lead_signals() if signal_uv is None else signal_uv
    keys = {"sampling_rate": fs, "hospital": "H01", "device": "MAC-5500", "patient_id": "P1"}
    keys |= {"age": 63, "sex": "F", "diagnosis": diagnosis, "units": units} | (header or {})
    lines = [f"{k}: {v}" for k, v in keys.items() if k not in drop]
    lines.append(",".join(leads))
    values = signal_uv.T if units.lower() == "uv" else signal_uv.T / 1000.0
    fmt = "{:.0f}" if units.lower() == "uv" else "{:.6f}"
    lines += [",".join(fmt.format(v) for v in row) for row in values]
    return "\n".join(lines) + "\n"


def write_site(root: Path, records: dict[str, str], extra_index: str = "") -> Path:
    """A TIS-like folder; ``records`` maps record_id -> file text (r1 in H02, r2 in H03...)."""
    rows = []
    for rid, text in records.items():
        hospital = f"H0{int(rid[-1]) % 3 + 1}"
        path = root / "records" / hospital / f"{rid}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        diagnosis = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in text.splitlines()
                if ln.startswith("diagnosis:")
            ),
            "",
        )
        rows.append(
            f"{rid},{hospital},P{rid},records/{hospital}/{rid}.csv,{diagnosis}{extra_index}"
        )
    header = ",".join(INDEX_COLUMNS) + (",ward" if extra_index else "")
    (root / "index.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


def good_site(root: Path, n: int = 3) -> Path:
    return write_site(root, {f"r{i}": record_text(lead_signals(seed=i)) for i in range(1, n + 1)})


# --- reading well-formed records ---------------------------------------------------------------


def test_folder_with_index_naming_hospital_is_detected_as_tis(tmp_path):
    assert sources.detect_format(good_site(tmp_path)) == "tis"


def test_hospital_may_be_the_last_index_column(tmp_path):
    good_site(tmp_path)
    index = tmp_path / "index.csv"
    lines = [line.split(",") for line in index.read_text().splitlines()]
    index.write_text("\n".join(",".join(c[:1] + c[2:] + c[1:2]) for c in lines) + "\n")
    assert sources.detect_format(tmp_path) == "tis"
    records, problems = read_all(tmp_path)
    assert not problems and records["r1"].info.extra["hospital"] == "H02"


def test_shuffled_lead_columns_and_upper_case_names_map_to_canonical_order(tmp_path):
    signal = lead_signals()
    rng = np.random.default_rng(7)
    perm = rng.permutation(12)
    names = [LEADS[i].upper() if LEADS[i].startswith("aV") else LEADS[i] for i in perm]
    write_site(tmp_path, {"r1": record_text(signal[perm], names)})
    records, problems = read_all(tmp_path)
    assert not problems
    np.testing.assert_allclose(records["r1"].signal, signal / 1000.0, rtol=1e-6)
    assert records["r1"].signal[LEADS.index("aVR"), 3] == pytest.approx(signal[3, 3] / 1000.0)


def test_lead_names_are_matched_ignoring_case_and_spaces(tmp_path):
    names = [f" {name.lower()} " for name in LEADS]
    write_site(tmp_path, {"r1": record_text(leads=names)})
    records, problems = read_all(tmp_path)
    assert not problems and records["r1"].signal.shape == (12, 1000)


def test_microvolt_integers_and_millivolt_decimals_read_as_the_same_millivolts(tmp_path):
    signal = lead_signals()
    write_site(
        tmp_path, {"r1": record_text(signal, units="uV"), "r2": record_text(signal, units="mV")}
    )
    records, _ = read_all(tmp_path)
    expected = (signal / 1000.0).astype(np.float32)
    np.testing.assert_allclose(records["r1"].signal, expected, atol=1e-6)
    np.testing.assert_allclose(records["r2"].signal, expected, atol=1e-6)
    assert records["r1"].signal.dtype == np.float32
    assert np.abs(records["r1"].signal).max() < 1.0  # millivolts, not microvolts


def test_header_keys_are_case_insensitive_and_bom_is_ignored(tmp_path):
    text = record_text().replace("sampling_rate:", "Sampling_Rate:").replace("units:", "UNITS:")
    write_site(tmp_path, {"r1": "\ufeff" + text})
    records, problems = read_all(tmp_path)
    assert not problems and records["r1"].fs == 100.0


def test_record_carries_header_and_index_metadata(tmp_path):
    text = record_text(fs=500, header={"date": "2019-03-14T10:22:00"}, diagnosis="2.4;3.2.1")
    write_site(tmp_path, {"r1": text}, extra_index=",ICU")
    records, _ = read_all(tmp_path)
    rec = records["r1"]
    assert rec.fs == 500.0 and rec.duration_s == pytest.approx(2.0)
    assert rec.info.codes == ("2.4", "3.2.1") and rec.info.coding == "tis" and rec.source == "tis"
    assert rec.info.patient_id == "P1" and rec.info.site == "H01" and rec.info.device == "MAC-5500"
    assert rec.info.extra["ward"] == "ICU" and rec.info.extra["date"] == "2019-03-14T10:22:00"
    assert rec.info.extra["age"] == "63" and rec.info.extra["sex"] == "F"


def test_empty_diagnosis_is_a_record_without_codes(tmp_path):
    write_site(tmp_path, {"r1": record_text(diagnosis="")})
    records, problems = read_all(tmp_path)
    assert not problems and records["r1"].info.codes == ()


def test_unknown_codes_are_kept_and_ignored_by_labels(tmp_path):
    write_site(tmp_path, {"r1": record_text(diagnosis="9.9.9;2.2")})
    records, problems = read_all(tmp_path)
    assert not problems and records["r1"].info.codes == ("9.9.9", "2.2")
    space = LabelSpace.load("seed6")
    y, _ = space.encode(records["r1"].info.codes, "tis")
    assert [lab for lab, v in zip(space.labels, y, strict=True) if v] == ["SBRAD"]


# --- hierarchical codes --------------------------------------------------------------------------


def _positives(space_name: str, codes: list[str]) -> list[str]:
    space = LabelSpace.load(space_name)
    y, mask = space.encode(codes, "tis")
    assert mask.all()  # tis annotates every label of both built-in spaces
    return [lab for lab, v in zip(space.labels, y, strict=True) if v]


@pytest.mark.parametrize(
    ("codes", "labels"),
    [
        (["3.2.1"], ["CRBBB"]),
        (["3.2.1.4"], ["CRBBB"]),  # a code implies its ancestors
        (["3.2"], []),  # a parent alone does not say which block
        (["3.2.2"], []),  # incomplete RBBB is not CRBBB
        (["3.2.10"], []),  # a sibling whose name starts alike is not a descendant
        (["3"], []),
        (["1.1", "2.2"], ["NORM", "SBRAD"]),
        (["2.4", "3.1.1", "3.3.1"], ["1AVB", "CLBBB", "AFIB"]),
        ([" 2.3 "], ["STACH"]),
    ],
)
def test_seed6_maps_tis_codes_and_their_descendants(codes, labels):
    assert _positives("seed6", codes) == labels


@pytest.mark.parametrize(
    ("codes", "labels"),
    [
        (["3.1.1"], ["CD"]),
        (["6.1"], ["MI"]),
        (["4.2"], ["HYP"]),
        (["5.2", "6.2"], ["MI", "STTC"]),
        (["1.1"], ["NORM"]),
        (["2.4"], []),  # rhythm is no diagnostic superclass
        (["36.1"], []),
    ],
)
def test_superclasses_map_tis_groups(codes, labels):
    assert _positives("superclasses", codes) == labels


# --- bad records: a precise reason each, and the rest of the folder goes on ---------------------

_SHORT_ROW = "\n".join(record_text().splitlines()[:-1] + [",".join(["1"] * 11)]) + "\n"
_LONG_ROW = record_text() + ",".join(["1"] * 13) + "\n"

BAD_RECORDS = {
    "nan_sample": (
        record_text() + ",".join(["1"] * 5 + ["nan"] + ["1"] * 6) + "\n",
        "sample row 1001, lead aVF: missing, NaN or infinite value",
    ),
    "inf_sample": (
        record_text() + ",".join(["1"] * 11 + ["inf"]) + "\n",
        "lead V6: missing, NaN or infinite value",
    ),
    "non_numeric": (
        record_text() + ",".join(["1"] * 11 + ["abc"]) + "\n",
        "non-numeric or ragged samples",
    ),
    "row_too_long": (_LONG_ROW, "non-numeric or ragged samples"),
    "row_too_short": (_SHORT_ROW, "sample row 1000, lead V6: missing"),
    "no_samples": (record_text(np.zeros((12, 0))), "no samples"),
    "no_lead_row": ("sampling_rate: 100\ndiagnosis: 1.1\nunits: uV\n", "no lead-name row"),
    "lacks_units": (record_text(drop=("units",)), "header lacks ['units']"),
    "lacks_rate_and_dx": (
        record_text(drop=("sampling_rate", "diagnosis")),
        "header lacks ['sampling_rate', 'diagnosis']",
    ),
    "malformed_header_line": (
        "this line has no colon\n" + record_text(),
        "line 1: expected 'key: value'",
    ),
    "rate_not_a_number": (record_text(fs="fast"), "sampling_rate 'fast' is not a number"),
    "rate_zero": (record_text(fs=0), "sampling_rate 0.0 must be positive"),
    "rate_nan": (record_text(fs="nan"), "sampling_rate nan must be positive"),
    "unknown_units": (
        record_text(units="mmHg", diagnosis="1.1"),
        "units 'mmHg': expected uV or mV",
    ),
    "eleven_leads": (record_text(lead_signals()[:11], LEADS[:11]), "11 leads, missing ['V6']"),
    "thirteen_leads": (
        record_text(lead_signals(n=1000)[[*range(12), 0]], [*LEADS, "X1"]),
        "unknown lead name(s) ['X1']",
    ),
    "unknown_lead": (record_text(leads=[*LEADS[:11], "V7"]), "unknown lead name(s) ['V7']"),
    "duplicate_lead": (record_text(leads=[*LEADS[:3], "AVL", *LEADS[4:]]), "duplicate leads in"),
    "not_utf8": (None, "unreadable"),
}


@pytest.fixture(params=sorted(BAD_RECORDS))
def bad_site(request, tmp_path: Path) -> tuple[Path, str]:
    text, reason = BAD_RECORDS[request.param]
    root = good_site(tmp_path / "site")
    bad = record_text() if text is None else text
    write_site(root, {"r1": record_text(), "r2": bad, "r3": record_text(), "r4": record_text()})
    if text is None:
        (root / "records/H03/r2.csv").write_bytes(b"\xff\xfe\x00garbage\x00,\x01\n")
    return root, reason


def test_bad_record_is_skipped_with_its_reason_and_the_rest_read(bad_site):
    root, reason = bad_site
    records, problems = read_all(root)
    assert sorted(records) == ["r1", "r3", "r4"]
    assert list(problems) == ["r2"]
    assert reason in problems["r2"].reason
    assert problems["r2"].path.endswith("records/H03/r2.csv")


def test_prepare_caches_the_good_records_and_counts_the_bad_one(bad_site, tmp_path):
    root, reason = bad_site
    before = tree_digest(root)
    cache = SiteCache.prepare(root, tmp_path / "cache", PipelineConfig(), progress=False)
    assert sorted(cache.index.record_id) == ["r1", "r3", "r4"]
    assert cache.signals.shape == (3, 12, 1000)
    assert cache.manifest["records_found"] == 4 and cache.manifest["records_skipped"] == 1
    assert [(p["record_id"], reason in p["reason"]) for p in cache.problems] == [("r2", True)]
    assert tree_digest(root) == before


def test_missing_record_file_is_skipped(tmp_path):
    good_site(tmp_path)
    (tmp_path / "records/H03/r2.csv").unlink()
    records, problems = read_all(tmp_path)
    assert sorted(records) == ["r1", "r3"] and problems["r2"].reason == "record file missing"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file anyway")
def test_unreadable_record_file_is_skipped(tmp_path):
    good_site(tmp_path)
    path = tmp_path / "records/H03/r2.csv"
    path.chmod(0)
    try:
        records, problems = read_all(tmp_path)
    finally:
        path.chmod(0o644)
    assert sorted(records) == ["r1", "r3"] and problems["r2"].reason.startswith("unreadable")


def test_index_row_without_file_or_with_a_repeated_id_is_rejected_at_scan(tmp_path):
    good_site(tmp_path)
    with open(tmp_path / "index.csv", "a") as fh:
        fh.write("r9,H01,P9,,1.1\n")
        fh.write("r1,H01,P1,records/H02/r1.csv,1.1\n")
    scan = sources.scan(tmp_path)
    assert [r.record_id for r in scan.refs] == ["r1", "r2", "r3"]
    assert [(e.record_id, e.reason) for e in scan.problems] == [
        ("r9", "row without record_id or file"),
        ("r1", "record_id 'r1' repeated in row 5; row 1 kept"),
    ]


@pytest.mark.parametrize("column", INDEX_COLUMNS)
def test_index_without_a_required_column_is_a_config_error_naming_file_and_column(tmp_path, column):
    good_site(tmp_path)
    index = tmp_path / "index.csv"
    rows = [line.split(",") for line in index.read_text().splitlines()]
    drop = rows[0].index(column)
    index.write_text("\n".join(",".join(r[:drop] + r[drop + 1 :]) for r in rows) + "\n")
    with pytest.raises(ConfigError, match=rf"index\.csv: missing column\(s\) \['{column}'\]"):
        sources.scan(tmp_path, "tis")


def test_empty_folder_is_a_config_error_saying_what_was_expected(tmp_path):
    with pytest.raises(ConfigError, match="no ECG data format recognised") as exc:
        sources.detect_format(tmp_path)
    assert str(tmp_path) in str(exc.value) and "--format" in str(exc.value)


def test_missing_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not a directory"):
        sources.detect_format(tmp_path / "absent")
