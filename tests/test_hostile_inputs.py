"""Hostile data folders: no hospital command crashes, hangs, is fooled or changes a source file.

A corpus of broken and malicious variants of the real samples (../shared/data) and of synthetic
TIS-like data is built in a temporary folder. ``ecgfl-hospital check``, ``prepare`` and
``predict`` run on it as a hospital runs them (the console scripts, each with 30 s and a cap on
its address space, so a blow-up fails the test rather than the machine), and the daemon's data
check runs in-process. Every bad record must be skipped with its id and a short reason, every
unusable folder or checkpoint must end in one message and exit code 2.
"""

import hashlib
import json
import logging
import os
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from client import cli
from client.daemon import check_data
from common.checkpoint import save_checkpoint
from common.config import ConfigError
from common.hospital import HospitalConfig
from common.labels import LabelSpace
from common.models import ModelConfig
from common.preprocess import PipelineConfig
from common.record import MAX_REASON_CHARS
from common.safefile import describe
from common.sources.ptbxl import scp_codes
from simulations.synth import TisNetworkSpec, write_tis_network

HOSPITAL = Path(sys.executable).parent / "ecgfl-hospital"
TIMEOUT_S = 30
#: Address space per command: each runs on the real samples within 1 GB, so a blow-up past ~1 GB
#: more fails the test (a MemoryError, reported as "unexpected"), not the machine.
MEMORY_CAP = 2 << 30
HUGE = 500 << 20  # a 500 MB line or value, written sparse: it costs no disk
MILLION = 10**6
OUTSIDE_FRAGMENT = "outside the data folder"


# --- building the corpus ----------------------------------------------------------------------


def sparse(path: Path, head: bytes, size: int, tail: bytes = b"") -> None:
    """``head``, then NUL bytes up to ``size`` (a hole: no disk), then ``tail``."""
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)
        fh.seek(size)
        fh.write(tail)


def fifo(path: Path) -> None:
    os.mkfifo(path)


def unix_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))


def device(path: Path) -> bool:
    """A character device (like /dev/null) at ``path``, where this process may make one."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except OSError:
        return False
    return True


def writable_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for path in [dst, *dst.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dst


def wfdb_record(
    src: Path, dst: Path, edit: Callable[[str], str] = str, data: bool = True
) -> tuple[Path, Path]:
    """A copy of WFDB record ``src`` (path without extension) named ``dst``, header edited."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    signal_ext = ".mat" if src.with_suffix(".mat").exists() else ".dat"
    hea, sig = dst.with_suffix(".hea"), dst.with_suffix(signal_ext)
    hea.write_text(edit(src.with_suffix(".hea").read_text().replace(src.name, dst.name)))
    if data:
        shutil.copy(src.with_suffix(signal_ext), sig)
    return hea, sig


def replace_first(old: str, new: str) -> Callable[[str], str]:
    return lambda text: text.replace(old, new, 1)


@dataclass
class Site:
    """A data folder and, for each hostile record in it, a fragment its skip reason must hold."""

    root: Path
    readable: int  # records that must still read
    hostile: dict[str, str]


def build_ptbxl(sample: Path, root: Path, outside: Path) -> Site:
    """The real PTB-XL sample plus a hostile record per row appended to its database."""
    writable_copy(sample, root)
    shutil.rmtree(root / "records100")
    real = root / "records500/00000/00001_hr"
    lines = (root / "ptbxl_database.csv").read_text().splitlines()
    row_1 = lines[1]
    hostile: dict[str, str] = {}
    rows: list[str] = []

    def add(ecg_id: int, fragment: str, file: str | None = None, row: str | None = None):
        """A database row for ``ecg_id`` naming ``records500/hostile/h{id}_hr`` (or ``file``)."""
        file = file or f"records500/hostile/h{ecg_id}_hr"
        named = row_1.replace("records500/00000/00001_hr", file).replace("1,", f"{ecg_id},", 1)
        rows.append(row or named)
        hostile[str(ecg_id)] = fragment
        return root / file

    def header_edit(ecg_id: int, fragment: str, edit: Callable[[str], str]) -> None:
        wfdb_record(real, add(ecg_id, fragment), edit)

    header_edit(
        9001, "sampling frequency -500.0 must be positive", replace_first(" 500 ", " -500 ")
    )
    header_edit(9002, "not an ECG rate", replace_first(" 500 ", " 0.0001 "))
    header_edit(9003, "ADC gain 0.0 must be", replace_first("1000.0(0)/mV", "0(0)/mV"))
    header_edit(9004, "ADC gain nan must be", replace_first("1000.0(0)/mV", "nan(0)/mV"))
    header_edit(9005, "sample count '-5000'", replace_first(" 5000", " -5000"))
    header_edit(9006, "sampling frequency inf must be positive", replace_first(" 500 ", " inf "))
    header_edit(9007, "not an ECG rate", replace_first(" 500 ", " 1e9 "))
    hea, _ = wfdb_record(real, add(9008, "over the 65,536-byte limit"))
    sparse(hea, hea.read_bytes(), HUGE)  # a 500 MB header
    hea, _ = wfdb_record(real, add(9009, "over the 65,536-byte limit"))
    hea.write_text(hea.read_text().replace(" I\n", " I" + " x" * MILLION + "\n", 1))
    fifo(add(9010, "header file is a FIFO").with_suffix(".hea"))
    _, sig = wfdb_record(real, add(9011, "signal file is a FIFO"), data=False)
    fifo(sig)
    base = add(9012, "header file is a symlink loop")
    base.with_suffix(".hea").symlink_to(base.name + ".hea")
    _, sig = wfdb_record(real, add(9013, "signal file is a symlink loop"), data=False)
    sig.symlink_to(sig.name)
    wfdb_record(real, outside / "o_hr")
    add(9014, OUTSIDE_FRAGMENT, file=str(outside / "o_hr"))  # an absolute path
    add(9015, OUTSIDE_FRAGMENT, file="../outside/o_hr")
    base = add(9016, OUTSIDE_FRAGMENT)
    base.with_suffix(".hea").symlink_to(outside / "o_hr.hea")
    _, sig = wfdb_record(real, add(9017, OUTSIDE_FRAGMENT), data=False)
    sig.symlink_to(outside / "o_hr.dat")
    _, sig = wfdb_record(real, add(9018, "samples per lead, over the limit"),
                         replace_first(" 5000", " 3000000"), data=False)  # fmt: skip
    sparse(sig, b"", 3_000_000 * 24)
    _, sig = wfdb_record(real, add(9019, "s long, over the limit"),
                         replace_first(" 500 5000", " 100 400000"), data=False)  # fmt: skip
    sparse(sig, b"", 400_000 * 24)
    add(9020, "header file is a folder").with_suffix(".hea").mkdir()
    _, sig = wfdb_record(real, add(9021, "a socket"), data=False)
    unix_socket(sig)
    _, sig = wfdb_record(real, add(9022, "a character device"), data=False)
    if not device(sig):
        del hostile["9022"]
        rows.pop()
    add(1, "ecg_id 1 repeated", row=row_1)  # a duplicate, pointing at the same files
    codes = "\"{'NORM': 100.0, 'LVOLT': 0.0, 'SR': 0.0}\""
    for ecg_id, levels, fragment in [(9023, 300, "bad scp_codes"), (9024, 100_000, "longer than")]:
        nested = "{'NORM': " * levels + "1" + "}" * levels
        row = row_1.replace("1,", f"{ecg_id},", 1).replace(codes, f'"{nested}"')
        add(ecg_id, fragment, row=row)
    add(9025, "longer than 65,536 bytes", row="9025" + "," * MILLION)
    row = row_1.replace("1,", "9027,", 1).replace("sinusrhythmus", "x" * 10_000)
    add(9027, "over the limit of 4,096", row=row)
    database = root / "ptbxl_database.csv"
    database.write_text("\n".join([*lines, *rows]) + "\n")
    hostile["9026"] = "longer than 65,536 bytes"  # last: a 500 MB row without an end
    with open(database, "ab") as fh:
        fh.write(b"9026,")
    os.truncate(database, database.stat().st_size + HUGE)
    return Site(root, 20, hostile)


def build_tis(root: Path, outside: Path) -> Site:
    """A small synthetic TIS-like network plus hostile records in its index."""
    write_tis_network(TisNetworkSpec(n_records=4, n_hospitals=2, seed=3), root, progress=False)
    index = root / "index.csv"
    columns = index.read_text().splitlines()[0].split(",")
    good = next(root.glob("records/*/*.csv")).read_text()
    header, _, samples = good.partition("I,II,III")
    samples = "I,II,III" + samples
    hostile: dict[str, str] = {}
    rows: list[str] = []

    def add(rid: str, fragment: str, text: str | None = None, file: str | None = None) -> Path:
        file = file or f"records/hostile/{rid}.csv"
        values = {"record_id": rid, "hospital": "H01", "patient_id": "P9", "file": file}
        rows.append(",".join(values.get(c, "1.1" if c == "diagnosis" else "") for c in columns))
        hostile[rid] = fragment
        path = root / file
        path.parent.mkdir(parents=True, exist_ok=True)
        if text is not None:
            path.write_text(text)
        return path

    add("T01", "longer than 65,536 bytes", good + "1," * MILLION + "1\n")
    path = add("T02", "longer than 65,536 bytes")
    sparse(path, good.encode(), HUGE)  # the last sample row: 500 MB of NUL bytes
    add("T03", "line 10 longer than", header + ",".join(["V7"] * MILLION) + "\n" + samples)
    add("T04", "unknown lead name(s)", header + ",".join(f"X{i}" for i in range(5000)) + "\n")
    sparse(add("T05", "line 1 longer than"), b"device: ", HUGE, b"\n" + good.encode())
    add(
        "T06",
        "holds 10,000 characters, over the limit of 4,096",
        "device: " + "x" * 10_000 + "\n" + good,
    )
    for rid, rate, fragment in [
        ("T07", "0.0001", "not an ECG rate"),
        ("T08", "-500", "sampling_rate -500.0 must be positive"),
        ("T09", "1e9", "not an ECG rate"),
        ("T10", "inf", "sampling_rate inf must be positive"),
        ("T11", "nan", "sampling_rate nan must be positive"),
    ]:
        add(rid, fragment, good.replace(header.splitlines()[0], f"sampling_rate: {rate}"))
    (outside / "o.csv").write_text(good)
    add("T12", OUTSIDE_FRAGMENT, file="../outside/o.csv")
    add("T13", OUTSIDE_FRAGMENT, file=str(outside / "o.csv"))
    add("T14", OUTSIDE_FRAGMENT).symlink_to(outside / "o.csv")
    fifo(add("T15", "record file is a FIFO"))
    path = add("T16", "record file is a symlink loop")
    path.symlink_to(path.name)
    add("T17", "record file is a folder").mkdir()
    unix_socket(add("T18", "a socket"))
    if not device(add("T19", "a character device")):
        del hostile["T19"]
        rows.pop()
    long = header.replace(header.splitlines()[0], "sampling_rate: 50")
    long += samples.splitlines()[0] + "\n" + "0,0,0,0,0,0,0,0,0,0,0,0\n" * 200_000  # 4000 s
    add("T20", "s long, over the limit", long)
    add("T21", "NaN or infinite", good + "1,1,1,1,1,nan,1,1,1,1,1,1\n")
    rows.append(rows[0].replace("T01", "T22").replace(",1.1,", "," + "1;" * 5000 + "1,", 1))
    hostile["T22"] = "holds 10,001 characters"
    rows.append("T23" + "," * MILLION)
    hostile["T23"] = "longer than 65,536 bytes"
    rows.append(rows[0].replace("T01", "T24").replace("hostile/T24", "hostile/T\0"))
    hostile["T24"] = "path holds a NUL byte"
    first_id = index.read_text().splitlines()[1].split(",")[0]
    rows.append(index.read_text().splitlines()[1])
    hostile[first_id] = f"record_id '{first_id}' repeated"
    with open(index, "a") as fh:
        fh.write("\n".join(rows) + "\n")
    return Site(root, 4, hostile)


def build_cinc(sample: Path, root: Path, outside: Path) -> Site:
    writable_copy(sample, root)
    real = root / "E07500"
    hostile: dict[str, str] = {}

    def add(rid: str, fragment: str, edit: Callable[[str], str] = str, data: bool = True):
        hostile[rid] = fragment
        return wfdb_record(real, root / rid, edit, data)

    add("E9001", "ADC gain 0.0 must be", lambda t: t.replace("1000.0(0)/mV", "0(0)/mV"))
    add("E9002", "sampling frequency -500.0", replace_first(" 500 ", " -500 "))
    add("E9003", "not an ECG rate", replace_first(" 500 ", " 0.0001 "))
    fifo(add("E9004", "signal file is a FIFO", data=False)[1])
    hea, _ = add("E9005", "over the 65,536-byte limit")
    sparse(hea, hea.read_bytes(), HUGE)
    hostile["E9006"] = "header file is a symlink loop"
    (root / "E9006.hea").symlink_to("E9006.hea")
    wfdb_record(real, outside / "c")
    hostile["E9007"] = OUTSIDE_FRAGMENT
    (root / "E9007.hea").symlink_to(outside / "c.hea")
    shutil.copy(outside / "c.mat", root / "E9007.mat")
    hostile["loop"] = "a symlink to a folder: not followed"
    (root / "loop").symlink_to(".")
    return Site(root, 6, hostile)


@dataclass
class Broken:
    """A folder no command can use: it must end in one message naming ``names``."""

    root: Path
    names: str  # what the message must hold


def build_broken(sample: Path, base: Path) -> dict[str, Broken]:
    """One folder per way a whole folder can be unusable."""

    def ptbxl(name: str) -> Path:
        root = base / name
        root.mkdir()
        return root / "ptbxl_database.csv"

    def tis(name: str) -> Path:
        root = base / name
        root.mkdir()
        return root / "index.csv"

    real_header = (sample / "ptbxl_database.csv").read_text().splitlines()[0]
    fifo(ptbxl("database_fifo"))
    ptbxl("database_loop").symlink_to("ptbxl_database.csv")
    ptbxl("database_wide").write_text(real_header + ",x" * MILLION + "\n")
    ptbxl("database_columns").write_text(real_header + ",x" * 1000 + "\n")
    sparse(ptbxl("database_huge_header"), real_header.encode(), HUGE)
    sparse(ptbxl("database_over_1GiB"), real_header.encode() + b"\n", (1 << 30) + 1)
    ptbxl("database_elsewhere").symlink_to(sample / "ptbxl_database.csv")
    fifo(tis("index_fifo"))
    tis("index_folder").mkdir()
    (base / "folder_loop").symlink_to("folder_loop")
    return {
        "database_fifo": Broken(base / "database_fifo", "a FIFO"),
        "database_loop": Broken(base / "database_loop", "symlink loop"),
        "database_wide": Broken(base / "database_wide", "header row longer than 65,536 bytes"),
        "database_columns": Broken(base / "database_columns", "1,028 columns, over the limit"),
        "database_huge_header": Broken(base / "database_huge_header", "header row longer than"),
        "database_over_1GiB": Broken(base / "database_over_1GiB", "over the 1,073,741,824-byte"),
        "database_elsewhere": Broken(base / "database_elsewhere", OUTSIDE_FRAGMENT),
        "index_fifo": Broken(base / "index_fifo", "a FIFO"),
        "index_folder": Broken(base / "index_folder", "index is a folder"),
        "folder_loop": Broken(base / "folder_loop", "data folder is a symlink loop"),
    }


PIPELINE = PipelineConfig(fs=50.0, length_s=10.0, lowpass_hz=20.0)
SPACE = LabelSpace.load("seed6")


def build_checkpoints(base: Path) -> tuple[Path, dict[str, Path]]:
    """A good checkpoint, and broken or foreign files given as one."""
    cfg = ModelConfig(kwargs={"width": 0.125}, input_length=PIPELINE.length, fs=PIPELINE.fs)
    torch.manual_seed(0)
    good = save_checkpoint(
        base / "good.pt", cfg.build(n_classes=len(SPACE)), cfg, SPACE,
        PIPELINE.fingerprint, PIPELINE.to_dict(),
    )  # fmt: skip
    payload = torch.load(good, weights_only=True)
    broken = {name: base / f"{name}.pt" for name in
              ("truncated", "random", "empty", "wrong_shape", "missing_keys", "foreign",
               "missing_weights", "fifo", "folder")}  # fmt: skip
    data = good.read_bytes()
    broken["truncated"].write_bytes(data[: len(data) // 2])
    broken["random"].write_bytes(os.urandom(1 << 20))
    broken["empty"].write_bytes(b"")
    wider = ModelConfig(kwargs={"width": 0.25}, input_length=PIPELINE.length, fs=PIPELINE.fs)
    torch.save({**payload, "state_dict": wider.build(n_classes=len(SPACE)).state_dict()},
               broken["wrong_shape"])  # fmt: skip
    torch.save({k: v for k, v in payload.items() if k != "state_dict"}, broken["missing_keys"])
    torch.save({"weights": torch.zeros(3)}, broken["foreign"])
    weights = dict(list(payload["state_dict"].items())[1:])
    torch.save({**payload, "state_dict": weights}, broken["missing_weights"])
    fifo(broken["fifo"])
    broken["folder"].mkdir()
    return good, broken


# --- running the commands ---------------------------------------------------------------------


@dataclass
class Run:
    args: list[str]
    code: int | None  # None: killed after TIMEOUT_S
    out: str
    err: str
    seconds: float

    @property
    def text(self) -> str:
        return self.out + self.err


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def hospital(*args: object) -> Run:
    """``ecgfl-hospital ARGS`` as a hospital runs it, with a time limit and a memory cap."""
    argv = [str(HOSPITAL), *map(str, args)]
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_cap_memory,
        start_new_session=True,  # prepare's worker processes go with it on a timeout
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        code = None
    out, err = (b.decode("utf-8", errors="replace") for b in (out, err))
    return Run(argv[1:], code, out, err, time.perf_counter() - started)


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail, rather than hang, an in-process call that blocks (on a FIFO, say)."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def digest(root: Path) -> dict[str, tuple]:
    """What every entry under ``root`` is: content hash, link target, or special-file kind.

    Files over 16 MB (the sparse 500 MB ones) by size, modification and change time: a write
    changes their ctime, which no one can set back.
    """
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[str(path)] = ("link", os.readlink(path))
            elif stat.S_ISREG(st.st_mode) and st.st_size <= 16 << 20:
                out[str(path)] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            elif stat.S_ISREG(st.st_mode):
                out[str(path)] = ("big", st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            else:
                out[str(path)] = ("special", st.st_mode, st.st_rdev)
    return out


@dataclass
class Corpus:
    root: Path
    sites: dict[str, Site]
    broken: dict[str, Broken]
    good_model: Path
    bad_models: dict[str, Path]
    predict_files: dict[str, str]  # record file -> fragment of its error ("" for a good file)
    before: dict[str, tuple]


def predict_files(corpus: Path, sites: dict[str, Site]) -> dict[str, str]:
    """Record files to give predict directly: two good ones, and every hostile one that has no
    folder to leave (paths outside a data folder only mean something for a folder)."""
    files = {}
    tis, ptbxl = sites["tis"].root, sites["ptbxl"].root
    files[str(next(tis.glob("records/H*/*.csv")))] = ""
    files[str(ptbxl / "records500/00000/00001_hr.hea")] = ""
    for rid, fragment in sites["tis"].hostile.items():
        path = tis / "records/hostile" / f"{rid}.csv"
        if os.path.lexists(path) and fragment != OUTSIDE_FRAGMENT:
            files[str(path)] = fragment
    for rid, fragment in sites["ptbxl"].hostile.items():
        path = ptbxl / "records500/hostile" / f"h{rid}_hr.hea"
        if os.path.lexists(path) and fragment != OUTSIDE_FRAGMENT:
            files[str(path)] = fragment
    zero = corpus / "zero.csv"
    zero.symlink_to("/dev/zero")
    files[str(zero)] = "a character device"
    return files


@pytest.fixture(scope="module")
def corpus(ptbxl_sample, cinc_sample, tmp_path_factory) -> Corpus:
    root = tmp_path_factory.mktemp("hostile")
    outside = root / "outside"
    outside.mkdir()
    sites = {
        "ptbxl": build_ptbxl(ptbxl_sample, root / "ptbxl", outside),
        "tis": build_tis(root / "tis", outside),
        "cinc": build_cinc(cinc_sample, root / "cinc", outside),
    }
    (root / "broken").mkdir()
    broken = build_broken(ptbxl_sample, root / "broken")
    (root / "models").mkdir()
    good_model, bad_models = build_checkpoints(root / "models")
    files = predict_files(root, sites)
    return Corpus(root, sites, broken, good_model, bad_models, files, digest(root))


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory) -> dict[str, Run]:
    """Every console-script run over the corpus, two at a time."""
    caches = tmp_path_factory.mktemp("caches")
    jobs: dict[str, tuple] = {}
    for name, folder in [*corpus.sites.items(), *corpus.broken.items()]:
        jobs[f"check {name}"] = ("check", folder.root, "--json")
        jobs[f"prepare {name}"] = ("prepare", folder.root, "--cache", caches / name, "--json")
    jobs["predict"] = ("predict", "--model", corpus.good_model, *corpus.predict_files, "--json")
    record = next(iter(corpus.predict_files))
    jobs["predict fifo model"] = ("predict", "--model", corpus.bad_models["fifo"], record)
    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(hospital, *args) for name, args in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


# --- every run: no traceback, no hang, bounded output ------------------------------------------


@pytest.mark.e2e  # every command in a real process
def test_no_command_prints_a_traceback_hangs_or_floods_its_output(runs):
    for name, run in runs.items():
        assert run.code is not None, f"{name}: still running after {TIMEOUT_S} s"
        assert "Traceback" not in run.text, f"{name}:\n{run.text[-3000:]}"
        assert run.seconds < TIMEOUT_S
        assert len(run.text) < 200_000, f"{name}: {len(run.text):,} characters of output"


# --- folders of hostile records: each skipped by id and reason, the rest read ------------------


def reasons_by_id(skipped: list[dict]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for s in skipped:
        assert s["record_id"] and s["reason"] and len(s["reason"]) <= MAX_REASON_CHARS, s
        assert "unexpected" not in s["reason"], s  # a reader let an exception through
        out.setdefault(s["record_id"], []).append(s["reason"])
    return out


def assert_hostile_skipped(site: Site, skipped: list[dict]) -> None:
    found = reasons_by_id(skipped)
    for rid, fragment in site.hostile.items():
        assert any(fragment in reason for reason in found.get(rid, [])), (rid, found.get(rid))
    assert set(found) == set(site.hostile), set(found) ^ set(site.hostile)


@pytest.mark.e2e  # the console scripts in real processes (the quick tier reads in-process)
@pytest.mark.parametrize("fmt", ["ptbxl", "tis", "cinc"])
def test_check_skips_every_hostile_record_by_id_and_reason_and_reads_the_rest(corpus, runs, fmt):
    run, site = runs[f"check {fmt}"], corpus.sites[fmt]
    assert run.code == 0, run.err[-2000:]
    report = json.loads(run.out)
    assert report["readable"] == site.readable
    assert report["found"] == site.readable + len(report["skipped"])
    assert_hostile_skipped(site, report["skipped"])


@pytest.mark.e2e  # the console scripts in real processes (the quick tier reads in-process)
@pytest.mark.parametrize("fmt", ["ptbxl", "tis", "cinc"])
def test_prepare_caches_exactly_the_readable_records_and_lists_the_rest(corpus, runs, fmt):
    run, site = runs[f"prepare {fmt}"], corpus.sites[fmt]
    assert run.code == 0, run.err[-2000:]
    manifest = json.loads(run.out)
    assert manifest["shape"][0] == site.readable
    cache = Path(manifest["path"])
    assert (cache / "index.csv").stat().st_size < 100_000  # no huge field copied in
    problems = [json.loads(line) for line in (cache / "problems.jsonl").read_text().splitlines()]
    assert_hostile_skipped(site, problems)


@pytest.mark.parametrize("fmt", ["ptbxl", "tis", "cinc"])
def test_daemon_data_check_logs_every_hostile_record_and_goes_on(corpus, fmt, caplog):
    site = corpus.sites[fmt]
    cfg = HospitalConfig(site="h", superlink="127.0.0.1:9092", data_dir=str(site.root))
    with caplog.at_level(logging.WARNING, logger="ecgfl.hospital"), deadline(TIMEOUT_S):
        check_data(cfg)
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped ")]
    assert len(skipped) >= len(site.hostile)
    for rid, fragment in site.hostile.items():
        assert any(m.startswith(f"skipped {rid}: ") and fragment in m for m in skipped), rid
    assert all(len(m) < 2 * MAX_REASON_CHARS + 300 for m in skipped)


# --- folders no command can use: one message, exit code 2 ---------------------------------------


@pytest.mark.e2e  # the console scripts in real processes
@pytest.mark.parametrize("command", ["check", "prepare"])
def test_an_unusable_folder_ends_in_one_message_naming_the_file_and_exit_code_2(
    corpus, runs, command
):
    for name, broken in corpus.broken.items():
        run = runs[f"{command} {name}"]
        assert run.code == 2, (name, run.text[-2000:])
        assert f"ecgfl-hospital {command}: error: " in run.err and broken.names in run.err, (
            name,
            run.err[-2000:],
        )
        assert len(run.err) < 2000 and not run.out, name


def test_daemon_data_check_stops_on_an_unusable_folder_with_its_message(corpus):
    for name, broken in corpus.broken.items():
        cfg = HospitalConfig(site="h", superlink="127.0.0.1:9092", data_dir=str(broken.root))
        with pytest.raises(ConfigError) as exc, deadline(TIMEOUT_S):
            check_data(cfg)
        assert broken.names in str(exc.value) and len(str(exc.value)) < 2000, name


# --- predict: record files given directly --------------------------------------------------------


@pytest.mark.e2e  # every command in a real process
def test_predict_reports_every_hostile_file_and_predicts_the_good_ones(corpus, runs):
    run = runs["predict"]
    assert run.code == 1, run.err[-2000:]
    records = json.loads(run.out)["records"]
    assert [r["path"] for r in records] == list(corpus.predict_files)
    for r, fragment in zip(records, corpus.predict_files.values(), strict=True):
        if not fragment:
            assert "probabilities" in r, r
            continue
        assert fragment in r["error"] and f"record {Path(r['path']).stem} " in r["error"], r
        assert len(r["error"]) < len(r["path"]) + MAX_REASON_CHARS + 150
        assert "unexpected" not in r["error"]


# --- broken and foreign checkpoints ---------------------------------------------------------


@pytest.mark.e2e  # every command in a real process
def test_predict_with_a_fifo_for_a_checkpoint_ends_in_one_message_and_exit_code_2(corpus, runs):
    run, path = runs["predict fifo model"], corpus.bad_models["fifo"]
    assert run.code == 2 and run.err.startswith(f"ecgfl-hospital predict: error: {path}: ")
    assert "checkpoint is a FIFO" in run.err and len(run.err) < 500


@pytest.mark.parametrize("command", ["predict", "finetune", "export", "evaluate"])
def test_every_broken_checkpoint_is_refused_by_every_model_command(corpus, command, capsys):
    site, tmp = corpus.sites["tis"].root, corpus.root.parent
    for name, path in corpus.bad_models.items():
        args = {
            "predict": [next(iter(corpus.predict_files))],
            "finetune": ["--data", site, "--cache", tmp / "finetune-cache"],
            "export": ["--onnx", tmp / "model.onnx"],
            "evaluate": ["--data", site, "--out", tmp / "evaluation"],
        }[command]
        with deadline(TIMEOUT_S):
            code = cli.main([command, "--model", str(path), *map(str, args)])
        err = capsys.readouterr().err
        assert code == 2, (name, err)
        assert f"ecgfl-hospital {command}: error: {path}" in err and len(err) < 1500, (name, err)
    assert not (tmp / "model.onnx").exists() and not (tmp / "evaluation").exists()


# --- the pieces the corpus cannot show ---------------------------------------------------------


def test_permission_denied_reads_as_unreadable_not_as_a_crash():
    """Root reads a chmod 000 file anyway, so the reason is tested on the error itself."""
    assert describe("index", PermissionError(13, "Permission denied")) == (
        "unreadable index (permission denied)"
    )
    assert describe("header file", OSError(40, "loop")) == "header file is a symlink loop"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 folder anyway")
def test_an_unreadable_data_folder_is_one_message(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0)
    try:
        run = hospital("check", folder)
    finally:
        folder.chmod(0o755)
    assert run.code == 2 and "unreadable data folder (permission denied)" in run.err


def test_deeply_nested_scp_codes_are_refused_without_recursion():
    nested = "{'NORM': " * 100_000 + "1" + "}" * 100_000
    started = time.perf_counter()
    with pytest.raises(ValueError, match="is not 'CODE': likelihood"):
        scp_codes(nested)
    with pytest.raises(ValueError):
        scp_codes("[" * 100_000 + "]" * 100_000)
    assert time.perf_counter() - started < 1
    assert scp_codes("{'NORM': 100.0, 'LVOLT': 0.0, 'SR': 0.0}") == ("NORM", "LVOLT", "SR")
    assert scp_codes("{}") == ()


@pytest.mark.e2e  # every command in a real process
def test_no_source_file_was_modified_or_added(corpus, runs):
    """Last in the file: after every command above has run on the corpus."""
    assert digest(corpus.root) == corpus.before
