"""Getting a trained model out: one-file checkpoints and ONNX."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from common.checkpoint import load_checkpoint, save_checkpoint
from common.config import ConfigError
from common.errors import DataError
from common.export import export_onnx
from common.labels import LabelSpace
from common.models import ModelConfig

SPACE = LabelSpace.from_dict(
    {"name": "toy", "labels": ["AFIB", "NORM"], "codebooks": {"scp": {"AFIB": ["AFIB"]}}}
)
PIPELINE = {"fs": 100.0, "length_s": 10.0}


def trained(name: str = "ribeiro_resnet", norm: str = "batch"):
    cfg = ModelConfig(name=name, kwargs={"width": 0.125}, norm=norm, input_length=200)
    torch.manual_seed(0)
    model = cfg.build(n_classes=len(SPACE))
    model.train()
    with torch.no_grad():  # move BatchNorm statistics away from their defaults
        model(torch.randn(8, 12, 200) * 3 + 1)
    return cfg, model.eval()


def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path):
    cfg, model = trained("inception1d")
    path = save_checkpoint(
        tmp_path / "m.pt",
        model,
        cfg,
        SPACE,
        "abc123",
        PIPELINE,
        round=3,
        metrics={"auc": np.float32(0.9)},
    )
    ckpt = load_checkpoint(path)
    assert ckpt.model_cfg == cfg and ckpt.space == SPACE
    assert ckpt.meta == {"round": 3, "metrics": {"auc": pytest.approx(0.9)}}
    assert ckpt.pipeline_config == PIPELINE
    x = torch.randn(3, 12, 200)
    with torch.no_grad():
        assert torch.equal(ckpt.build_model()(x), model(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind


def test_checkpoint_refuses_data_from_another_pipeline(tmp_path):
    cfg, model = trained()
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "m.pt", model, cfg, SPACE, "abc123", {}))
    ckpt.require_pipeline("abc123")
    with pytest.raises(DataError, match="trained on pipeline abc123, data prepared with def456"):
        ckpt.require_pipeline("def456")


def test_checkpoint_refuses_a_model_that_does_not_match_the_label_space(tmp_path):
    cfg = ModelConfig(kwargs={"width": 0.125}, input_length=200)
    with pytest.raises(ValueError, match="3 outputs"):
        save_checkpoint(tmp_path / "m.pt", cfg.build(n_classes=3), cfg, SPACE, "abc", {})


def test_loading_something_else_is_a_clear_error(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(ConfigError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize(
    "name,norm", [("ribeiro_resnet", "batch"), ("xresnet1d18", "batch"), ("inception1d", "group")]
)
def test_onnx_export_matches_pytorch_for_any_batch_size(tmp_path, name, norm):
    _, model = trained(name, norm)
    path = export_onnx(model, 200, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 12, 200)
    (onnx_out,) = session.run(None, {"ecg": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(onnx_out, expected, atol=1e-4, rtol=0)
    assert session.get_modelmeta().custom_metadata_map["leads"].split(",")[:3] == ["I", "II", "III"]
    assert path.stat().st_mode & 0o077 == 0  # protected like the data it was trained on
