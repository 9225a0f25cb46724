"""How large and how strange a record may be before it is refused unread.

Each limit sits far beyond what real ECG data reaches (PTB-XL, CinC 2020-2021, a TIS-like
network) and well inside what one command can hold in memory: a hostile or broken file is
refused by its size, line length or header before any parser allocates what it promises.
"""

from __future__ import annotations

import math
from pathlib import Path

from common.record import RecordError
from common.safefile import CsvLimits

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

#: Index files (ptbxl_database.csv, index.csv). PTB-XL's is 6 MB for 21,799 rows; a TIS-like
#: index of 4 million records at ~150 bytes a row is ~600 MB.
INDEX = CsvLimits(
    max_bytes=1 * GiB,
    # PTB-XL's longest row is under 1 KB (its free-text report is the long field).
    max_line=64 * KiB,
    # PTB-XL has 28 columns, the TIS-like index 12.
    max_columns=256,
    # A report, a device name or a path: a few hundred characters at most.
    max_field=4 * KiB,
    # CODE, the largest 12-lead collection described, has 2.3 million exams; memory grows
    # ~1 KB per listed record.
    max_rows=4_000_000,
)
#: One text line of a record file (a TIS header line, lead-name row or sample row): a sample row
#: of 12 numbers is under 200 bytes, a header line under 100.
MAX_LINE_BYTES = 64 * KiB
#: One TIS header value (a diagnosis list, a device name), as for index cells.
MAX_FIELD_CHARS = INDEX.max_field
#: TIS-like header lines (key: value, blank) before the lead-name row; the network writes 9.
MAX_HEADER_LINES = 256
#: A WFDB header: PTB-XL's and CinC's are ~1 KB (12 signal lines and a few comments).
MAX_HEADER_BYTES = 64 * KiB
#: A record's signal file (WFDB .dat/.mat, or a TIS CSV): MAX_SAMPLES x 12 leads as 16-bit
#: samples is 48 MB, as CSV text ~200-400 MB.
MAX_RECORD_BYTES = 512 * MiB
#: Samples per lead: an hour at 500 Hz is 1.8 million; CinC's longest records (INCART, 30 min
#: at 257 Hz) hold 462,600. At this limit a record is 190 MB as float64.
MAX_SAMPLES = 2_000_000
#: Duration: PTB-XL and TIS records last 10 s, INCART's 30 min are the longest in CinC 2021.
MAX_DURATION_S = 3600.0
#: Sampling rate: real ECGs use 100 Hz (PTB-XL's low rate) to 1 kHz; high-resolution research
#: ECGs 10 kHz. Below 50 Hz a QRS complex (80-120 ms) spans under 5 samples; a rate far outside
#: these bounds is a broken header, and resampling it would multiply the record's size by it.
MIN_FS_HZ, MAX_FS_HZ = 50.0, 20_000.0
#: Resampling up by more multiplies a record's size past any real need: 50 Hz (MIN_FS_HZ) to a
#: 10 kHz pipeline is 200. (0.0001 Hz to 100 Hz once asked for 449 GiB.)
MAX_UPSAMPLING = 200.0


def check_fs(record_id: str, path: Path, fs: float, name: str) -> None:
    """Refuse a sampling rate no ECG has (``name`` is the header field that gave it)."""
    if not math.isfinite(fs) or fs <= 0:
        raise RecordError(record_id, path, f"{name} {fs} must be positive")
    if not MIN_FS_HZ <= fs <= MAX_FS_HZ:
        reason = f"{name} {fs:g} Hz is outside {MIN_FS_HZ:g}-{MAX_FS_HZ:g} Hz: not an ECG rate"
        raise RecordError(record_id, path, reason)


def check_length(record_id: str, path: Path, n_samples: int, fs: float) -> None:
    """Refuse more samples, or a longer recording, than any ECG record holds."""
    if n_samples > MAX_SAMPLES:
        reason = f"{n_samples:,} samples per lead, over the limit of {MAX_SAMPLES:,}"
        raise RecordError(record_id, path, reason)
    if n_samples / fs > MAX_DURATION_S:
        reason = f"{n_samples / fs:,.0f} s long, over the limit of {MAX_DURATION_S:,.0f} s"
        raise RecordError(record_id, path, reason)


def check_resampling(record_id: str, path: Path, fs: float, to_fs: float) -> None:
    """Refuse a record whose resampling to the pipeline's rate would blow up its size."""
    if to_fs / fs > MAX_UPSAMPLING:
        reason = (
            f"resampling {fs:g} Hz to {to_fs:g} Hz multiplies the samples by {to_fs / fs:,.0f}, "
            f"over the limit of {MAX_UPSAMPLING:g}"
        )
        raise RecordError(record_id, path, reason)
