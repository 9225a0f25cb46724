"""Per-site cache of preprocessed records: a memory-mapped float32 array plus an index.

Decoding WFDB/CSV files every epoch (and, in deployment, in every new ClientApp process) is far
too slow, so a site prepares its data once. A cache is keyed by the source folder's fingerprint and
the pipeline's; it is built in a temporary folder and renamed into place with its manifest written
last, so an interrupted build never leaves a cache that reads as valid.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common import preprocess, sources
from common.preprocess import PipelineConfig
from common.record import Record, RecordError
from common.safefile import data_folder
from common.sources import RecordRef, limits

CACHE_VERSION = 2  # 2: codes as a JSON list, strat_fold always a column
_MANIFEST = "manifest.json"
_SIGNALS = "signals.f32"
_INDEX = "index.csv"
_PROBLEMS = "problems.jsonl"
_SCALAR = (str, int, float, bool, type(None))


def source_fingerprint(root: Path, fmt: str, options: dict) -> str:
    """Hash of every file's path, size and mtime under ``root``: any change rebuilds the cache."""
    h = hashlib.sha256(json.dumps([CACHE_VERSION, fmt, options], sort_keys=True).encode())
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except OSError:  # a symlink loop or a dangling link: the link itself is what changes
                st = os.lstat(path)
            h.update(f"{os.path.relpath(path, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _prepare_one(ref: RecordRef, cfg: PipelineConfig) -> tuple[dict, np.ndarray] | RecordError:
    """Read and preprocess one record; a bad record comes back as its error, not an exception."""
    try:
        rec = sources.read_record(ref)
        limits.check_resampling(rec.record_id, rec.path, rec.fs, cfg.fs)
        x = preprocess.apply(cfg, rec.signal, rec.fs)
    except RecordError as err:
        return err
    except ValueError as err:
        return RecordError(ref.record_id, ref.path, str(err))
    except Exception as exc:  # one record never stops the build (MemoryError included)
        return RecordError.unexpected(ref.record_id, ref.path, exc)
    if not np.isfinite(x).all():
        return RecordError(ref.record_id, ref.path, "non-finite values after preprocessing")
    return _index_row(rec), x


def _index_row(rec: Record) -> dict:
    """The record's row of the cache's index.csv; its codes one cell, a JSON list (exact
    whatever characters a source's codes hold)."""
    info = rec.info
    row = {
        "record_id": rec.record_id,
        "patient_id": info.patient_id,
        "site": info.site,
        "device": info.device,
        "coding": info.coding,
        "codes": json.dumps(list(info.codes)),
        "strat_fold": info.strat_fold,
        "fs_original": rec.fs,
        "duration_s": round(rec.duration_s, 3),
        "path": str(rec.path),
    }
    row.update({k: v for k, v in info.extra.items() if isinstance(v, _SCALAR) and k not in row})
    return row


@dataclass(frozen=True)
class SiteCache:
    """A prepared site: ``signals[i]`` is record ``index.iloc[i]`` after the pipeline."""

    path: Path
    manifest: dict
    index: pd.DataFrame
    signals: np.ndarray

    @property
    def pipeline(self) -> PipelineConfig:
        return PipelineConfig(**self.manifest["pipeline"])

    @property
    def pipeline_fingerprint(self) -> str:
        return self.manifest["pipeline_fingerprint"]

    @property
    def problems(self) -> list[dict]:
        path = self.path / _PROBLEMS
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def load(cls, path: Path) -> SiteCache:
        """Open a built cache folder; raises FileNotFoundError if it is absent or incomplete."""
        path = Path(path)
        try:
            manifest = json.loads((path / _MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise FileNotFoundError(f"{path}: no complete cache here ({exc})") from exc
        if manifest.get("cache_version") != CACHE_VERSION:
            raise FileNotFoundError(
                f"{path}: cache version {manifest.get('cache_version')}, this ecgfl reads "
                f"{CACHE_VERSION}; prepare the site again"
            )
        n, leads, length = manifest["shape"]
        expected = n * leads * length * 4
        size = (path / _SIGNALS).stat().st_size
        if size != expected:
            raise FileNotFoundError(
                f"{path / _SIGNALS}: {size} bytes, manifest promises {expected}"
            )
        signals = (
            np.memmap(path / _SIGNALS, np.float32, "r", shape=(n, leads, length))
            if n
            else np.zeros((0, leads, length), np.float32)
        )
        text = {"record_id": str, "patient_id": str, "site": str, "codes": str, "coding": str}
        index = pd.read_csv(path / _INDEX, dtype=text)
        index["codes"] = [tuple(json.loads(c)) for c in index["codes"]]
        return cls(path, manifest, index, signals)

    @classmethod
    def locate(
        cls,
        data_dir: Path,
        cache_root: Path,
        pipeline: PipelineConfig,
        fmt: str | None = None,
        **scan_options,
    ) -> Path:
        """The folder where this data + pipeline's cache lives (whether built or not)."""
        data_dir = data_folder(data_dir)
        fmt = fmt or sources.detect_format(data_dir)
        source_fp = source_fingerprint(data_dir, fmt, scan_options)
        return Path(cache_root) / f"{fmt}-{source_fp}-{pipeline.fingerprint}"

    @classmethod
    def prepare(
        cls,
        data_dir: Path,
        cache_root: Path,
        pipeline: PipelineConfig,
        fmt: str | None = None,
        workers: int = 1,
        progress: bool = True,
        **scan_options,
    ) -> SiteCache:
        """Open the cache for this data and pipeline, building it first if needed.

        Safe to call from several processes at once: one builds, the others wait and reuse it.
        """
        data_dir = data_folder(data_dir)
        fmt = fmt or sources.detect_format(data_dir)
        target = cls.locate(data_dir, cache_root, pipeline, fmt, **scan_options)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                return cls.load(target)
            except FileNotFoundError:
                pass
            scan = sources.scan(data_dir, fmt, **scan_options)
            _build(target, scan, pipeline, workers, progress, scan_options)
            _remove_stale(target)
        return cls.load(target)


def _results(
    refs: list[RecordRef], cfg: PipelineConfig, workers: int
) -> Iterator[tuple[dict, np.ndarray] | RecordError]:
    if workers <= 1:
        yield from (_prepare_one(ref, cfg) for ref in refs)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(_prepare_one, refs, [cfg] * len(refs), chunksize=32)


def _write_signals(
    path: Path, scan: sources.Scan, cfg: PipelineConfig, workers: int, progress: bool
) -> tuple[list[dict], list[RecordError]]:
    """Preprocess every record into one contiguous float32 file; (index rows, problems)."""
    from tqdm import tqdm

    rows: list[dict] = []
    problems = list(scan.problems)
    with open(path, "wb") as out:
        bar = tqdm(
            _results(scan.refs, cfg, workers),
            total=len(scan.refs),
            desc=f"prepare {scan.root.name}",
            unit="rec",
            disable=not progress or not sys.stderr.isatty(),
        )
        for result in bar:
            if isinstance(result, RecordError):
                problems.append(result)
                continue
            row, x = result
            rows.append(row)
            out.write(x.tobytes())
        out.flush()
        os.fsync(out.fileno())
    return rows, problems


def _build(
    target: Path,
    scan: sources.Scan,
    cfg: PipelineConfig,
    workers: int,
    progress: bool,
    scan_options: dict,
) -> None:
    """Build the cache in a temporary folder and move it into place whole."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    try:
        started = time.perf_counter()
        rows, problems = _write_signals(tmp / _SIGNALS, scan, cfg, workers, progress)
        pd.DataFrame(
            rows, columns=None if rows else ["record_id", "patient_id", "site", "codes"]
        ).to_csv(tmp / _INDEX, index=False)
        with open(tmp / _PROBLEMS, "w") as fh:
            for err in problems:
                entry = {"record_id": err.record_id, "path": err.path, "reason": err.reason}
                fh.write(json.dumps(entry) + "\n")
        manifest = {
            "cache_version": CACHE_VERSION,
            "data_dir": str(scan.root),
            "format": scan.source,
            "scan_options": scan_options,
            "source_fingerprint": target.name.split("-")[1],
            "pipeline": cfg.to_dict(),
            "pipeline_fingerprint": cfg.fingerprint,
            "shape": [len(rows), 12, cfg.length],
            "records_found": len(scan.refs) + len(scan.problems),
            "records_skipped": len(problems),
            "build_seconds": round(time.perf_counter() - started, 2),
        }
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1))  # last: marks completeness
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_stale(fresh: Path) -> None:
    """Drop caches of the same data and pipeline built from an older state of the folder."""
    fmt, _, pipeline_fp = fresh.name.split("-")
    data_dir = json.loads((fresh / _MANIFEST).read_text())["data_dir"]
    for other in fresh.parent.glob(f"{fmt}-*-{pipeline_fp}"):
        if other == fresh or not other.is_dir():
            continue
        try:
            manifest = json.loads((other / _MANIFEST).read_text())
        except (OSError, ValueError):
            continue
        if manifest.get("data_dir") == data_dir:
            shutil.rmtree(other, ignore_errors=True)
