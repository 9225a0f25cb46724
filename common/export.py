"""ONNX export, so a hospital can run a trained model without PyTorch (e.g. onnxruntime)."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import onnx
import torch


def export_onnx(
    model: torch.nn.Module,
    input_length: int,
    path: str | Path,
    n_leads: int = 12,
    opset: int = 17,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``model`` (in eval mode, on the CPU) to ``path``: input ``ecg`` (batch, leads, time),
    output ``logits`` (batch, labels), batch size free. ``metadata`` goes into the file's
    ``metadata_props`` (what the logits mean, how to preprocess), so the file is self-describing.

    Uses the TorchScript exporter: the newer dynamo exporter needs onnxscript, which ecgfl does
    not depend on. The caller's model is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).cpu().eval()
    example = torch.zeros(2, n_leads, input_length)
    with warnings.catch_warnings():
        # The exporter's own deprecation notices, and the tracer flagging GroupNorm's train-time
        # batch-size check, which an eval-mode graph never runs: noise to whoever exports.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=["ecg"],
            output_names=["logits"],
            dynamic_axes={"ecg": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
        )
    if metadata:
        proto = onnx.load(str(path))
        onnx.helper.set_model_props(proto, metadata)
        onnx.save(proto, str(path))
    return path
