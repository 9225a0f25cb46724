"""Personalisation through the real app on Flower's Simulation Engine: FedRep's head stays at
each site, and auto's sites try Ditto and plain fine-tunes and report what they picked."""

import json
from pathlib import Path

import pytest
import torch
from test_simulation import TINY, entries

from common.config import from_dict
from server.rounds import RoundState, checkpoint_path
from simulations import run as sim
from simulations.config import SimulationConfig

pytestmark = pytest.mark.e2e


def small_run(tmp_path_factory, mode: str, rounds: int) -> Path:
    data = json.loads(json.dumps(TINY))
    data["data"]["tis"]["n_records"] = 90
    data["data"]["ptbxl_like"]["n_records"] = 40
    data["partition"]["min_size"] = 5
    data["experiment"]["federation"]["rounds"] = rounds
    data["experiment"]["finetune"]["mode"] = mode
    data["baselines"] = {"local_only": False, "centralized": False}
    run_dir = tmp_path_factory.mktemp(mode) / "run"
    sim.run(from_dict(SimulationConfig, data, mode), run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="module")
def fedrep(tmp_path_factory) -> Path:
    return small_run(tmp_path_factory, "fedrep", rounds=2)  # round 2 starts from the kept head


@pytest.fixture(scope="module")
def auto(tmp_path_factory) -> Path:
    return small_run(tmp_path_factory, "auto", rounds=1)


def site_folders(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "sites").glob("*/*"))


def test_fedrep_sites_train_every_round_and_send_no_head(fedrep):
    trains = [e for e in entries(fedrep) if e["phase"] == "train"]
    assert len(trains) == 2 and all(not e["failed"] and len(e["sites"]) == 3 for e in trains)
    for e in trains:
        assert all(m["bytes-up"] < e["bytes-down"] for m in e["sites"].values())


def test_fedrep_coordinators_head_never_changes(fedrep):
    start = RoundState.load(checkpoint_path(fedrep, 0)).arrays
    for rnd in (1, 2):
        arrays = RoundState.load(checkpoint_path(fedrep, rnd)).arrays
        assert all(torch.equal(arrays[k], start[k]) for k in start if k.startswith("head."))
        assert not torch.equal(arrays["blocks.0.conv.weight"], start["blocks.0.conv.weight"])


def test_fedrep_heads_stay_at_their_sites_and_differ(fedrep):
    kept = [torch.load(f / "personal.pt", weights_only=True) for f in site_folders(fedrep)]
    heads = [k["state"] for k in kept]
    assert len({k["run_id"] for k in kept}) == 1  # the run's own id, at every site
    assert len(heads) == 3 and all(set(h) == {"head.weight", "head.bias"} for h in heads)
    assert not torch.equal(heads[0]["head.weight"], heads[1]["head.weight"])
    assert all((f / "finetuned.pt").exists() for f in site_folders(fedrep))
    assert "global (fedrep rounds)" in (fedrep / "simulation.md").read_text()


def test_auto_sites_try_every_candidate_and_report_one_pick(auto):
    (ft,) = [e for e in entries(auto) if e["phase"] == "finetune"]
    assert len(ft["sites"]) == 3 and not ft["failed"]
    for metrics in ft["sites"].values():
        picks = [metrics[f"{n}-picked"] for n in ("full", "head", "ditto")]
        assert sorted(picks) == [0.0, 0.0, 1.0]
    assert all((f / "personal.pt").exists() for f in site_folders(auto))  # Ditto's model


def test_auto_report_shows_each_method_mean_and_worst_site(auto):
    text = (auto / "simulation.md").read_text()
    assert "What each site picked" in text and "**worst site**" in text
    methods = json.loads((auto / "results.json").read_text())["methods"]
    assert {"global", "global + auto", "global + full", "global + head", "global + ditto"} <= set(
        methods
    )
    for m in methods.values():
        assert m["worst"] == min(m["sites"].values()) <= m["mean"]
