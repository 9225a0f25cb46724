"""Train/validation/test assignment by patient, never by record.

PTB-XL-style data keeps its recommended folds (1-8 train, 9 validation, 10 test); other data is
split by a hash of the patient id, so a patient's records always land in the same split, at every
site and in every run, without coordination.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


def _unit_interval(key: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(
    index: pd.DataFrame,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    salt: str = "ecgfl",
) -> np.ndarray:
    """One of 'train' / 'val' / 'test' per row of a record index."""
    if "strat_fold" in index and index["strat_fold"].notna().all():
        fold = index["strat_fold"].astype(int).to_numpy()
        return np.where(fold <= 8, "train", np.where(fold == 9, "val", "test"))
    patients = index["patient_id"].fillna(index["record_id"]).astype(str)
    u = np.array([_unit_interval(p, salt) for p in patients])
    train, val, _ = fractions
    return np.where(u < train, "train", np.where(u < train + val, "val", "test"))
