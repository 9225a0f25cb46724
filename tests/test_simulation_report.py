"""The simulation report's per-method summary and the comparison over runs."""

import json

import pytest

from common.experiment import ExperimentConfig
from simulations.report import compare, methods


def row(site: str, **auc) -> dict:
    return {
        "site": site,
        "candidates": {},
        **{f"{k}_auc": auc.get(k) for k in ("local", "before", "after", "central")},
    }


def test_each_method_has_its_mean_and_worst_site():
    rows = [row("a", before=0.9, after=0.95, local=0.7), row("b", before=0.6, after=0.5)]
    got = methods(rows, ExperimentConfig())
    assert got["global + full"] == {
        "sites": {"a": 0.95, "b": 0.5},
        "mean": pytest.approx(0.725),
        "worst": 0.5,
        "worst_site": "b",
    }
    assert got["local-only"]["sites"] == {"a": 0.7}  # unscored sites are left out
    assert "centralized + fine-tune" not in got  # no baseline ran


def test_compare_gives_mean_and_std_over_runs(tmp_path):
    runs = []
    for i, (mean, worst) in enumerate([(0.8, 0.6), (0.9, 0.7)]):
        run = tmp_path / f"s{i}"
        run.mkdir()
        found = {"global + ditto": {"mean": mean, "worst": worst, "worst_site": f"x{i}"}}
        (run / "results.json").write_text(json.dumps({"methods": found}))
        runs.append(run)
    table = compare(runs)
    assert "| global + ditto | 2 | 0.850 ± 0.071 | 0.650 ± 0.071 | x0, x1 |" in table
