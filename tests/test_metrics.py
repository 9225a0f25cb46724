import json
import math

import numpy as np
from scipy import stats
from sklearn.metrics import f1_score, roc_auc_score

from common.metrics import (
    choose_thresholds,
    compute_metrics,
    f1_at,
    rank_auc,
    unscored_labels,
)


def _toy(n=60, seed=0):
    """Label 0 and 1 scorable, label 2 never positive; a quarter of label 1 unannotated."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, 3), np.float32)
    y[:, 0] = rng.random(n) < 0.4
    y[:, 1] = rng.random(n) < 0.5
    probs = np.clip(0.6 * y + 0.5 * rng.random((n, 3)), 0, 1)
    mask = np.ones_like(y)
    mask[: n // 4, 1] = 0
    return probs, y, mask


def test_auc_matches_sklearn_on_annotated_entries_and_unscorable_label_is_reported():
    probs, y, mask = _toy()
    m = compute_metrics(probs, y, mask, labels=["A", "B", "C"])
    keep = mask[:, 1] > 0
    auc_a = roc_auc_score(y[:, 0], probs[:, 0])
    auc_b = roc_auc_score(y[keep, 1], probs[keep, 1])
    assert math.isclose(m.per_class["A"]["auc"], auc_a)
    assert math.isclose(m.per_class["B"]["auc"], auc_b)
    assert m.per_class["C"]["auc"] is None and m.per_class["C"]["reason"] == "no positives"
    assert math.isclose(m.macro_auc, (auc_a + auc_b) / 2)
    flat_keep = mask > 0
    assert math.isclose(m.micro_auc, roc_auc_score(y[flat_keep], probs[flat_keep]))
    assert m.per_class["B"]["annotated"] == 45
    assert m.per_class["B"]["positives"] == int(y[keep, 1].sum())


def test_tied_scores_count_half_as_in_sklearn():
    probs, y, mask = _toy(n=200, seed=3)
    probs = np.round(probs, 1)  # many ties within and across classes
    m = compute_metrics(probs, y, mask, labels=["A", "B", "C"])
    keep = mask[:, 1] > 0
    assert math.isclose(m.per_class["A"]["auc"], roc_auc_score(y[:, 0], probs[:, 0]))
    assert math.isclose(m.per_class["B"]["auc"], roc_auc_score(y[keep, 1], probs[keep, 1]))
    flat_keep = mask > 0
    assert math.isclose(m.micro_auc, roc_auc_score(y[flat_keep], probs[flat_keep]))


def test_masked_entries_do_not_change_any_score():
    probs, y, mask = _toy()
    changed = probs.copy()
    changed[mask == 0] = 1 - changed[mask == 0]
    flipped_y = y.copy()
    flipped_y[mask == 0] = 1 - flipped_y[mask == 0]
    a = compute_metrics(probs, y, mask).to_dict()
    b = compute_metrics(changed, flipped_y, mask).to_dict()
    assert a == b


def test_nothing_scorable_gives_none_not_nan():
    y = np.zeros((5, 2), np.float32)
    m = compute_metrics(np.full((5, 2), 0.3), y, np.ones_like(y), thresholds=np.full(2, 0.5))
    assert m.macro_auc is None and m.micro_auc is None and m.macro_f1 is None
    empty = compute_metrics(np.full((5, 2), 0.3), y, np.zeros_like(y))
    assert empty.per_class["0"]["reason"] == "no annotated samples"


def test_thresholds_maximise_validation_f1_per_class():
    probs, y, mask = _toy(n=200, seed=1)
    thresholds = choose_thresholds(probs, y, mask)
    best = f1_at(probs, y, mask, thresholds)
    for k in (0, 1):
        keep = mask[:, k] > 0
        for cut in np.unique(probs[keep, k]):
            assert f1_score(y[keep, k], probs[keep, k] >= cut) <= best[k] + 1e-12
    assert thresholds[2] == 0.5 and best[2] is None


def test_separable_scores_give_perfect_f1():
    y = np.array([[0], [0], [1], [1]], np.float32)
    probs = np.array([[0.1], [0.3], [0.35], [0.9]])
    thresholds = choose_thresholds(probs, y, np.ones_like(y))
    assert f1_at(probs, y, np.ones_like(y), thresholds) == [1.0]


def test_macro_f1_matches_sklearn_and_excludes_unscorable_labels():
    probs, y, mask = _toy(n=100, seed=2)
    thresholds = np.array([0.5, 0.6, 0.5])
    m = compute_metrics(probs, y, mask, thresholds=thresholds)
    keep = mask[:, 1] > 0
    f0 = f1_score(y[:, 0], probs[:, 0] >= 0.5)
    f1 = f1_score(y[keep, 1], probs[keep, 1] >= 0.6)
    assert math.isclose(m.macro_f1, (f0 + f1) / 2)


def test_flat_and_dict_forms_are_plain_data():
    probs, y, mask = _toy()
    m = compute_metrics(probs, y, mask, labels=["A", "B", "C"], thresholds=np.full(3, 0.5))
    json.dumps(m.to_dict())
    flat = m.flat("val_")
    assert flat["val_positives"] == [float(y[:, 0].sum()), float(y[15:, 1].sum()), 0.0]
    assert "val_auc_C" not in flat and "val_auc_A" in flat
    for value in flat.values():
        assert isinstance(value, float) or all(isinstance(v, float) for v in value)


def _separable(n: int, seed: int = 0):
    """One label, scores that separate its classes well but not perfectly."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 1)) < 0.4).astype(np.float32)
    return np.clip(0.3 * y + 0.7 * rng.random((n, 1)), 0, 1), y, np.ones_like(y)


def test_bootstrap_interval_holds_the_point_estimate_and_narrows_with_more_records():
    widths = []
    for n in (40, 400):
        m = compute_metrics(*_separable(n), intervals=True)
        low, high = m.macro_auc_ci
        assert low <= m.macro_auc <= high and m.per_class["0"]["auc_ci"] == m.macro_auc_ci
        assert m.resamples == 1000
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # about 1/sqrt(10) as wide


def test_bootstrap_interval_is_scipys_percentile_interval():
    probs, y, mask = _separable(120)
    m = compute_metrics(probs, y, mask, intervals=True)
    ours = stats.bootstrap(
        (np.arange(120),),
        lambda i, axis=-1: rank_auc(probs[i, 0], y[i, 0] > 0.5, np.ones(i.shape, bool)),
        vectorized=True,
        method="percentile",
        n_resamples=1000,
        rng=np.random.default_rng(0),
    ).confidence_interval
    assert np.allclose(m.macro_auc_ci, [ours.low, ours.high])
    assert math.isclose(rank_auc(probs[:, 0], y[:, 0] > 0.5, np.ones(120, bool)), m.macro_auc)


def test_a_label_without_positives_is_named_and_left_out_of_the_interval():
    probs, y, mask = _toy()
    m = compute_metrics(probs, y, mask, labels=["A", "B", "C"], intervals=True)
    assert m.unscored() == {"C": "no positives"} and m.few_cases() == {}
    assert m.per_class["C"]["auc"] is None and m.per_class["C"]["auc_ci"] is None
    assert m.macro_auc_ci[0] <= m.macro_auc <= m.macro_auc_ci[1]
    assert unscored_labels(["A", "B", "C"], [3, 0, 5], [9, 4, 5]) == {
        "B": "no positives",
        "C": "no negatives",
    }


def test_a_label_with_a_handful_of_positives_is_scored_but_named_and_not_bounded():
    probs, y, mask = _separable(60)
    y[:, 0], mask = 0, np.ones_like(y)
    y[:3, 0] = 1  # three positives
    m = compute_metrics(probs, y, mask, labels=["A"], intervals=True)
    assert m.per_class["A"]["auc"] is not None and m.per_class["A"]["auc_ci"] is None
    assert m.few_cases() == {"A": "3 positive(s), 57 negative(s)"}
    assert m.macro_auc_ci is not None and m.resamples > 800  # resamples without them just skip A
