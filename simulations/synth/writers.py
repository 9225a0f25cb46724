"""On-disk formats ecgfl reads: TIS-like CSV records and PTB-XL's WFDB layout."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import wfdb
from scipy.signal import resample_poly

from common.record import LEADS

WFDB_LEADS = [name.upper() if name.startswith("aV") else name for name in LEADS]


def write_tis_record(path: Path, signal_mv: np.ndarray, header: dict[str, object]) -> None:
    """``key: value`` header, the lead-name row, then integer microvolts (docs/formats.md)."""
    buf = io.StringIO()
    for key, value in header.items():
        buf.write(f"{key}: {value}\n")
    buf.write("units: uV\n" + ",".join(LEADS) + "\n")
    np.savetxt(buf, np.rint(signal_mv.T * 1000).astype(np.int32), fmt="%d", delimiter=",")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buf.getvalue())


def ptbxl_filenames(ecg_id: int) -> tuple[str, str]:
    """PhysioNet's names: records100/00000/00001_lr and records500/00000/00001_hr."""
    folder = f"{ecg_id // 1000 * 1000:05d}"
    return (
        f"records100/{folder}/{ecg_id:05d}_lr",
        f"records500/{folder}/{ecg_id:05d}_hr",
    )


def _wrsamp(root: Path, name: str, signal_mv: np.ndarray, fs: int) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(
        path.name,
        fs=fs,
        units=["mV"] * 12,
        sig_name=WFDB_LEADS,
        p_signal=np.clip(signal_mv.T.astype(np.float64), -32.0, 32.0),
        fmt=["16"] * 12,
        adc_gain=[1000.0] * 12,
        baseline=[0] * 12,
        write_dir=str(path.parent),
    )


def write_ptbxl_record(root: Path, ecg_id: int, signal_500: np.ndarray) -> None:
    """Both versions PhysioNet ships: 500 Hz as recorded and 100 Hz downsampled from it."""
    low, high = ptbxl_filenames(ecg_id)
    _wrsamp(root, high, signal_500, 500)
    _wrsamp(root, low, resample_poly(signal_500, 1, 5, axis=1), 100)
