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
        data = json.loads(Path(manifest).read_text())
        sites = data["sites"]
        entry = (
            sites[site]
            if isinstance(site, int) and 0 <= site < len(sites)
            else next((s for s in sites if s["name"] == site), None)
        )
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
