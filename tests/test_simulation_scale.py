"""A simulation of many small sites, sampled: each round trains its fraction of the sites, a
sample fine-tunes, the files stay one short line per phase and the reports summarise."""

import csv
import json
from dataclasses import replace

import pytest
from test_simulation import tiny_config

from server import runs
from simulations import run as sim

SITES = 60


@pytest.mark.e2e
def test_a_sampled_run_of_60_sites_trains_and_tunes_its_fraction_and_summarises(
    tmp_path, monkeypatch
):
    """12 sites a round (fraction_train 0.2), sent 8 at a time (server/inflight.py) as a
    1,000-site run sends them."""
    monkeypatch.setattr(sim, "in_flight", lambda cfg, n_sites: 8)
    cfg = tiny_config(rounds=2, fraction_train=0.2, fraction_evaluate=0.1)
    cfg.experiment.finetune.fraction = 0.1
    cfg.data.ptbxl_like = None
    cfg.data.tis = replace(cfg.data.tis, n_records=600)  # 10 a site: every one has a train split
    cfg.partition.scheme, cfg.partition.tis_sites, cfg.partition.min_size = "iid", SITES, 1
    cfg.baselines.local_only = cfg.baselines.centralized = False
    run_dir = tmp_path / "run"
    simulation_md = sim.run(cfg, run_dir, progress=False).read_text()
    assert "max-in-flight = 8" in (run_dir / runs.RUN_CONFIG).read_text()
    entries = runs.entries(run_dir)
    trained = [e for e in entries if e["phase"] == "train"]
    assert [len(e["sites"]) for e in trained] == [12, 12]  # more than the 8 sent at once
    (tuned,) = [e for e in entries if e["phase"] == "finetune"]
    assert len(tuned["sites"]) == 6 and tuned["sampled"] == {"sites": 6, "of": 60, "fraction": 0.1}
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["n_sites"] for line in lines] == [12, 6, 12, 6, 6]  # train, evaluate, ..., tune
    assert all("sites" not in line for line in lines)  # in site_metrics.jsonl, one per line
    assert len((run_dir / "site_metrics.jsonl").read_text().splitlines()) == 42
    kept = sorted(p.name for p in (run_dir / "sites").iterdir())
    assert kept == sorted(tuned["sites"])  # only the sites that keep a model have a folder
    assert "a seeded sample of 6 of 60 sites" in simulation_md
    with open(run_dir / "sites.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == SITES
    scored = sum(bool(row["after_auc"]) for row in table)  # a test split of 1-2 records: few
    shown = sum(line.startswith("| tis-") for line in simulation_md.splitlines())
    assert shown == 2 * min(10, scored)  # the top and the bottom sites, not a row per site


def test_messages_in_flight_keep_the_engines_sweep_short_and_its_workers_busy():
    cfg = tiny_config(rounds=1)
    cfg.cpus_per_site = 1.0
    cores = int(sim.cpu.available_cores())
    assert sim.in_flight(cfg, 1000) == max(8, 4 * cores, 10)  # 1,000 x 10 pairs a sweep
    assert sim.in_flight(cfg, 64) == max(4 * cores, 156)  # every message of a round
    cfg.ray_address = "127.0.0.1:6379"
    assert sim.in_flight(cfg, 1000) == 0  # a cluster's size is unknown here
