"""Reading what a data folder holds without trusting it.

Only regular files are opened (a FIFO would hang the reader, a device could stream forever), only
inside the folder once symlinks are resolved, only up to a size, and text only in bounded lines.
Every refusal is a short reason that names the file, never its content. A problem with one
record's file raises that record's ``RecordError``; one with a file the whole folder depends on
(``record_id=None``: an index, a checkpoint) raises ``ConfigError``, which stops the command
with its message.
"""

from __future__ import annotations

import csv
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from common.config import ConfigError
from common.record import RecordError, clip

#: What a path that is not a regular file is, for the reason that refuses it.
_SPECIAL = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)
#: Bytes read at a time when skipping the rest of an over-long line.
_CHUNK = 1 << 20


def refuse(path: Path | str, reason: str, record_id: str | None) -> Exception:
    """The error for a file not read: the record's, or (no record) the command's."""
    if record_id is None:
        return ConfigError(f"{path}: {clip(reason)}")
    return RecordError(record_id, path, reason)


def describe(what: str, exc: OSError) -> str:
    """Why ``what`` could not be opened, in a few words (not strerror with the filename)."""
    if isinstance(exc, FileNotFoundError):
        return f"{what} missing"
    if exc.errno == errno.ELOOP:
        return f"{what} is a symlink loop"
    if isinstance(exc, IsADirectoryError):
        return f"{what} is a folder"
    if isinstance(exc, NotADirectoryError):
        return f"{what} missing (a folder on its path is a file)"
    if isinstance(exc, PermissionError):
        return f"unreadable {what} (permission denied)"
    return f"unreadable {what} ({clip(exc.strerror or type(exc).__name__, 80)})"


def real_path(path: Path, what: str, record_id: str | None, root: Path | None = None) -> Path:
    """``path`` with every symlink resolved; refused if missing, a loop, or outside ``root``."""
    try:
        real = Path(os.path.realpath(path, strict=True))
    except OSError as exc:
        raise refuse(path, describe(what, exc), record_id) from None
    except ValueError:  # no file has a name with a NUL byte in it
        raise refuse(repr(str(path)), f"{what} path holds a NUL byte", record_id) from None
    if root is not None and not real.is_relative_to(root):
        reason = f"{what} resolves to {clip(real, 120)}, outside the data folder {root}: not read"
        raise refuse(path, reason, record_id)
    return real


def _kind(mode: int) -> str | None:
    return next((name for test, name in _SPECIAL if test(mode)), None)


def check_regular(
    path: Path, what: str, max_bytes: int, record_id: str | None, root: Path | None = None
) -> int:
    """The size of ``path`` if it is a regular file of at most ``max_bytes``, else refused.

    For files a library opens itself (wfdb): nothing here opens ``path``.
    """
    real = real_path(path, what, record_id, root)
    try:
        st = os.stat(real)
    except OSError as exc:
        raise refuse(path, describe(what, exc), record_id) from None
    kind = _kind(st.st_mode)
    if kind is not None:
        raise refuse(path, f"{what} is {kind}, not a regular file: not read", record_id)
    if st.st_size > max_bytes:
        reason = f"{what} is {st.st_size:,} bytes, over the {max_bytes:,}-byte limit"
        raise refuse(path, reason, record_id)
    return st.st_size


def open_regular(
    path: Path, what: str, max_bytes: int, record_id: str | None, root: Path | None = None
) -> BinaryIO:
    """``path`` opened for binary reading once it passed ``check_regular``.

    O_NONBLOCK and a second look at the open file: a regular file swapped for a FIFO after the
    check still cannot block the reader.
    """
    check_regular(path, what, max_bytes, record_id, root)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise refuse(path, describe(what, exc), record_id) from None
    st = os.fstat(fd)
    if _kind(st.st_mode) is not None or st.st_size > max_bytes:
        os.close(fd)
        raise refuse(path, f"{what} changed while being opened: not read", record_id)
    return os.fdopen(fd, "rb")


def bounded_lines(fh: BinaryIO, max_bytes: int) -> Iterator[bytes]:
    """Each line of ``fh`` without its end, none held longer than ``max_bytes`` + 1.

    A longer line comes as its first ``max_bytes`` + 1 bytes (callers test ``len > max_bytes``:
    the start may still name the record); its rest is skipped a chunk at a time.
    """
    while line := fh.readline(max_bytes + 1):
        if len(line) > max_bytes and not line.endswith(b"\n"):
            yield line  # a reader that stops here never reads the rest
            while (rest := fh.readline(_CHUNK)) and not rest.endswith(b"\n"):
                pass
            continue
        yield line.rstrip(b"\r\n")


@dataclass
class CsvRow:
    """One data row of an index: ``number`` counts rows (blank ones too) after the header.

    ``problem`` says why the row cannot be used; ``fields`` then holds what could be read of it
    (enough, usually, to name the record).
    """

    number: int
    fields: dict[str, str]
    problem: str | None = None


@dataclass(frozen=True)
class CsvLimits:
    max_bytes: int  # the whole file
    max_line: int  # one row, in bytes
    max_columns: int
    max_field: int  # one cell, in characters
    max_rows: int


def _logical_rows(fh: BinaryIO, max_line: int) -> Iterator[tuple[str, bool]]:
    """(row text, whether it was cut at ``max_line``): lines joined while a quote is open."""
    pending: list[str] = []
    size = quotes = 0
    for raw in bounded_lines(fh, max_line):
        text = raw.decode("utf-8", errors="replace")
        if len(raw) > max_line or size + len(raw) > max_line:
            yield "\n".join([*pending, text])[: max_line + 1], True
            pending, size, quotes = [], 0, 0
            continue
        pending.append(text)
        size += len(raw) + 1
        quotes += text.count('"')
        if quotes % 2 == 0:
            yield "\n".join(pending), False
            pending, size, quotes = [], 0, 0
    if pending:
        yield "\n".join(pending), False


def _parse(text: str) -> list[str]:
    return next(csv.reader([text]), [])


def read_csv(
    path: Path, what: str, limits: CsvLimits, root: Path | None = None
) -> tuple[list[str], Iterator[CsvRow]]:
    """(column names, rows) of an index file, checked against ``limits`` as it is read.

    A file, header or row count over its limit stops the command (ConfigError); one row over
    its limits becomes a ``CsvRow`` with a problem, and reading goes on.
    """
    fh = open_regular(path, what, limits.max_bytes, None, root)
    rows = _logical_rows(fh, limits.max_line)
    first, cut = next(rows, ("", False))
    try:
        if cut:
            raise ConfigError(f"{path}: header row longer than {limits.max_line:,} bytes")
        header = [name.strip() for name in _parse(first.removeprefix("\ufeff"))]
        if len(header) > limits.max_columns:
            raise ConfigError(
                f"{path}: header row has {len(header):,} columns, over the limit of "
                f"{limits.max_columns}"
            )
    except csv.Error as exc:
        fh.close()
        raise ConfigError(f"{path}: header row is not CSV ({exc})") from None
    except ConfigError:
        fh.close()
        raise
    return header, _rows(path, fh, rows, header, limits)


def _rows(
    path: Path, fh: BinaryIO, rows: Iterator[tuple[str, bool]], header: list[str], limits: CsvLimits
) -> Iterator[CsvRow]:
    with fh:
        number = 0
        for text, cut in rows:
            number += 1  # blank rows count: reading them costs as much
            if number > limits.max_rows:
                raise ConfigError(f"{path}: more than {limits.max_rows:,} rows, over the limit")
            if not cut and not text.strip():
                continue
            try:
                values = _parse(text)
            except csv.Error as exc:
                yield CsvRow(number, {}, f"row {number} is not CSV ({exc})")
                continue
            fields = dict(zip(header, values + [""] * (len(header) - len(values)), strict=False))
            if cut:
                yield CsvRow(number, fields, f"row {number} longer than {limits.max_line:,} bytes")
            else:
                yield CsvRow(number, fields, _row_problem(number, header, values, limits))


def _row_problem(
    number: int, header: list[str], values: list[str], limits: CsvLimits
) -> str | None:
    if len(values) > len(header):
        return f"row {number} has {len(values):,} fields, the header names {len(header)}"
    long = next(
        ((h, v) for h, v in zip(header, values, strict=False) if len(v) > limits.max_field), None
    )
    if long is not None:
        return (
            f"row {number}: {clip(long[0], 40)!r} holds {len(long[1]):,} characters, over the "
            f"limit of {limits.max_field:,}"
        )
    return None


def data_folder(root: Path) -> Path:
    """``root`` with symlinks resolved, refused unless it is a folder this process can list."""
    if not os.path.lexists(root):
        raise ConfigError(f"{root}: not a directory (nothing there)")
    real = real_path(Path(root), "data folder", None)
    if not real.is_dir():
        raise ConfigError(f"{root}: not a directory")
    try:
        with os.scandir(real):
            pass
    except OSError as exc:
        raise ConfigError(f"{root}: {describe('data folder', exc)}") from None
    return real


def walk_files(root: Path, suffix: str) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files under ``root`` named ``*suffix``, sorted, and (folder, reason) for those not listed.

    Symlinked folders are not followed: a record must lie inside the data folder, and a folder
    linking to its own parent would be listed forever.
    """
    found, skipped = [], []

    def unlisted(exc: OSError) -> None:
        reason = describe("folder", exc) + ": its records are not listed"
        skipped.append((Path(exc.filename), reason))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unlisted):
        for name in sorted(dirnames):
            if os.path.islink(os.path.join(dirpath, name)):
                skipped.append((Path(dirpath, name), "a symlink to a folder: not followed"))
        found += [Path(dirpath, f) for f in filenames if f.endswith(suffix)]
    return sorted(found), skipped
