"""Scoring a model on a site: thresholds chosen on validation, metrics (with bootstrap intervals)
on test."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from common.metrics import Metrics, choose_thresholds, compute_metrics
from common.models import ECGClassifier
from common.training import evaluate


def score(
    model: ECGClassifier, val_ds: Dataset | None, test_ds: Dataset, labels: tuple[str, ...]
) -> Metrics:
    """Macro/micro AUC (with 95 % bootstrap intervals) and macro F1 on ``test_ds``; F1 uses
    per-class thresholds from ``val_ds`` (no validation data: F1 is left undefined rather than cut
    at an arbitrary 0.5)."""
    thresholds = None
    if val_ds is not None and len(val_ds):
        probs, y, mask = evaluate(model, val_ds)
        thresholds = choose_thresholds(probs, y, mask)
    if not len(test_ds):  # a site without test records still reports, as "no annotated samples"
        return nothing_scored(labels)
    probs, y, mask = evaluate(model, test_ds)
    return compute_metrics(probs, y, mask, labels, thresholds, intervals=True)


def nothing_scored(labels: tuple[str, ...]) -> Metrics:
    """The scores of no records: every label "no annotated samples", every figure undefined."""
    none = np.zeros((0, len(labels)), np.float32)
    return compute_metrics(none, none, none, labels, intervals=True)
