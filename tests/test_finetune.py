import math

import pytest
import torch
from torch.utils.data import TensorDataset

from common.experiment import FinetuneSettings
from common.finetune import adapt_head, finetune, param_groups
from common.labels import LabelSpace
from common.models import build_model
from common.training import TrainConfig

OLD = LabelSpace.from_dict({"name": "old", "labels": ["AFIB", "NORM", "STACH"], "codebooks": {}})
NEW = LabelSpace.from_dict({"name": "new", "labels": ["NORM", "MI", "AFIB"], "codebooks": {}})


def pretrained(name: str = "xresnet1d18"):
    torch.manual_seed(0)
    return build_model(name, n_classes=len(OLD), input_length=128, width=0.125)


def site_data(n: int = 40) -> TensorDataset:
    g = torch.Generator().manual_seed(3)
    y = (torch.rand(n, len(NEW), generator=g) < 0.5).float()
    x = torch.randn(n, 12, 128, generator=g) + y[:, :1, None]
    return TensorDataset(x, y, torch.ones_like(y))


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_head_growth_keeps_known_rows_exactly_and_adds_new_labels():
    model = pretrained()
    old_w, old_b = model.head.weight.detach().clone(), model.head.bias.detach().clone()
    adapt_head(model, OLD, NEW)
    assert model.head.out_features == 3
    for label in ("NORM", "AFIB"):
        assert torch.equal(model.head.weight[NEW.index(label)], old_w[OLD.index(label)])
        assert model.head.bias[NEW.index(label)] == old_b[OLD.index(label)]
    mi = model.head.weight[NEW.index("MI")]
    assert not any(torch.equal(mi, row) for row in old_w)
    assert model(torch.randn(2, 12, 128)).shape == (2, 3)


def test_head_growth_refuses_a_space_that_does_not_match_the_model():
    with pytest.raises(ValueError, match="old label space"):
        adapt_head(
            pretrained(), LabelSpace.from_dict({"name": "x", "labels": ["A"], "codebooks": {}}), NEW
        )


def test_head_mode_leaves_the_body_unchanged_including_batchnorm_statistics():
    model = pretrained()
    body_before = _snapshot(model.blocks)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2)
    settings = FinetuneSettings(mode="head", train=cfg)
    model, result = finetune(model, OLD, NEW, site_data(), site_data(16), settings, progress=False)
    body_after = model.blocks.state_dict()
    assert all(torch.equal(body_before[k], body_after[k]) for k in body_before)
    assert math.isfinite(result.history[-1]["train_loss"])
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again afterwards


def test_last_k_trains_only_the_last_blocks_and_the_head():
    model = pretrained("ribeiro_resnet")
    before = [_snapshot(block) for block in model.blocks]
    settings = FinetuneSettings(mode="last_k", k=2, train=TrainConfig(epochs=1, batch_size=8))
    finetune(model, OLD, NEW, site_data(), None, settings, progress=False)
    changed = [
        any(not torch.equal(before[i][k], v) for k, v in block.state_dict().items())
        for i, block in enumerate(model.blocks)
    ]
    assert changed == [False, False, False, True, True]


def test_discriminative_learning_rates_fall_from_head_to_input():
    model = pretrained()
    groups = param_groups(model, "discriminative", lr=1e-2, lr_decay=2.0)
    lrs = [g["lr"] for g in groups]
    assert lrs == [1e-2 / 2.0**i for i in range(len(model.blocks) + 1)]
    n_grouped = sum(len(g["params"]) for g in groups)
    assert n_grouped == len(list(model.parameters()))


def test_unknown_mode_and_bad_k_are_refused():
    with pytest.raises(ValueError, match="mode"):
        param_groups(pretrained(), "middle", lr=1e-3)
    with pytest.raises(ValueError, match="blocks"):
        param_groups(pretrained(), "last_k", lr=1e-3, k=99)
