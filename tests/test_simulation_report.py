"""The simulation report from what sites reply: intervals per site and of the mean, support, the
labels a site could not score; several seeds combined; each method's mean and worst site, and
the comparison over runs."""

import csv
import json
import math
from types import SimpleNamespace

import pytest

from common import protocol
from common.experiment import ExperimentConfig, FinetuneSettings
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


def _run(tmp_path, aucs, experiment: ExperimentConfig | None = None):
    experiment = experiment or ExperimentConfig()
    summary = {
        "experiment": experiment.to_dict(),
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
    return run_dir, report.write(run_dir, experiment, sites, {}, {}, {"federation_s": 1.0})


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


@pytest.mark.parametrize("mode", ["full", "ditto", "fedrep", "fedbabu", "fedbn"])
def test_the_global_column_of_rounds_that_keep_parts_at_the_sites_says_how_it_was_scored(
    tmp_path, mode
):
    experiment = ExperimentConfig(finetune=FinetuneSettings(mode=mode))
    text = _run(tmp_path, (0.9, 0.8), experiment)[1].read_text()
    own_rounds = mode in ("fedrep", "fedbabu", "fedbn")
    assert (f"| global ({mode} rounds) AUC" in text) == own_rounds
    assert ("| global AUC" in text) != own_rounds
    keeps_parts = mode in ("fedrep", "fedbn")  # FedBABU's frozen head is the coordinator's
    assert (f"with the parts {mode} keeps at the site" in text) == keeps_parts


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


def _many(tmp_path, n_sites: int, tuned: int):
    """A run of ``n_sites`` of which the first ``tuned`` fine-tuned (a sample), site i scoring
    0.5 + i / (2 tuned) after fine-tuning: the best is the last of them."""
    names = [f"tis-{i:04d}" for i in range(n_sites)]
    finetune = {
        n: _reply(0.5 + i / (2 * tuned), 0.03, [3, 1, 2, 1, 3, 2, 4])
        for i, n in enumerate(names[:tuned])
    }
    summary = {
        "experiment": ExperimentConfig().to_dict(),
        "rounds": [{"round": 1, "sites": names[: n_sites // 10]}],
        "finetune": finetune,
        "finetune_sampled": {"sites": tuned, "of": n_sites, "fraction": tuned / n_sites},
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    counts = {"train": 16, "val": 2, "test": 2}
    sites = [SimpleNamespace(name=n, counts=lambda: counts) for n in names]
    return report.write(tmp_path, ExperimentConfig(), sites, {}, {}, {"federation_s": 1.0})


def test_a_report_of_1000_sites_summarises_them_and_keeps_every_row_in_a_table_file(tmp_path):
    from PIL import Image

    text = _many(tmp_path, 1000, 100).read_text()
    assert "a seeded sample of 100 of 1000 sites" in text
    site_rows = [line for line in text.splitlines() if line.startswith("| tis-")]
    assert len(site_rows) == 20  # the top and bottom 10, not 1,000 rows
    assert site_rows[0].startswith("| tis-0099 |") and site_rows[10].startswith("| tis-0000 |")
    stats = next(line for line in text.splitlines() if line.startswith("| global + full |"))
    cells = [float(c) for c in stats.strip("|").split("|")[1:]]
    # sites scored, mean, min, Q1, median, Q3, max of 0.5, 0.505, ..., 0.995
    assert cells == pytest.approx([100, 0.7475, 0.5, 0.62375, 0.7475, 0.87125, 0.995], abs=1e-3)
    with open(tmp_path / "sites.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 1000 and table[99]["after_auc"] == "0.995"
    assert table[500]["after_auc"] == ""  # not in the fine-tuning sample: no score
    assert max(Image.open(tmp_path / "sites.png").size) < 2000


def test_a_report_of_a_few_sites_still_lists_each(tmp_path):
    text = _many(tmp_path, 20, 20).read_text()
    assert sum(line.startswith("| tis-") for line in text.splitlines()) == 2 * 20  # + support
    assert "seeded sample" not in text


def test_a_sampled_run_notes_only_the_rounds_a_site_was_asked_to_train_in_and_failed(tmp_path):
    experiment = ExperimentConfig()
    experiment.federation.fraction_train = 0.5
    summary = {
        "experiment": experiment.to_dict(),
        "rounds": [
            {"round": 1, "sites": ["a"], "failed_sites": []},  # b not sampled: nothing to say
            {"round": 2, "sites": ["b"], "failed_sites": ["a"]},  # a asked, no update
        ],
        "finetune": {
            "a": _reply(0.9, 0.03, [5, 0, 2, 1, 3, 2, 4]),
            "b": _reply(0.8, 0.04, [8, 1, 0, 0, 2, 20, 3]),
        },
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    sites = [
        SimpleNamespace(name=n, counts=lambda: {"train": 80, "val": 10, "test": 20}) for n in "ab"
    ]
    text = report.write(tmp_path, experiment, sites, {}, {}, {"federation_s": 1.0}).read_text()
    assert "| a (not in the federation in round(s) 2) |" in text
    assert "| b |" in text and "b (not in the federation" not in text
