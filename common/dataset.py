"""Torch datasets over a prepared site cache: (signal, target, mask) triples."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from common.cache import SiteCache
from common.labels import LabelSpace


def encode_labels(
    cache: SiteCache, space: LabelSpace, rows: np.ndarray, annotated: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Targets and masks of ``rows`` of ``cache`` in ``space``."""
    codes = cache.index["codes"].to_numpy()
    coding = cache.index["coding"].to_numpy()
    pairs = [space.encode(codes[i], coding[i], annotated) for i in rows]
    k = len(space)
    y = np.stack([p[0] for p in pairs]) if pairs else np.zeros((0, k), np.float32)
    m = np.stack([p[1] for p in pairs]) if pairs else np.zeros((0, k), np.float32)
    return y, m


class CachedDataset(Dataset):
    """Rows of a site cache with labels in one label space.

    Signals are copied into memory once (a site's share fits easily at 100 Hz: 48 kB a record),
    so an epoch never waits on disk; ``in_memory=False`` reads from the memory map instead.
    """

    def __init__(
        self,
        cache: SiteCache,
        space: LabelSpace,
        rows: np.ndarray | None = None,
        annotated: Sequence[str] | None = None,
        in_memory: bool = True,
    ) -> None:
        self.rows = np.arange(len(cache)) if rows is None else np.asarray(rows, np.int64)
        self.record_ids = cache.index["record_id"].to_numpy()[self.rows]
        y, m = encode_labels(cache, space, self.rows, annotated)
        self.y, self.mask = torch.from_numpy(y), torch.from_numpy(m)
        self._signals = cache.signals
        self.x = (
            torch.from_numpy(np.ascontiguousarray(cache.signals[self.rows])) if in_memory else None
        )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = (
            self.x[i]
            if self.x is not None
            else torch.from_numpy(np.array(self._signals[self.rows[i]]))
        )
        return x, self.y[i], self.mask[i]
