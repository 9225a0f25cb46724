"""Fuzzing the readers: whatever the bytes, a record reads as a valid Record or a RecordError.

Never another exception, never a hang, and a cache built over broken files holds exactly the
records that read cleanly.
"""

import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_sources_tis import lead_signals, record_text, write_site

from common import preprocess, sources
from common.cache import SiteCache
from common.preprocess import PipelineConfig
from common.record import LEADS, Record, RecordError
from common.sources import RecordInfo, RecordRef

FUZZ = settings(
    max_examples=40,
    deadline=timedelta(seconds=3),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples every run: a failure here is a reader bug, not luck
)


def outcome(ref: RecordRef) -> Record | RecordError:
    """The record, or the RecordError it was rejected with; anything else fails the test."""
    try:
        rec = sources.read_record(ref)
    except RecordError as err:
        assert err.record_id == ref.record_id and err.reason
        return err
    assert isinstance(rec, Record)
    assert rec.signal.dtype == np.float32 and rec.signal.ndim == 2
    assert rec.signal.shape[0] == 12 and rec.signal.shape[1] > 0
    assert np.isfinite(rec.signal).all()
    assert np.isfinite(rec.fs) and rec.fs > 0
    assert all(isinstance(c, str) and c for c in rec.info.codes)
    return rec


@pytest.fixture(scope="module")
def wfdb_dir(ptbxl_sample: Path, cinc_sample: Path, tmp_path_factory) -> Path:
    """Pristine copies of one PTB-XL 100 Hz record and one CinC record."""
    root = tmp_path_factory.mktemp("wfdb")
    for ext in ("hea", "dat"):
        shutil.copy(ptbxl_sample / f"records100/00000/00001_lr.{ext}", root / f"00001_lr.{ext}")
    for ext in ("hea", "mat"):
        shutil.copy(cinc_sample / f"E07500.{ext}", root / f"E07500.{ext}")
    return root


def _record_at(
    wfdb_dir: Path,
    name: str,
    hea: str | None = None,
    data: bytes | None = None,
    folder: Path | None = None,
):
    """A fresh folder holding record ``name`` with its header and/or signal file replaced."""
    folder = folder or Path(tempfile.mkdtemp(dir=wfdb_dir))
    signal_ext = "mat" if name.startswith("E") else "dat"
    (folder / f"{name}.hea").write_text(
        (wfdb_dir / f"{name}.hea").read_text() if hea is None else hea
    )
    signal = (wfdb_dir / f"{name}.{signal_ext}").read_bytes() if data is None else data
    (folder / f"{name}.{signal_ext}").write_bytes(signal)
    source = "cinc" if signal_ext == "mat" else "ptbxl"
    info = RecordInfo(("NORM",), "scp") if source == "ptbxl" else None
    return RecordRef(name, folder / name, source, info)


# --- WFDB headers ---------------------------------------------------------------------------------

#: WFDB format 16 marks a missing sample with -32768; it reads as NaN.
INVALID_SAMPLE = -32768
NAMES = st.sampled_from(["00001_lr", "E07500"])
TOKENS = st.one_of(
    st.sampled_from(
        [
            "0",
            "-1",
            "1",
            "12",
            "11",
            "13",
            "100",
            "500",
            "5000",
            "99999999",
            "1e9",
            "nan",
            "inf",
            "16",
            "212",
            "80",
            "8",
            "24",
            "16x1+24",
            "1000.0(0)/mV",
            "1000/uV",
            "200/mmHg",
            "(0)",
            "AVR",
            "V7",
            "V1",
            "",
            "#",
            "abc",
            ":",
            "Dx: 1,2",
            # what hostile headers held: wfdb read each as something else, or allocated it
            "-500",
            "0.0001",
            "1e9",
            "-5000",
            "0(0)/mV",
            "nan(0)/mV",
            "inf(0)/mV",
            "16x1000",
            "00001_lr/2",
        ]
    ),
    st.integers(-(2**40), 2**40).map(str),
    st.text(st.characters(codec="utf-8", exclude_characters="/\\\x00"), max_size=6),
)


@st.composite
def mutated_header(draw, text: str) -> str:
    """A real header with tokens replaced, lines dropped or repeated, or cut short."""
    lines = [line.split(" ") for line in text.splitlines()]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["token", "drop", "repeat", "cut"]))
        i = draw(st.integers(0, len(lines) - 1))
        if kind == "token":
            j = draw(st.integers(0, len(lines[i]) - 1))
            lines[i][j] = draw(TOKENS)
        elif kind == "drop" and len(lines) > 1:
            del lines[i]
        elif kind == "repeat":
            lines.insert(i, list(lines[i]))
        else:
            flat = "\n".join(" ".join(line) for line in lines)
            return flat[: draw(st.integers(0, len(flat)))]
    return "\n".join(" ".join(line) for line in lines) + "\n"


@FUZZ
@given(name=NAMES, data=st.data())
def test_mutated_wfdb_header_reads_cleanly_or_is_a_record_error(wfdb_dir, name, data):
    hea = data.draw(mutated_header((wfdb_dir / f"{name}.hea").read_text()))
    outcome(_record_at(wfdb_dir, name, hea=hea))


@FUZZ
@given(name=NAMES, hea=st.text(max_size=300))
def test_random_wfdb_header_text_is_a_record_error(wfdb_dir, name, hea):
    result = outcome(_record_at(wfdb_dir, name, hea=hea))
    assert isinstance(result, RecordError)  # no random text names twelve leads


# --- WFDB signal files -------------------------------------------------------------------------


SPOILS = st.sampled_from(["cut", "random_same_size", "random_any_size", "flip", "append"])
SEEDS = st.integers(0, 2**32 - 1)


def _spoiled(original: bytes, kind: str, n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    if kind == "cut":
        data = original[: n % (len(original) + 1)]
    elif kind == "random_same_size":
        data = rng.integers(0, 256, len(original), dtype=np.uint8).tobytes()
    elif kind == "random_any_size":
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    elif kind == "flip":
        buf = bytearray(original)
        for i in rng.integers(0, len(buf), 1 + n % 50):
            buf[i] ^= 0xFF
        data = bytes(buf)
    else:
        data = original + bytes(1 + n % 100)
    return data


@FUZZ
@given(name=NAMES, kind=SPOILS, n=st.integers(0, 130_000), seed=SEEDS)
def test_broken_signal_file_reads_cleanly_or_is_a_record_error(wfdb_dir, name, kind, n, seed):
    original = (wfdb_dir / f"{name}.{'mat' if name.startswith('E') else 'dat'}").read_bytes()
    data = _spoiled(original, kind, n, seed)
    result = outcome(_record_at(wfdb_dir, name, data=data))
    if len(data) != len(original):
        assert isinstance(result, RecordError) and "header promises" in result.reason
    elif INVALID_SAMPLE in np.frombuffer(data[-120_000 if name.startswith("E") else 0 :], "<i2"):
        assert isinstance(result, RecordError) and "NaN" in result.reason
    else:
        assert isinstance(result, Record)  # any other 16-bit word is a valid sample


# --- TIS CSV ------------------------------------------------------------------------------------

HEADER_KEYS = st.sampled_from(
    ["sampling_rate", "SAMPLING_RATE", "diagnosis", "units", "Units", "hospital", "device", "x"]
)
HEADER_VALUES = st.one_of(
    st.sampled_from(
        [
            "500",
            "100",
            "0",
            "-1",
            "nan",
            "inf",
            "1e308",
            "uV",
            "mV",
            "uv",
            "MV",
            "",
            "2.4;3.2.1",
            ";;",
            "abc",
            "0.0001",
            "1e9",
            "-500",
        ]
    ),
    st.text(st.characters(codec="utf-8", exclude_characters=",\r\n"), max_size=10),
)
CELLS = st.sampled_from(
    ["0", "1", "-12", "3.5", "nan", "inf", "-inf", "", "x", "1e400", " 7 ", '"5"', "1,2", "0x1"]
)


@st.composite
def lead_rows(draw) -> list[str]:
    if draw(st.booleans()):
        names = list(draw(st.permutations(LEADS)))
        return [n.upper() if draw(st.booleans()) else n for n in names]
    extra = st.sampled_from([*LEADS, "AVR", "avl", "V7", "", " I ", "X"])
    return draw(st.lists(extra, max_size=14))


@st.composite
def tis_texts(draw) -> str:
    header = draw(st.lists(st.tuples(HEADER_KEYS, HEADER_VALUES), max_size=6))
    lines = [f"{k}: {v}" for k, v in header]
    lines += draw(st.lists(st.text(max_size=20), max_size=2))  # stray lines
    lines.append(",".join(draw(lead_rows())))
    rows = draw(st.lists(st.lists(CELLS, min_size=10, max_size=13), max_size=20))
    lines += [",".join(row) for row in rows]
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n", "\r\n"]))


def _tis_ref(folder: Path, content: str | bytes) -> RecordRef:
    path = Path(tempfile.mkdtemp(dir=folder)) / "r.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, newline="")
    return RecordRef("r", path, "tis")


@FUZZ
@given(text=tis_texts())
def test_fuzzed_tis_record_reads_cleanly_or_is_a_record_error(tmp_path, text):
    outcome(_tis_ref(tmp_path, text))


@FUZZ
@given(content=st.one_of(st.text(max_size=400), st.binary(max_size=400)))
def test_random_tis_file_content_reads_cleanly_or_is_a_record_error(tmp_path, content):
    outcome(_tis_ref(tmp_path, content))


@FUZZ
@given(
    values=st.lists(
        st.lists(st.integers(-5000, 5000), min_size=12, max_size=12), min_size=1, max_size=20
    ),
    perm=st.permutations(range(12)),
    extra=st.lists(
        st.tuples(st.sampled_from(["device", "date", "note"]), st.text("abc :-.;_ ", max_size=12)),
        max_size=3,
    ),
    blank_lines=st.integers(0, 3),
)
def test_well_formed_tis_record_reads_exactly_its_samples(
    tmp_path, values, perm, extra, blank_lines
):
    """Header extras and blank lines never shift or drop a sample row."""
    table = np.array(values)  # rows of samples, columns in file order
    lines = [f"{k}: {v}" for k, v in extra] + [""] * blank_lines
    lines += ["sampling_rate: 250", "diagnosis: 1.1", "units: uV", ""]
    lines.append(",".join(LEADS[i] for i in perm))
    lines += [",".join(str(v) for v in row) for row in table]
    rec = outcome(_tis_ref(tmp_path, "\n".join(lines) + "\n"))
    assert isinstance(rec, Record)
    expected = np.empty((12, len(table)))
    expected[list(perm)] = table.T / 1000.0
    np.testing.assert_allclose(rec.signal, expected.astype(np.float32), rtol=1e-6)


# --- every kind of input at once, and ten thousand of them on demand ------------------------------


def _any_input(wfdb_dir: Path, folder: Path, data: st.DataObject) -> RecordRef:
    """One reader input of any kind fuzzed above, written into ``folder``."""
    kind = data.draw(st.sampled_from(["header", "header_text", "signal", "tis", "tis_bytes"]))
    name = data.draw(NAMES)
    if kind == "header":
        hea = data.draw(mutated_header((wfdb_dir / f"{name}.hea").read_text()))
        return _record_at(wfdb_dir, name, hea=hea, folder=folder)
    if kind == "header_text":
        return _record_at(wfdb_dir, name, hea=data.draw(st.text(max_size=300)), folder=folder)
    if kind == "signal":
        original = (wfdb_dir / f"{name}.{'mat' if name.startswith('E') else 'dat'}").read_bytes()
        spoil = (data.draw(SPOILS), data.draw(st.integers(0, 130_000)), data.draw(SEEDS))
        return _record_at(wfdb_dir, name, data=_spoiled(original, *spoil), folder=folder)
    if kind == "tis":
        return _tis_ref(folder, data.draw(tis_texts()))
    return _tis_ref(folder, data.draw(st.binary(max_size=400)))


@FUZZ
@given(data=st.data())
def test_any_reader_input_reads_cleanly_or_is_a_record_error(wfdb_dir, data):
    with tempfile.TemporaryDirectory(dir=wfdb_dir) as folder:
        outcome(_any_input(wfdb_dir, Path(folder), data))


@pytest.mark.slow
@settings(FUZZ, max_examples=10_000)
@given(data=st.data())
def test_ten_thousand_reader_inputs_read_cleanly_or_are_record_errors(wfdb_dir, data):
    """``pytest -m slow -k ten_thousand``: the default suite runs the 40 above."""
    with tempfile.TemporaryDirectory(dir=wfdb_dir) as folder:
        event(type(outcome(_any_input(wfdb_dir, Path(folder), data))).__name__)


# --- a cache over a fuzzed folder -------------------------------------------------------------

SPOILERS = st.sampled_from(
    [
        None,
        lambda t: t + "1,2,3\n",  # ragged
        lambda t: t.replace("units: uV", "units: mmHg"),
        lambda t: t + ",".join(["nan"] * 12) + "\n",
        lambda t: t.split("\n", 9)[-1],  # header cut off
        lambda t: t[: len(t) // 3],  # file truncated mid-row
        lambda t: t[: len(t) // 3].rsplit("\n", 1)[0] + "\n",  # truncated on a row: 3.3 s left
        lambda t: t.replace("V3", "V7", 1),
        lambda t: t.replace(",".join(LEADS), ",".join(LEADS[:6] + LEADS[:6]), 1),
        lambda t: "\n".join(t.splitlines()[:250]) + "\n",  # 2.4 s: still long enough
        lambda t: "\n".join(t.splitlines()[:150]) + "\n",  # 1.4 s: too short to train on
    ]
)


@settings(FUZZ, max_examples=12, deadline=timedelta(seconds=20))
@given(spoilers=st.lists(SPOILERS, min_size=1, max_size=5))
def test_cache_over_a_fuzzed_folder_holds_exactly_the_readable_records(tmp_path, spoilers):
    with tempfile.TemporaryDirectory(dir=tmp_path) as work:
        root = Path(work) / "site"
        texts = {
            f"r{i}": record_text(lead_signals(seed=i)) if spoil is None else spoil(record_text())
            for i, spoil in enumerate(spoilers, start=1)
        }
        write_site(root, texts)
        pipe = PipelineConfig()
        expected = {}
        for ref in sources.scan(root).refs:
            rec = outcome(ref)
            if isinstance(rec, Record) and rec.duration_s >= preprocess.MIN_DURATION_S:
                expected[ref.record_id] = preprocess.apply(pipe, rec.signal, rec.fs)

        cache = SiteCache.prepare(root, Path(work) / "cache", pipe, progress=False)
        reloaded = SiteCache.load(cache.path)

        assert list(reloaded.index.record_id) == list(cache.index.record_id)
        assert sorted(cache.index.record_id) == sorted(expected)
        assert cache.signals.shape == (len(expected), 12, pipe.length)
        assert cache.manifest["shape"][0] == len(expected)
        assert sorted(p["record_id"] for p in cache.problems) == sorted(set(texts) - set(expected))
        assert cache.manifest["records_found"] == len(texts)
        for i, rid in enumerate(reloaded.index.record_id):
            np.testing.assert_array_equal(reloaded.signals[i], expected[rid])
