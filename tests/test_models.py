import pytest
import torch
from torch import nn

from common.config import ConfigError, from_dict
from common.models import MODELS, ModelConfig, build_model, describe

TINY = {"width": 0.125}


@pytest.mark.parametrize("norm", ["batch", "group"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_gives_one_logit_per_label_at_100hz_and_500hz(name, norm):
    for length in (1000, 5000):
        model = build_model(name, n_classes=7, input_length=length, norm=norm, **TINY)
        out = model(torch.randn(2, 12, length))
        assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_exposes_its_head_and_body_blocks(name):
    model = build_model(name, n_classes=5, input_length=500, **TINY)
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 5
    assert isinstance(model.blocks, nn.ModuleList) and len(model.blocks) >= 2
    in_parts = sum(
        p.numel() for part in (model.blocks, model.neck, model.head) for p in part.parameters()
    )
    assert in_parts == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_group_norm_models_have_no_batchnorm(name):
    model = build_model(name, n_classes=3, input_length=500, norm="group", **TINY)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())


def test_ribeiro_resnet_has_the_published_6_8m_parameters_at_4096_samples():
    model = build_model("ribeiro_resnet", n_classes=6, input_length=4096)
    n_params, flops = describe(model, 4096)
    assert 6.7e6 < n_params < 6.9e6
    assert flops > 1e9


def test_ribeiro_resnet_works_for_any_input_length():
    for length in (997, 998, 999, 1000, 4096, 5000):
        model = build_model("ribeiro_resnet", n_classes=2, input_length=length, **TINY)
        assert model(torch.randn(2, 12, length)).shape == (2, 2)


def test_ribeiro_resnet_refuses_an_even_kernel():
    with pytest.raises(ValueError, match="odd"):
        build_model("ribeiro_resnet", n_classes=2, input_length=1000, kernel_size=16)


def test_width_multiplier_shrinks_the_model_and_its_flops():
    full = describe(build_model("inception1d", n_classes=6, input_length=1000), 1000)
    small = describe(build_model("inception1d", n_classes=6, input_length=1000, width=0.25), 1000)
    assert small[0] < full[0] / 5 and small[1] < full[1] / 5


def test_describe_leaves_training_mode_and_batchnorm_statistics_alone():
    model = build_model("xresnet1d18", n_classes=3, input_length=300, **TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    describe(model, 300)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unknown_model_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="ribeiro_resnet"):
        build_model("resnet9000", n_classes=2, input_length=1000)


def test_model_config_builds_and_rejects_bad_values():
    cfg = from_dict(
        ModelConfig,
        {"name": "inception1d", "kwargs": {"width": 0.25}, "norm": "group", "input_length": 250},
    )
    model = cfg.build(n_classes=4)
    assert model.input_length == 250 and model.head.out_features == 4
    with pytest.raises(ConfigError, match="norm"):
        from_dict(ModelConfig, {"norm": "layer"})
    with pytest.raises(ConfigError, match="name"):
        from_dict(ModelConfig, {"name": "nope"})


@pytest.mark.parametrize("width", [0.125, 0.25, 1.0])
def test_group_norm_keeps_at_least_eight_channels_per_group(width):
    """One channel per group (instance norm) erases filter amplitudes: such models barely learn."""
    model = build_model("ribeiro_resnet", n_classes=2, input_length=256, norm="group", width=width)
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            assert m.num_channels // m.num_groups >= min(8, m.num_channels)
            assert m.num_groups <= 32
