"""Multi-label scores over annotated entries only: AUC (macro, micro), F1 at per-class thresholds,
and 95 % bootstrap intervals for the AUCs.

A label that a split cannot score (no annotated samples, no positives or no negatives) is reported
as such with a reason and left out of the macro means; it never turns a result into NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import brier_score_loss, f1_score, precision_recall_curve

DEFAULT_THRESHOLD = 0.5
#: Bootstrap intervals: fixed resamples and seed, so a report is reproducible and its cost bounded.
N_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
#: A label's own interval needs this many positives and negatives: fewer, and the label is scored
#: but named as too few to bound.
MIN_CASES = 5
#: Resamples x records drawn at once (memory stays bounded on a hospital's whole archive).
_CHUNK = 1 << 21


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


def unscored_labels(
    labels: Sequence[str], positives: Sequence[float], annotated: Sequence[float]
) -> dict[str, str]:
    """Label -> why it is not scored, from per-label counts (what a site reports, not its data)."""
    out = {}
    for label, pos, ann in zip(labels, positives, annotated, strict=True):
        reason = unscorable_reason(np.array([True] * int(pos) + [False] * int(ann - pos)))
        if reason:
            out[label] = reason
    return out


def rank_auc(scores: np.ndarray, truth: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """ROC AUC along the last axis as the Mann-Whitney U over positives x negatives (ties count
    half, as sklearn's), for many resamples at once; entries outside ``keep`` are ignored and a row
    without positives or negatives is NaN."""
    # Ignored entries rank above every kept one, so the kept ranks are those among kept entries.
    ranks = rankdata(np.where(keep, scores, np.inf), axis=-1)
    pos = keep & truth
    n_pos = pos.sum(-1)
    n_neg = keep.sum(-1) - n_pos
    u = np.where(pos, ranks, 0).sum(-1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def bootstrap_aucs(
    probs: np.ndarray, y: np.ndarray, mask: np.ndarray, n_resamples: int = N_RESAMPLES
) -> np.ndarray:
    """Per-class AUC on ``n_resamples`` resamples of the records, shape (n_resamples, K).

    The records are drawn as ``scipy.stats.bootstrap`` draws them (``rng.integers(0, n,
    (resamples, n))`` with a fixed seed); its own interval cannot be used here because a resample
    without a label's positives has no AUC, and scipy's quantiles do not skip NaN.
    """
    n, k = probs.shape
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    step = max(1, _CHUNK // max(1, n * k))
    out = []
    for start in range(0, n_resamples, step):
        idx = rng.integers(0, n, (min(step, n_resamples - start), n))
        keep, truth = mask[idx] > 0, y[idx] > 0.5
        out.append(
            np.stack([rank_auc(probs[idx, j], truth[..., j], keep[..., j]) for j in range(k)], -1)
        )
    return np.concatenate(out)


def percentile_interval(values: np.ndarray) -> list[float] | None:
    """The central ``CONFIDENCE`` range of bootstrap values (the percentile method)."""
    if not len(values):
        return None
    tail = (1 - CONFIDENCE) / 2 * 100
    return [float(v) for v in np.percentile(values, [tail, 100 - tail])]


def _intervals(aucs: np.ndarray, scored: np.ndarray, enough: np.ndarray) -> dict:
    """Per-class intervals over the resamples where that label is defined, for labels with at
    least ``MIN_CASES`` positives and negatives (below that, resampling a handful of cases says
    little about the AUC); the macro AUC's over every resample, each averaging the labels the split
    scores that it holds, so a label with one positive does not narrow it to the few resamples
    that happen to hold every rare case."""
    per_class = [
        percentile_interval(a[~np.isnan(a)]) if ok else None
        for a, ok in zip(aucs.T, enough, strict=True)
    ]
    held = ~np.isnan(aucs[:, scored]).all(axis=1) & scored.any()
    macro = np.nanmean(aucs[held][:, scored], axis=1) if held.any() else np.zeros(0)
    return {
        "per_class": per_class,
        "macro_ci": percentile_interval(macro),
        "macro_se": float(np.std(macro, ddof=1)) if len(macro) > 1 else None,
        "resamples": int(held.sum()),
    }


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


def brier_scores(
    probs: np.ndarray, y: np.ndarray, mask: np.ndarray, labels: Sequence[str]
) -> tuple[dict[str, float | None], float | None]:
    """Calibration: the Brier score of each label over its annotated records (None where none
    are), and over every annotated (record, label) entry together."""
    per_class: dict[str, float | None] = {}
    for k, label in enumerate(labels):
        p, t = _column(probs, y, mask, k)
        per_class[label] = float(brier_score_loss(t, p, labels=[False, True])) if t.size else None
    keep = mask > 0
    overall = (
        float(brier_score_loss(y[keep] > 0.5, probs[keep], labels=[False, True]))
        if keep.any()
        else None
    )
    return per_class, overall


def too_few_cases(positives: float, annotated: float) -> bool:
    """Fewer than ``MIN_CASES`` positives or negatives among a label's annotated records."""
    return min(positives, annotated - positives) < MIN_CASES


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


@dataclass(frozen=True)
class Metrics:
    """Scores of one split. ``per_class[label]`` holds positives, annotated, auc, auc_ci, f1,
    threshold and reason (None when scorable). Intervals (95 % bootstrap, ``[low, high]``) and the
    macro AUC's bootstrap standard error are None unless asked for, or where undefined (a label
    with fewer than ``MIN_CASES`` positives or negatives has none); ``resamples`` counts the
    resamples behind the macro interval."""

    labels: tuple[str, ...]
    n_samples: int
    macro_auc: float | None
    micro_auc: float | None
    macro_f1: float | None
    per_class: dict[str, dict]
    macro_auc_ci: list[float] | None = None
    macro_auc_se: float | None = None
    resamples: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def unscored(self) -> dict[str, str]:
        """Label -> why this split cannot score it (no positives, no negatives, none annotated)."""
        return {k: c["reason"] for k, c in self.per_class.items() if c["reason"]}

    def few_cases(self) -> dict[str, str]:
        """Label -> why it is scored but has no interval of its own (fewer than ``MIN_CASES``
        positives or negatives): its AUC is one rank among few cases, read it as such."""
        return {
            k: f"{c['positives']} positive(s), {c['annotated'] - c['positives']} negative(s)"
            for k, c in self.per_class.items()
            if c["auc"] is not None and too_few_cases(c["positives"], c["annotated"])
        }

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
    intervals: bool = False,
) -> Metrics:
    """Score ``probs`` (n, K) against targets ``y`` where ``mask`` is 1.

    F1 needs ``thresholds`` (from ``choose_thresholds`` on validation data); without them the
    F1 fields are None rather than scored at an arbitrary cut. ``intervals`` adds bootstrap
    intervals for the AUCs (a test split's report; training's per-epoch validation skips them).
    """
    probs, y, mask = (np.asarray(a, dtype=np.float64) for a in (probs, y, mask))
    labels = tuple(labels) if labels is not None else tuple(str(k) for k in range(probs.shape[1]))
    if len(labels) != probs.shape[1]:
        raise ValueError(f"{len(labels)} label names for {probs.shape[1]} outputs")
    f1s = f1_at(probs, y, mask, thresholds) if thresholds is not None else [None] * len(labels)
    # Every label's AUC in one call (sklearn's roc_auc_score costs milliseconds a call in input
    # checks: most of an evaluate message's scoring on a small site).
    keep, truth = mask > 0, y > 0.5
    aucs = rank_auc(probs.T, truth.T, keep.T)
    per_class: dict[str, dict] = {}
    for k, label in enumerate(labels):
        t = truth[keep[:, k], k]
        reason = unscorable_reason(t)
        per_class[label] = {
            "positives": int(t.sum()),
            "annotated": int(t.size),
            "auc": None if reason else float(aucs[k]),
            "auc_ci": None,
            "f1": f1s[k],
            "threshold": float(thresholds[k]) if thresholds is not None else None,
            "reason": reason,
        }
    all_truth, all_probs = truth[keep], probs[keep]
    everything = np.ones(all_truth.shape, bool)
    micro = (
        None if unscorable_reason(all_truth) else float(rank_auc(all_probs, all_truth, everything))
    )
    ci: dict = {"macro_ci": None, "macro_se": None, "resamples": 0}
    if intervals and probs.shape[0]:
        scored = np.array([c["auc"] is not None for c in per_class.values()])
        enough = scored & [
            not too_few_cases(c["positives"], c["annotated"]) for c in per_class.values()
        ]
        ci = _intervals(bootstrap_aucs(probs, y, mask), scored, enough)
        for label, interval in zip(labels, ci.pop("per_class"), strict=True):
            per_class[label]["auc_ci"] = interval
    return Metrics(
        labels=labels,
        n_samples=int(probs.shape[0]),
        macro_auc=_mean([c["auc"] for c in per_class.values()]),
        micro_auc=micro,
        macro_f1=_mean(f1s) if thresholds is not None else None,
        per_class=per_class,
        macro_auc_ci=ci["macro_ci"],
        macro_auc_se=ci["macro_se"],
        resamples=ci["resamples"],
    )
