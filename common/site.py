"""A site's data as training sees it: its prepared cache and which rows are train/val/test.

Two ways to get one, the same result: a hospital's own folder (deployment, hospital CLI), or one
entry of a site manifest that the partitioner wrote (simulation: virtual sites cut from sources).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from common.cache import SiteCache
from common.config import ConfigError
from common.dataset import CachedDataset
from common.errors import DataError
from common.labels import LabelSpace
from common.preprocess import PipelineConfig
from common.splits import SPLITS, assign_splits

ALL = "all"  # every record of a site, whatever its split (a hospital scoring a model)


@lru_cache(maxsize=16)
def _open_cache(path: str) -> tuple[SiteCache, dict[str, int]]:
    """A prepared cache and its record id -> row map, opened once per process however many
    virtual sites share it."""
    cache = SiteCache.load(Path(path))
    return cache, {rid: i for i, rid in enumerate(cache.index["record_id"])}


@lru_cache(maxsize=4)
def _read_manifest(path: str, mtime_ns: int, size: int) -> tuple[dict, dict[str, int]]:
    """A parsed site manifest and its site name -> position map, once per process and version
    of the file (its mtime and size are in the key): a run opens each of its sites from the same
    manifest, and parsing it per site made opening N sites cost N parses of every record id."""
    data = json.loads(Path(path).read_text())
    return data, {s["name"]: i for i, s in enumerate(data["sites"])}


def read_manifest(manifest: Path) -> tuple[dict, dict[str, int]]:
    """The manifest (read-only: shared by every caller in this process) and its name map."""
    stat = Path(manifest).stat()
    return _read_manifest(str(Path(manifest).resolve()), stat.st_mtime_ns, stat.st_size)


@dataclass
class SiteData:
    name: str
    cache: SiteCache
    rows: dict[str, np.ndarray]
    annotated: Sequence[str] | None = None
    _datasets: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def dataset(self, split: str, space: LabelSpace) -> CachedDataset:
        """The split in ``space`` (or every record of the site, ``"all"``, in cache order), built
        once: a ClientApp process serves the same site many messages (signals copied into memory,
        targets encoded: not per message). Read-only."""
        key = (split, space.name, space.labels)
        if key not in self._datasets:
            rows = (
                np.sort(np.concatenate(list(self.rows.values())))
                if split == ALL
                else self.rows[split]
            )
            self._datasets[key] = CachedDataset(self.cache, space, rows, self.annotated)
        return self._datasets[key]

    def counts(self) -> dict[str, int]:
        return {split: len(rows) for split, rows in self.rows.items()}

    @classmethod
    def from_folder(
        cls,
        name: str,
        data_dir: Path,
        cache_dir: Path,
        pipeline: PipelineConfig,
        fmt: str | None = None,
        **scan_options,
    ) -> SiteData:
        """A hospital's whole folder, split by patient (or PTB-XL folds)."""
        cache = SiteCache.prepare(
            data_dir, cache_dir, pipeline, fmt, progress=False, **scan_options
        )
        splits = assign_splits(cache.index)
        return cls(name, cache, {s: np.flatnonzero(splits == s) for s in SPLITS})

    @classmethod
    def from_manifest(cls, manifest: Path, site: int | str, pipeline: PipelineConfig) -> SiteData:
        """One virtual site of a partition manifest (see docs/formats.md), by position or name."""
        data, by_name = read_manifest(manifest)
        sites = data["sites"]
        at = site if isinstance(site, int) else by_name.get(site, -1)
        entry = sites[at] if 0 <= at < len(sites) else None
        if entry is None:
            raise ConfigError(f"{manifest}: no site {site!r} (it lists {len(sites)})")
        source = data["sources"][entry["source"]]
        prepared = source.get("caches", {}).get(pipeline.fingerprint)
        try:
            cache, position = _open_cache(prepared) if prepared else (None, None)
        except FileNotFoundError:  # removed since: find or build it from the source below
            cache = None
        if cache is None:
            cache = SiteCache.prepare(
                Path(source["data_dir"]),
                Path(data["cache_dir"]),
                pipeline,
                source["format"],
                progress=False,
                **source.get("options", {}),
            )
            position = {rid: i for i, rid in enumerate(cache.index["record_id"])}
        rows = {}
        for split in SPLITS:
            ids = entry["records"].get(split, [])
            missing = [rid for rid in ids if rid not in position]
            if len(missing) == len(ids) and ids:
                raise DataError(
                    f"{manifest}: site {entry['name']}: none of its {split} records "
                    f"are in the cache of {source['data_dir']}"
                )
            rows[split] = np.array([position[rid] for rid in ids if rid in position], np.int64)
        return cls(entry["name"], cache, rows, entry.get("annotated"))
