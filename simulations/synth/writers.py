"""On-disk formats ecgfl reads: TIS-like CSV records and PTB-XL's WFDB layout."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from common.record import LEADS

WFDB_LEADS = [name.upper() if name.startswith("aV") else name for name in LEADS]


def write_tis_record(path: Path, signal_mv: np.ndarray, header: dict[str, object]) -> None:
    """``key: value`` header, the lead-name row, then integer microvolts (docs/formats.md)."""
    buf = io.StringIO()
    for key, value in header.items():
        buf.write(f"{key}: {value}\n")
    buf.write("units: uV\n" + ",".join(LEADS) + "\n")
    samples = np.rint(signal_mv.T * 1000).astype(np.int32)
    # One %-format over the whole table: numpy.savetxt's row loop took 4/5 of a record's time.
    row = ",".join(["%d"] * samples.shape[1]) + "\n"
    buf.write((row * len(samples)) % tuple(samples.ravel().tolist()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buf.getvalue())


def ptbxl_filenames(ecg_id: int) -> tuple[str, str]:
    """PhysioNet's names: records100/00000/00001_lr and records500/00000/00001_hr."""
    folder = f"{ecg_id // 1000 * 1000:05d}"
    return (
        f"records100/{folder}/{ecg_id:05d}_lr",
        f"records500/{folder}/{ecg_id:05d}_hr",
    )


def write_wfdb16(path: Path, signal_mv: np.ndarray, fs: int) -> None:
    """``path``.hea + ``path``.dat as ``wfdb.wrsamp`` writes them for PTB-XL's layout (format 16,
    1000 adu/mV, baseline 0; byte-identical, tested): wfdb's header code spent about 0.1 s per
    file on pandas lookups, five times the cost of synthesising the record."""
    digital = np.round(np.clip(signal_mv.astype(np.float64), -32.0, 32.0) * 1000.0).astype("<i2")
    name = path.name
    lines = [f"{name} {len(digital)} {fs} {digital.shape[1]}"]
    checksums = digital.astype(np.int64).sum(axis=1) % 65536
    for lead, first, checksum in zip(WFDB_LEADS, digital[:, 0], checksums, strict=True):
        lines.append(f"{name}.dat 16 1000.0(0)/mV 16 0 {first} {checksum} 0 {lead}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_name(name + ".hea").write_text("\n".join(lines) + "\n")
    path.with_name(name + ".dat").write_bytes(np.ascontiguousarray(digital.T).tobytes())


def write_ptbxl_record(root: Path, ecg_id: int, signal_500: np.ndarray) -> None:
    """Both versions PhysioNet ships: 500 Hz as recorded and 100 Hz downsampled from it."""
    low, high = ptbxl_filenames(ecg_id)
    write_wfdb16(root / high, signal_500, 500)
    write_wfdb16(root / low, resample_poly(signal_500, 1, 5, axis=1), 100)
