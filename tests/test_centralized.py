"""The paper's centralized experiment on tiny synthetic data: three arms, several seeds, a table."""

import json
from pathlib import Path

import pytest
import yaml

from common.config import ConfigError
from simulations import cli
from simulations.centralized import ARMS, CentralizedConfig, summarise

TINY = {
    "experiment": {
        "name": "tiny",
        "model": {"name": "ribeiro_resnet", "kwargs": {"width": 0.125}},
        "pipeline": {"fs": 50.0, "length_s": 10.0, "lowpass_hz": 20.0},
        "local": {"epochs": 2, "batch_size": 32, "early_stopping_patience": 1},
        "finetune": {"mode": "full", "train": {"epochs": 1, "batch_size": 16}},
    },
    "data": {
        "tis": {"n_records": 80, "n_hospitals": 2, "size_skew": 0.0, "seed": 3},
        "ptbxl_like": {"n_records": 60, "n_sites": 1, "seed": 4},
    },
    "seeds": [0, 1, 2],
    "workers": 1,
}


def write_config(path, **changes):
    data = json.loads(json.dumps(TINY))
    data.update(changes)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("centralized")
    config = write_config(root / "tiny.yaml")
    out = root / "run"
    argv = ["centralized", "--config", str(config), "--out", str(out), "--seeds", "0", "1"]
    assert cli.main([*argv, "--quiet"]) == 0
    return out


@pytest.mark.e2e  # the whole experiment, tiny
def test_every_arm_is_scored_for_every_seed(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    assert results["seeds"] == [0, 1]  # --seeds replaced the config's three
    assert set(results["per_seed"]) == {"0", "1"}
    for arms in results["per_seed"].values():
        assert set(arms) == set(ARMS)
        for arm in arms.values():
            assert arm["metrics"]["n_samples"] == results["data"]["target"]["test"]
            assert arm["training"]["epochs"] >= 1
    macro = results["summary"]["finetuned"]["macro_auc"]
    assert macro["n"] == 2 and macro["std"] is not None
    assert set(results["summary"]["target_only"]) >= {"micro_auc", "macro_f1", "auc_AFIB"}


@pytest.mark.e2e  # the whole experiment, tiny
def test_report_is_a_markdown_table_with_mean_and_spread(run_dir):
    report = (run_dir / "results.md").read_text()
    for title in ARMS.values():
        assert f"| {title} |" in report
    assert "| arm | macro AUC | micro AUC | macro F1 |" in report
    assert "±" in report and "Machine:" in report and "Budget:" in report
    assert (run_dir / "config.yaml").exists()


def test_a_label_unscorable_in_one_seed_is_averaged_over_the_others():
    def arm(auc):
        metrics = {"macro_auc": auc, "micro_auc": 0.5, "macro_f1": None}
        return {"metrics": {**metrics, "per_class": {"AFIB": {"auc": auc}}}}

    per_seed = {s: {a: arm(auc) for a in ARMS} for s, auc in ((0, 0.8), (1, None), (2, 0.6))}
    stats = summarise(per_seed, ("AFIB",))["pretrained"]
    assert stats["auc_AFIB"]["n"] == 2
    assert stats["auc_AFIB"]["mean"] == pytest.approx(0.7)
    assert stats["auc_AFIB"]["std"] == pytest.approx(0.1414, abs=1e-4)  # sample std, n - 1
    assert stats["macro_f1"] == {"mean": None, "std": None, "n": 0}


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"seeds": [1, 1]}, "without repeats"),
        ({"experiment": {"finetune": {"labels": "superclasses"}}}, "one label space"),
        ({"epochs": 3}, "unknown key"),
        ({"data": {"tis": None}}, "data.tis: the pretraining network is needed"),
    ],
)
def test_a_bad_config_is_refused_with_its_key(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        CentralizedConfig.load(write_config(tmp_path / "bad.yaml", **changes))


def test_the_superclasses_variant_is_the_papers_experiment_on_other_labels():
    """paper_superclasses.yaml names paper.yaml as its base: same arms, budgets and data sizes."""
    configs = Path(__file__).resolve().parents[1] / "simulations" / "configs"
    paper = CentralizedConfig.load(configs / "paper.yaml")
    variant = CentralizedConfig.load(configs / "paper_superclasses.yaml")
    assert variant.experiment.labels == "superclasses" and paper.experiment.labels == "seed6"
    assert variant.experiment.pipeline.normalise == "none"
    assert variant.experiment.local == paper.experiment.local
    assert variant.experiment.finetune == paper.experiment.finetune
    assert variant.data.tis.n_records == paper.data.tis.n_records and variant.seeds == paper.seeds
    assert variant.data.tis.prevalence["IMI"] == 0.13
