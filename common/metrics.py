"""Multi-label scores over annotated entries only: AUC (macro, micro), F1 at per-class thresholds.

A label that a split cannot score (no annotated samples, no positives or no negatives) is reported
as such with a reason and left out of the macro means; it never turns a result into NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score

DEFAULT_THRESHOLD = 0.5


def _column(probs: np.ndarray, y: np.ndarray, mask: np.ndarray, k: int):
    keep = mask[:, k] > 0
    return probs[keep, k], y[keep, k] > 0.5


def unscorable_reason(truth: np.ndarray) -> str | None:
    """Why a label cannot be scored on these (annotated) truths, or None if it can."""
    if truth.size == 0:
        return "no annotated samples"
    if truth.all():
        return "no negatives"
    if not truth.any():
        return "no positives"
    return None


def choose_thresholds(probs_val: np.ndarray, y_val: np.ndarray, mask_val: np.ndarray) -> np.ndarray:
    """Per-class decision thresholds maximising F1 on validation data.

    Labels validation cannot score keep ``DEFAULT_THRESHOLD``.
    """
    thresholds = np.full(probs_val.shape[1], DEFAULT_THRESHOLD)
    for k in range(probs_val.shape[1]):
        p, t = _column(probs_val, y_val, mask_val, k)
        if unscorable_reason(t):
            continue
        precision, recall, cut = precision_recall_curve(t, p)
        # The curve's last point (precision 1, recall 0) has no threshold.
        denom = precision[:-1] + recall[:-1]
        f1 = np.divide(
            2 * precision[:-1] * recall[:-1], denom, out=np.zeros_like(denom), where=denom > 0
        )
        thresholds[k] = cut[int(np.argmax(f1))]
    return thresholds


def f1_at(
    probs: np.ndarray, y: np.ndarray, mask: np.ndarray, thresholds: np.ndarray
) -> list[float | None]:
    """Per-class F1 with predictions ``probs >= thresholds``; None where a label is unscorable."""
    scores: list[float | None] = []
    for k in range(probs.shape[1]):
        p, t = _column(probs, y, mask, k)
        score = None if unscorable_reason(t) else f1_score(t, p >= thresholds[k], zero_division=0)
        scores.append(None if score is None else float(score))
    return scores


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


@dataclass(frozen=True)
class Metrics:
    """Scores of one split. ``per_class[label]`` holds positives, annotated, auc, f1, threshold
    and reason (None when scorable)."""

    labels: tuple[str, ...]
    n_samples: int
    macro_auc: float | None
    micro_auc: float | None
    macro_f1: float | None
    per_class: dict[str, dict]

    def to_dict(self) -> dict:
        return asdict(self)

    def thresholds(self) -> dict[str, float]:
        """Per-class decision thresholds chosen on validation (for checkpoints and predict)."""
        return {k: c["threshold"] for k, c in self.per_class.items() if c["threshold"] is not None}

    def flat(self, prefix: str = "") -> dict[str, float | list[float]]:
        """Scalars and float lists only (Flower's MetricRecord); unscorable values are omitted."""
        out: dict[str, float | list[float]] = {f"{prefix}n_samples": float(self.n_samples)}
        for name in ("macro_auc", "micro_auc", "macro_f1"):
            value = getattr(self, name)
            if value is not None:
                out[f"{prefix}{name}"] = value
        for field in ("positives", "annotated"):
            out[f"{prefix}{field}"] = [float(self.per_class[lab][field]) for lab in self.labels]
        for lab in self.labels:
            for field in ("auc", "f1"):
                value = self.per_class[lab][field]
                if value is not None:
                    out[f"{prefix}{field}_{lab}"] = value
        return out


def compute_metrics(
    probs: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    labels: Sequence[str] | None = None,
    thresholds: np.ndarray | None = None,
) -> Metrics:
    """Score ``probs`` (n, K) against targets ``y`` where ``mask`` is 1.

    F1 needs ``thresholds`` (from ``choose_thresholds`` on validation data); without them the
    F1 fields are None rather than scored at an arbitrary cut.
    """
    probs, y, mask = (np.asarray(a, dtype=np.float64) for a in (probs, y, mask))
    labels = tuple(labels) if labels is not None else tuple(str(k) for k in range(probs.shape[1]))
    if len(labels) != probs.shape[1]:
        raise ValueError(f"{len(labels)} label names for {probs.shape[1]} outputs")
    f1s = f1_at(probs, y, mask, thresholds) if thresholds is not None else [None] * len(labels)
    per_class: dict[str, dict] = {}
    for k, label in enumerate(labels):
        p, t = _column(probs, y, mask, k)
        reason = unscorable_reason(t)
        per_class[label] = {
            "positives": int(t.sum()),
            "annotated": int(t.size),
            "auc": None if reason else float(roc_auc_score(t, p)),
            "f1": f1s[k],
            "threshold": float(thresholds[k]) if thresholds is not None else None,
            "reason": reason,
        }
    keep = mask > 0
    all_truth, all_probs = y[keep] > 0.5, probs[keep]
    micro = None if unscorable_reason(all_truth) else float(roc_auc_score(all_truth, all_probs))
    return Metrics(
        labels=labels,
        n_samples=int(probs.shape[0]),
        macro_auc=_mean([c["auc"] for c in per_class.values()]),
        micro_auc=micro,
        macro_f1=_mean(f1s) if thresholds is not None else None,
        per_class=per_class,
    )
