"""The federated app end to end on Flower's Simulation Engine, with tiny data and a tiny model."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from flwr.app import ArrayRecord

from client.task import train_on_site
from common import cpu
from common.checkpoint import load_checkpoint
from common.config import from_dict
from common.experiment import ExperimentConfig
from common.protocol import Job
from common.site import SiteData
from server import runs
from server.rounds import RoundState, checkpoint_path
from simulations import baselines, cli, engine
from simulations import run as sim
from simulations.config import SimulationConfig

TINY = {
    "experiment": {
        "name": "tiny",
        "model": {"name": "ribeiro_resnet", "kwargs": {"width": 0.125}},
        "pipeline": {"fs": 50.0, "length_s": 10.0, "lowpass_hz": 20.0},
        "local": {"epochs": 1, "batch_size": 32},
        "federation": {"strategy": "fedavg", "rounds": 3, "round_timeout_s": 300},
        "finetune": {"mode": "full", "train": {"epochs": 1, "batch_size": 16}},
    },
    "data": {
        "tis": {"n_records": 140, "n_hospitals": 2, "size_skew": 0.0, "seed": 3},
        "ptbxl_like": {"n_records": 70, "n_sites": 1, "seed": 4},
    },
    "partition": {"min_size": 10, "annotated": {"ptbxl": ["NORM", "AFIB", "SBRAD", "STACH"]}},
    "baselines": {"local_only": True, "centralized": True},
    "workers": 1,
}


def tiny_config(**federation) -> SimulationConfig:
    data = json.loads(json.dumps(TINY))
    data["experiment"]["federation"].update(federation)
    return from_dict(SimulationConfig, data, "tiny")


def entries(run_dir: Path) -> list[dict]:
    return runs.entries(run_dir)  # metrics.jsonl with site_metrics.jsonl


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sim")


@pytest.fixture(scope="module")
def finished(workdir) -> Path:
    run_dir = workdir / "full"
    sim.run(tiny_config(), run_dir, progress=False)
    return run_dir


@pytest.mark.e2e
def test_every_site_trains_each_round_and_fine_tunes(finished):
    sites = json.loads((finished / "partition" / "sites.json").read_text())["sites"]
    names = {s["name"] for s in sites}
    assert len(names) == 3
    log = entries(finished)
    for rnd in (1, 2, 3):
        for phase in ("train", "evaluate"):
            (entry,) = [e for e in log if e["round"] == rnd and e["phase"] == phase]
            assert set(entry["sites"]) == names and entry["failed"] == []
    (ft,) = [e for e in log if e["phase"] == "finetune"]
    assert set(ft["sites"]) == names
    for metrics in ft["sites"].values():
        assert 0 <= metrics["after-macro-auc"] <= 1


@pytest.mark.e2e
def test_masked_labels_stay_out_of_a_site_that_does_not_annotate_them(finished):
    (train,) = [e for e in entries(finished) if e["round"] == 1 and e["phase"] == "train"]
    ptbxl = train["sites"]["ptbxl-0"]
    tis = next(m for s, m in train["sites"].items() if s.startswith("tis"))
    labels = ["NORM", "1AVB", "CRBBB", "CLBBB", "SBRAD", "STACH", "AFIB"]
    masked = [labels.index(x) for x in ("1AVB", "CRBBB", "CLBBB")]
    assert all(ptbxl["annotated"][i] == 0 and ptbxl["positives"][i] == 0 for i in masked)
    assert all(tis["annotated"][i] > 0 for i in masked)


@pytest.mark.e2e
def test_fine_tuning_replies_carry_metrics_only(finished):
    log = entries(finished)
    (ft,) = [e for e in log if e["phase"] == "finetune"]
    train = [e for e in log if e["phase"] == "train"]
    assert all("bytes-up" in m for e in train for m in e["sites"].values())
    assert not any("bytes-up" in m for m in ft["sites"].values())  # no arrays came back


@pytest.mark.e2e
def test_fine_tuned_models_stay_at_their_site(finished):
    for site in ("tis-H01", "tis-H02", "ptbxl-0"):
        (found,) = (finished / "sites" / site).glob("*/finetuned.pt")
        assert load_checkpoint(found).meta["site"] == site
    summary = json.loads((finished / "summary.json").read_text())
    assert set(summary["finetune"]) == {p.name for p in (finished / "sites").iterdir()}


@pytest.mark.e2e
def test_report_has_every_site_and_baseline(finished):
    text = (finished / "simulation.md").read_text()
    for name in ("tis-H01", "ptbxl-0", "local-only", "centralized + fine-tune", "global"):
        assert name in text
    results = json.loads((finished / "results.json").read_text())
    assert all(r["local_auc"] is not None and r["after_auc"] is not None for r in results["sites"])
    assert (finished / "rounds.png").exists() and (
        finished / "partition" / "partition.png"
    ).exists()


@pytest.mark.e2e
def test_the_server_apps_own_log_lines_reach_the_streamed_log(finished):
    streamed = (finished / "flower.log").read_text()
    assert "round 1/3: training" in streamed and "round 3/3 done" in streamed


@pytest.mark.e2e
def test_round_one_is_the_weighted_mean_of_the_sites_updates(finished, tmp_path):
    """Redo each site's local training from round 0 and average with numpy."""
    experiment = ExperimentConfig.load(finished / "experiment.yaml")
    start = RoundState.load(checkpoint_path(finished, 0))
    record = Job.for_run(experiment, finished.name).to_record()
    record["server-round"] = 1
    job = Job.from_record(record)
    manifest = finished / "partition" / "sites.json"
    updates, weights = [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the sites trained: a reduction's order follows the threads
    try:
        for i in range(3):
            site = SiteData.from_manifest(manifest, i, experiment.pipeline)
            state, metrics = train_on_site(job, site, ArrayRecord(start.arrays), tmp_path)
            updates.append({k: v.numpy().astype(np.float64) for k, v in state.items()})
            weights.append(metrics["num-examples"])
    finally:
        torch.set_num_threads(threads)
    w = np.array(weights, float) / sum(weights)
    after = RoundState.load(checkpoint_path(finished, 1)).arrays
    for key, value in after.items():
        if value.dtype == torch.int64:  # BatchNorm's batch counter
            continue
        expected = sum(wi * u[key] for wi, u in zip(w, updates, strict=True))
        np.testing.assert_allclose(value.numpy(), expected, rtol=1e-3, atol=1e-5, err_msg=key)


class Interrupted(Exception):
    pass


def differing_arrays(first: Path, second: Path) -> list[str]:
    """The keys whose arrays differ between two checkpoints (they must hold the same keys)."""
    a, b = load_checkpoint(first).state_dict, load_checkpoint(second).state_dict
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.e2e
def test_stopped_run_resumes_from_last_round_and_matches(finished, workdir, monkeypatch):
    """Stopped after round 1 and resumed, the run ends with the very global model of the run
    that was never stopped: resuming loses nothing, and a run is reproducible (replies are
    summed in site order, not arrival order: server/rounds.exchange)."""
    run_dir = workdir / "stopped"
    real = engine.flwr_run

    def stop_after_round_one(*args):
        *rest, progress = args

        def poll():
            progress()
            if checkpoint_path(run_dir, 1).exists():
                raise Interrupted

        return real(*rest, poll)

    monkeypatch.setattr(engine, "flwr_run", stop_after_round_one)
    with pytest.raises(Interrupted):
        sim.run(tiny_config(), run_dir, progress=False)
    assert not (run_dir / "summary.json").exists()  # stopped before the end
    monkeypatch.setattr(engine, "flwr_run", real)
    sim.run(tiny_config(), run_dir, resume=True, progress=False)
    log = entries(run_dir)
    assert sorted(e["round"] for e in log if e["phase"] == "train") == [1, 2, 3]
    different = differing_arrays(finished / runs.GLOBAL_MODEL, run_dir / runs.GLOBAL_MODEL)
    assert not different, f"arrays that differ from the run never stopped: {different[:5]}"
    shutil.rmtree(run_dir / "flwr", ignore_errors=True)


@pytest.mark.e2e
def test_a_natural_partition_that_merges_sites_federates_every_site(tmp_path):
    """Three hospitals merged down to two: the merged site has a plain name (tis-H01_H02) that
    the egress guard accepts, so every site trains every round and fine-tunes."""
    data = json.loads(json.dumps(TINY))
    data["data"]["tis"].update(n_records=90, n_hospitals=3)
    data["data"]["ptbxl_like"]["n_records"] = 40
    data["partition"].update(tis_sites=2, min_size=5)
    data["experiment"]["federation"]["rounds"] = 1
    data["baselines"] = {"local_only": False, "centralized": False}
    run_dir = tmp_path / "merged"
    sim.run(from_dict(SimulationConfig, data, "merged"), run_dir, progress=False)
    names = {
        s["name"] for s in json.loads((run_dir / "partition" / "sites.json").read_text())["sites"]
    }
    assert len(names) == 3 and any(n.startswith("tis-") and "_" in n for n in names)
    (train,) = [e for e in entries(run_dir) if e["phase"] == "train"]
    (ft,) = [e for e in entries(run_dir) if e["phase"] == "finetune"]
    assert set(train["sites"]) == set(ft["sites"]) == names
    assert train["failed"] == [] and ft["failed"] == []


@pytest.mark.e2e
def test_baselines_in_worker_processes_equal_the_ones_run_here(finished, monkeypatch):
    """The baselines as one-thread worker processes (pooled pretraining, local-only training and
    fine-tuning of the pooled model per site) give what one thread in this process gives."""
    experiment = ExperimentConfig.load(finished / "experiment.yaml")
    manifest = finished / "partition" / "sites.json"
    sites = [SiteData.from_manifest(manifest, i, experiment.pipeline) for i in range(2)]

    def both() -> list[dict]:
        names = [site.name for site in sites]
        done = baselines.run_baselines(experiment, manifest, names, {"local", "central"}, False)
        return [done["local"], done["central"]]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the pooled model trains here in both
    try:
        parallel = both()
        monkeypatch.setattr(cpu, "available_cores", lambda: 1)
        here = both()
    finally:
        torch.set_num_threads(threads)
    for ours, theirs in zip(parallel, here, strict=True):
        assert list(ours) == [s.name for s in sites]
        for name, metrics in theirs.items():
            same = json.dumps(ours[name].per_class, sort_keys=True)  # NaN where undefined
            assert same == json.dumps(metrics.per_class, sort_keys=True)
            assert ours[name].macro_auc == metrics.macro_auc


@pytest.mark.e2e
def test_seeds_run_the_whole_comparison_per_seed_and_combine_them(tmp_path):
    data = json.loads(json.dumps(TINY))
    data["experiment"]["federation"]["rounds"] = 1
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "seeds"
    argv = ["run", "--config", str(config), "--seeds", "0", "1", "--out", str(out), "--quiet"]
    assert cli.main(argv) == 0
    for seed in (0, 1):
        run_dir = out / f"seed-{seed}"
        assert (
            yaml.safe_load((run_dir / "config.yaml").read_text())["experiment"]["local"]["seed"]
            == seed
        )
        rows = json.loads((run_dir / "results.json").read_text())["sites"]
        for row in rows:  # every column has its interval, computed where its data is
            for key in ("local", "before", "after", "central"):
                low, high = row[f"{key}_auc_ci"]
                assert 0 <= low <= high <= 1 and row[f"{key}_auc_se"] >= 0, (seed, row, key)
        assert (run_dir / "sites.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list(out.glob(".data/*"))) == 2  # generated once: one TIS-like, one PTB-XL-like
    combined = json.loads((out / "results.json").read_text())
    assert combined["seeds"] == [0, 1]
    assert combined["columns"]["after"]["auc"]["n"] == 2
    text = (out / "simulation.md").read_text()
    assert "mean macro AUC" in text and " ± " in text and "seed-1/sites.png" in text
