"""`labels: superclasses` end to end on synthetic data: every PTB-XL superclass has positives at
every site, and the federated run scores them."""

import json
from pathlib import Path

import pytest

from common.config import from_dict
from common.labels import LabelSpace
from simulations import run as sim
from simulations.config import CONFIG_DIR, SimulationConfig

SUPERCLASSES = LabelSpace.load("superclasses").labels


def _tiny_superclasses() -> SimulationConfig:
    """The shipped superclasses scenario's data mix, shrunk to run in about a minute."""
    shipped = SimulationConfig.load(CONFIG_DIR / "superclasses.yaml")
    mix = shipped.data.tis.prevalence
    return from_dict(
        SimulationConfig,
        {
            "experiment": {
                "name": "tiny-superclasses",
                "labels": "superclasses",
                "model": {"name": "ribeiro_resnet", "kwargs": {"width": 0.125}},
                "pipeline": {"fs": 50.0, "length_s": 10.0, "lowpass_hz": 20.0},
                "local": {"epochs": 1, "batch_size": 32},
                "federation": {"strategy": "fedavg", "rounds": 2, "round_timeout_s": 300},
                "finetune": {"mode": "full", "train": {"epochs": 1, "batch_size": 16}},
            },
            "data": {
                "tis": {
                    "n_records": 240,
                    "n_hospitals": 2,
                    "size_skew": 0.0,
                    "seed": 3,
                    "prevalence": mix,
                },
                "ptbxl_like": {"n_records": 120, "n_sites": 1, "seed": 4, "prevalence": mix},
            },
            "partition": {"min_size": 10},
            "baselines": {"local_only": False, "centralized": False},
            "workers": 1,
        },
        "tiny-superclasses",
    )


def test_the_shipped_superclasses_scenario_loads_with_its_label_space():
    cfg = SimulationConfig.load(CONFIG_DIR / "superclasses.yaml")
    assert cfg.experiment.labels == "superclasses"
    assert cfg.data.tis.prevalence == cfg.data.ptbxl_like.prevalence
    assert {"IMI", "ASMI", "LMI", "ISC_", "NDT", "LNGQT", "RVH"} <= set(cfg.data.tis.prevalence)


@pytest.mark.e2e
def test_superclasses_run_end_to_end_with_every_superclass_at_every_site(tmp_path: Path):
    run_dir = tmp_path / "run"
    sim.run(_tiny_superclasses(), run_dir, progress=False)
    positives = json.loads((run_dir / "partition" / "partition.json").read_text())
    assert len(positives) == 3
    for site, counts in positives.items():
        assert all(counts[label] > 0 for label in SUPERCLASSES), (site, counts)
    results = json.loads((run_dir / "results.json").read_text())
    for row in results["sites"]:
        assert 0 <= row["before_auc"] <= 1 and 0 <= row["after_auc"] <= 1, row
