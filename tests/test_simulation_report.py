"""The simulation report from what sites reply: intervals per site and of the mean, support, the
labels a site could not score; several seeds combined; each method's mean and worst site, and
the comparison over runs."""

import json
import math
from types import SimpleNamespace

import pytest

from common import protocol
from common.experiment import ExperimentConfig
from simulations import report, seeds

LABELS = ("NORM", "1AVB", "CRBBB", "CLBBB", "SBRAD", "STACH", "AFIB")


def _reply(auc: float, se: float, positives: list[int]) -> dict:
    return {
        protocol.BEFORE_MACRO_AUC: auc - 0.05,
        protocol.BEFORE_MACRO_AUC_CI: [auc - 0.15, auc + 0.05],
        protocol.BEFORE_MACRO_AUC_SE: se,
        protocol.BEFORE_MACRO_F1: 0.5,
        protocol.AFTER_MACRO_AUC: auc,
        protocol.AFTER_MACRO_AUC_CI: [auc - 0.1, min(1.0, auc + 0.1)],
        protocol.AFTER_MACRO_AUC_SE: se,
        protocol.AFTER_MACRO_F1: math.nan,  # no validation records: F1 undefined
        protocol.TEST_POSITIVES: [float(p) for p in positives],
        protocol.TEST_ANNOTATED: [20.0] * len(LABELS),
    }


def _run(tmp_path, aucs):
    summary = {
        "experiment": ExperimentConfig().to_dict(),
        "rounds": [{"round": 1, "sites": ["a", "b"]}],
        "finetune": {
            "a": _reply(aucs[0], 0.03, [5, 0, 2, 1, 3, 2, 4]),
            "b": _reply(aucs[1], 0.04, [8, 1, 0, 0, 2, 20, 3]),
        },
    }
    run_dir = tmp_path / f"run-{aucs[0]}"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps(summary))
    sites = [
        SimpleNamespace(name=n, counts=lambda: {"train": 80, "val": 10, "test": 20}) for n in "ab"
    ]
    return run_dir, report.write(run_dir, ExperimentConfig(), sites, {}, {}, {"federation_s": 1.0})


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list:
    """Two seeds' reports: (run folder, simulation.md) each."""
    tmp = tmp_path_factory.mktemp("report")
    return [_run(tmp, (0.9, 0.8)), _run(tmp, (0.8, 0.7))]


def test_report_shows_each_sites_interval_and_names_the_labels_it_could_not_score(runs):
    run_dir, path = runs[0]
    text = path.read_text()
    row = "| a | 80 | 20 | - | - | 0.850 [0.750, 0.950] | 0.500 | 0.900 [0.800, 1.000] | - |"
    assert row in text
    named = "1AVB (no positives), CRBBB (scored, too few cases: 2 of 20), CLBBB (scored, too few"
    assert f"| a | 5 | 0 | 2 | 1 | 3 | 2 | 4 | {named}" in text
    assert "| b | 8 | 1 | 0 | 0 | 2 | 20 | 3 | 1AVB (scored, too few cases: 1 of 20), " in text
    assert "CRBBB (no positives), CLBBB (no positives), SBRAD (scored, too few" in text
    assert "STACH (no negatives), AFIB (scored, too few cases: 3 of 20) |" in text
    assert (run_dir / "sites.png").read_bytes()[:4] == b"\x89PNG"


def test_the_means_interval_combines_the_sites_standard_errors(runs):
    run_dir, _ = runs[0]
    mean = json.loads((run_dir / "results.json").read_text())["means"]["after"]
    half = 1.959964 * math.sqrt(0.03**2 + 0.04**2) / 2
    assert mean["auc"] == pytest.approx(0.85)
    assert mean["auc_ci"] == pytest.approx([0.85 - half, 0.85 + half], abs=1e-5)
    assert mean["f1"] is None  # undefined everywhere, not NaN


def test_seeds_combine_into_mean_and_sample_std_per_column_and_site(runs):
    per_seed = {s: json.loads((d / "results.json").read_text()) for s, (d, _) in enumerate(runs)}
    combined = seeds.combine(per_seed)
    assert combined["columns"]["after"]["auc"] == pytest.approx(
        {"mean": 0.8, "std": math.sqrt(0.005), "n": 2}
    )
    assert combined["sites"]["b"]["after"]["mean"] == pytest.approx(0.75)
    assert combined["columns"]["local"]["auc"] == {"mean": None, "std": None, "n": 0}


def row(site: str, **auc) -> dict:
    return {
        "site": site,
        "candidates": {},
        **{f"{k}_auc": auc.get(k) for k in ("local", "before", "after", "central")},
    }


def test_each_method_has_its_mean_and_worst_site():
    rows = [row("a", before=0.9, after=0.95, local=0.7), row("b", before=0.6, after=0.5)]
    got = report.methods(rows, ExperimentConfig())
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
    table = report.compare(runs)
    assert "| global + ditto | 2 | 0.850 ± 0.071 | 0.650 ± 0.071 | x0, x1 |" in table
