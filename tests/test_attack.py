"""Simulated bad sites: what each attack sends, that a hospital can never be one, and the grid."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, RecordDict
from test_simulation import TINY

from client import node
from client.task import clip_update
from common.cache import SiteCache
from common.config import ConfigError
from common.labels import LabelSpace
from common.site import SiteData
from simulations.attack import AttackExperiment, run_grid
from simulations.attack_app import Attack, FlippedSite, active_attack, open_site, tamper
from simulations.config import CONFIG_DIR, SimulationConfig


def _records():
    g = {"w": np.array([1.0, 1.0, 1.0], np.float32), "n": np.array(7, np.int64)}
    w = {"w": np.array([1.5, 1.0, 0.0], np.float32), "n": np.array(9, np.int64)}
    wrap = lambda d: ArrayRecord({k: Array(v) for k, v in d.items()})  # noqa: E731
    return wrap(g), wrap(w)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("scale", [1 + 10 * 0.5, 1.0, 1 - 10 * 1.0]), ("sign-flip", [1 - 5.0, 1.0, 1 + 10.0])],
)
def test_scaled_and_sign_flipped_updates(kind, expected):
    sent, honest = _records()
    out = tamper(sent, honest, Attack(kind, (0,), 10.0), rnd=1)
    np.testing.assert_allclose(out["w"].numpy(), expected)
    assert out["n"].numpy() == 9 and out["w"].dtype == "float32"  # integer buffers untouched


def test_noise_update_is_scaled_to_the_honest_update():
    sent, honest = _records()
    u = honest["w"].numpy() - sent["w"].numpy()
    rms = np.sqrt(np.mean(u**2))
    noisy = [
        tamper(sent, honest, Attack("noise", (0,), 10.0), rnd=r)["w"].numpy() for r in range(400)
    ]
    spread = np.std(np.stack(noisy) - sent["w"].numpy())
    assert spread == pytest.approx(10 * rms, rel=0.1)


def _context(tmp_path: Path, **node) -> Context:
    return Context(1, 5, node, RecordDict(), {"run-dir": str(tmp_path)})


def test_only_a_listed_virtual_site_attacks(tmp_path):
    assert active_attack(_context(tmp_path, **{"partition-id": 0})) is None  # no attack.json
    Attack("label-flip", (0,), 1.0).write(tmp_path)
    assert active_attack(_context(tmp_path, **{"partition-id": 0})).kind == "label-flip"
    assert active_attack(_context(tmp_path, **{"partition-id": 1})) is None


def _site() -> SiteData:
    """Four records in a real (in-memory) cache: NORM, AFIB, none annotated, CRBBB."""
    index = pd.DataFrame(
        {
            "record_id": ["a", "b", "c", "d"],
            "codes": [("NORM",), ("AFIB",), (), ("CRBBB",)],
            "coding": ["scp"] * 4,
        }
    )
    cache = SiteCache(Path("mem"), {}, index, np.zeros((4, 12, 10), np.float32))
    return SiteData(
        "s0", cache, {"train": np.arange(3), "val": np.array([3]), "test": np.array([3])}
    )


def test_a_label_flipping_site_lies_about_its_training_labels_only(tmp_path, monkeypatch):
    space = LabelSpace.load("seed6")
    honest = _site()
    monkeypatch.setattr(node, "open_site", lambda context, experiment: honest)
    Attack("label-flip", (0,), 1.0).write(tmp_path)
    liar = open_site(_context(tmp_path, **{"partition-id": 0}), None)
    assert isinstance(liar, FlippedSite)
    truth, lie = honest.dataset("train", space), liar.dataset("train", space)
    assert torch.equal(lie.y, truth.mask * (1 - truth.y)) and not torch.equal(lie.y, truth.y)
    assert torch.equal(liar.dataset("val", space).y, honest.dataset("val", space).y)
    assert open_site(_context(tmp_path, **{"partition-id": 1}), None) is honest


@pytest.mark.e2e  # a fresh interpreter: a real process
def test_the_production_client_app_carries_no_attack_code():
    """A hospital installs and approves client.app:app: it imports nothing from simulations/."""
    code = (
        "import sys, client.app; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'simulations'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_hospital_never_attacks_whatever_its_node_config_or_the_run_config_says(tmp_path):
    Attack("sign-flip", (0,), 4.0).write(tmp_path)
    hospital = {"data-dir": "/data/ecg", "site": "H1", "partition-id": 0}
    assert active_attack(_context(tmp_path, **hospital)) is None


def test_client_side_update_clipping_bounds_the_step_and_keeps_its_direction():
    old = {"w": torch.zeros(4), "n": torch.tensor(3)}
    new = {"w": torch.tensor([3.0, 4.0, 0.0, 0.0]), "n": torch.tensor(5)}
    clipped = clip_update(new, old, 1.0)
    torch.testing.assert_close(clipped["w"], torch.tensor([0.6, 0.8, 0.0, 0.0]))
    assert clipped["n"].item() == 5
    assert clip_update(new, old, 10.0)["w"].equal(new["w"])  # inside the ball: unchanged


def test_every_shipped_attack_and_dp_scenario_loads():
    for path in sorted(CONFIG_DIR.glob("attack_*.yaml")):
        if path.name == "attack_base.yaml":
            continue
        experiment = AttackExperiment.load(path)
        attack = experiment.attacks[0]
        krum = experiment.run_config("krum", attack).experiment.federation
        assert krum.strategy == "krum" and krum.krum_malicious == len(attack.sites)
    for path in sorted(CONFIG_DIR.glob("dp_*.yaml")):
        cfg = SimulationConfig.load(path)
        assert cfg.experiment.model.norm == "group"
    assert SimulationConfig.load(CONFIG_DIR / "dp_eps3.yaml").experiment.federation.privacy.enabled
    assert SimulationConfig.load(
        CONFIG_DIR / "dp_sgd_eps3.yaml"
    ).experiment.federation.dp_sgd.enabled


def test_attack_yaml_takes_one_attack_or_a_list_of_distinct_kinds(tmp_path):
    path = tmp_path / "a.yaml"
    base = {"base": str(CONFIG_DIR / "attack_base.yaml")}
    path.write_text(json.dumps({**base, "attacks": [{"kind": "noise"}, {"kind": "scale"}]}))
    assert [a.kind for a in AttackExperiment.load(path).attacks] == ["noise", "scale"]
    for bad, message in (
        ({"attack": {"kind": "noise"}, "attacks": [{"kind": "scale"}]}, "not both"),
        ({"attacks": [{"kind": "noise"}, {"kind": "noise", "factor": 2}]}, "each kind once"),
        ({"attacks": [{"kind": "melt"}]}, "attacks\\[0\\]"),
    ):
        path.write_text(json.dumps({**base, **bad}))
        with pytest.raises(ConfigError, match=message):
            AttackExperiment.load(path)


@pytest.mark.slow
@pytest.mark.e2e
def test_attack_grid_end_to_end(tmp_path):
    """Three tiny runs (FedMedian clean, with a sign-flipping and with a label-flipping site)."""
    data = json.loads(json.dumps(TINY))
    data["experiment"]["model"]["norm"] = "group"
    data["baselines"] = {"local_only": False, "centralized": False}
    data["attacks"] = [{"kind": "sign-flip", "sites": [0], "factor": 4.0}, {"kind": "label-flip"}]
    data["strategies"] = ["fedmedian"]
    path = tmp_path / "attack.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    table = run_grid(AttackExperiment.load(path), tmp_path / "grid", progress=False)
    rows = json.loads((tmp_path / "grid" / "attack.json").read_text())["rows"]
    assert [(r["strategy"], r["attack"]) for r in rows] == [
        ("fedmedian", "sign-flip x4"),
        ("fedmedian", "label-flip"),
    ]
    assert rows[0]["clean_global"] == rows[1]["clean_global"]  # one clean run serves both
    assert all(0 <= r[k] <= 1 for r in rows for k in ("clean_global", "attacked_global"))
    for kind in ("sign-flip", "label-flip"):
        assert (tmp_path / "grid" / f"fedmedian-{kind}" / "attack.json").exists()
    assert not (tmp_path / "grid" / "fedmedian-clean" / "attack.json").exists()
    assert "label-flip" in table.read_text()
