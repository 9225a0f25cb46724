"""Two runs of one configuration and seed end with the same global model, bit for bit."""

import pytest
import torch
from test_simulation import tiny_config

from common.checkpoint import load_checkpoint
from server import runs
from simulations import run as sim


@pytest.mark.e2e
def test_the_same_seed_gives_the_same_global_model_bit_for_bit(tmp_path):
    cfg = tiny_config()
    cfg.baselines.local_only = cfg.baselines.centralized = False
    models = []
    for name in ("first", "second"):
        sim.run(cfg, tmp_path / name, progress=False)
        models.append(load_checkpoint(tmp_path / name / runs.GLOBAL_MODEL).state_dict)
    first, second = models
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f"arrays that differ between the runs: {different[:5]}"
