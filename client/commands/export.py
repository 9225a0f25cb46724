"""Export a checkpoint to ONNX and prove the file computes what PyTorch computes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from common.checkpoint import Checkpoint, load_checkpoint
from common.export import export_onnx

TOLERANCE = 1e-4


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="checkpoint to export")
    p.add_argument("--onnx", type=Path, required=True, help="ONNX file to write")


def max_difference(model: torch.nn.Module, path: Path, input_length: int, n_leads: int) -> float:
    """Largest |logit difference| between onnxruntime and PyTorch on random input."""
    x = torch.randn(4, n_leads, input_length, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"ecg": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    return float(np.abs(onnx_logits - expected).max())


def metadata(ckpt: Checkpoint) -> dict[str, str]:
    """What an ONNX user needs besides the graph, as JSON strings in ``metadata_props``."""
    return {
        "ecgfl.labels": json.dumps(list(ckpt.space.labels)),
        "ecgfl.label_space": json.dumps(ckpt.space.to_dict()),
        "ecgfl.pipeline": json.dumps(ckpt.pipeline_config, sort_keys=True),
        "ecgfl.pipeline_fingerprint": ckpt.pipeline_fingerprint,
        "ecgfl.thresholds": json.dumps(ckpt.meta.get("thresholds") or {}),
        "ecgfl.output": "logits; sigmoid gives each label's probability",
    }


def run(args: argparse.Namespace) -> int:
    ckpt = load_checkpoint(args.model)
    model, cfg = ckpt.build_model(), ckpt.model_cfg
    path = export_onnx(
        model, cfg.input_length, args.onnx, n_leads=cfg.n_leads, metadata=metadata(ckpt)
    )
    diff = max_difference(model, path, cfg.input_length, cfg.n_leads)
    print(f"wrote {path}: input 'ecg' (batch, {cfg.n_leads}, {cfg.input_length}) at {cfg.fs:g} Hz")
    labels = ", ".join(ckpt.space.labels)
    print(f"output 'logits' (batch, {len(ckpt.space)}); their sigmoids are P({labels})")
    print(f"preprocessing (apply before the model): {ckpt.pipeline_config}")
    print("labels, label space, pipeline and thresholds are stored in the file's metadata_props")
    if diff > TOLERANCE:
        print(f"MISMATCH: onnxruntime and PyTorch differ by up to {diff:.2e} (> {TOLERANCE:g})")
        return 1
    print(f"verified: onnxruntime matches PyTorch within {TOLERANCE:g} (max |diff| {diff:.1e})")
    return 0
