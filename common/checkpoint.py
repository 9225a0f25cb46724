"""One-file checkpoints: weights plus everything needed to use them correctly elsewhere.

A checkpoint names its model config, label space and preprocessing pipeline, so a hospital can
rebuild the network and is stopped before feeding it data prepared another way.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from common.config import ConfigError, from_dict
from common.errors import DataError
from common.labels import LabelSpace
from common.models import ECGClassifier, ModelConfig
from common.preprocess import PipelineConfig
from common.record import clip
from common.safefile import open_regular

FORMAT = "ecgfl-checkpoint/1"
_KEYS = ("model", "label_space", "state_dict", "pipeline_fingerprint", "pipeline_config", "meta")
#: Far larger than any ecgfl model (Ribeiro's ResNet, 6.8 M parameters, is 27 MB at float32);
#: torch.load holds the whole file in memory.
MAX_CHECKPOINT_BYTES = 1 << 30


def _plain(obj: object) -> object:
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, tensors
        return obj.tolist()
    raise TypeError(f"checkpoint metadata must be plain data, got {type(obj).__name__}")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    model_cfg: ModelConfig
    space: LabelSpace
    state_dict: dict[str, torch.Tensor]
    pipeline_fingerprint: str
    pipeline_config: dict
    meta: dict

    def build_model(self) -> ECGClassifier:
        """The network with these weights, in eval mode, on the CPU."""
        model = self.model_cfg.build(n_classes=len(self.space))
        model.load_state_dict(self.state_dict)
        return model.eval()

    def require_pipeline(self, fingerprint: str) -> None:
        """Refuse data prepared with a different preprocessing pipeline."""
        if fingerprint != self.pipeline_fingerprint:
            raise DataError(
                f"checkpoint {self.path} was trained on pipeline {self.pipeline_fingerprint}, "
                f"data prepared with {fingerprint}: re-prepare the cache with the checkpoint's "
                f"pipeline ({json.dumps(self.pipeline_config, sort_keys=True)})"
            )


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    model_cfg: ModelConfig,
    space: LabelSpace,
    pipeline_fingerprint: str,
    pipeline_config: dict,
    **meta: object,
) -> Path:
    """Write atomically (temp file + rename): a crash mid-save never leaves a half checkpoint."""
    path = Path(path)
    n_out = model.head.out_features
    if n_out != len(space):
        raise ValueError(f"model has {n_out} outputs, label space {space.name!r} {len(space)}")
    payload = {
        "format": FORMAT,
        "model": model_cfg.to_dict(),
        "label_space": space.to_dict(),
        "pipeline_fingerprint": str(pipeline_fingerprint),
        # JSON round trip: only plain types remain, so loading can stay weights_only.
        "pipeline_config": json.loads(json.dumps(pipeline_config, default=_plain)),
        "meta": json.loads(json.dumps(meta, default=_plain)),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """A checkpoint that builds: any file that is not one ends in one ConfigError naming it."""
    path = Path(path)
    if not os.path.lexists(path):
        raise ConfigError(f"{path}: no such checkpoint")
    with open_regular(path, "checkpoint", MAX_CHECKPOINT_BYTES, None) as fh:
        try:
            data = torch.load(fh, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises assorted pickle/zip errors for a damaged file
            reason = f"not a readable ecgfl checkpoint ({type(exc).__name__}: {exc})"
            raise ConfigError(f"{path}: {clip(reason)}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path}: not an ecgfl checkpoint (expected format {FORMAT})")
    missing = [key for key in _KEYS if key not in data]
    if missing:
        raise ConfigError(f"{path}: checkpoint lacks {missing}")
    thresholds = data["meta"].get("thresholds", {}) if isinstance(data["meta"], dict) else None
    if not isinstance(thresholds, dict) or not isinstance(data["state_dict"], dict):
        raise ConfigError(f"{path}: checkpoint's meta, thresholds or state_dict is no mapping")
    try:
        ckpt = Checkpoint(
            path=path,
            model_cfg=from_dict(ModelConfig, data["model"], f"{path}: model"),
            space=LabelSpace.from_dict(data["label_space"], origin=f"{path}: label_space"),
            state_dict=data["state_dict"],
            pipeline_fingerprint=str(data["pipeline_fingerprint"]),
            pipeline_config=data["pipeline_config"],
            meta=data["meta"],
        )
        PipelineConfig(**ckpt.pipeline_config).validate()
        ckpt.build_model()
    except Exception as exc:  # wrong shapes, foreign keys, a config from another version
        reason = f"not a usable ecgfl checkpoint ({type(exc).__name__}: {exc})"
        raise ConfigError(f"{path}: {clip(reason, 600)}") from None
    return ckpt
