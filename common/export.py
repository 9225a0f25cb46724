"""ONNX export, so a hospital can run a trained model without PyTorch (e.g. onnxruntime)."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import onnx
import torch

from common.record import LEADS


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
    ``metadata_props`` (what the logits mean, how to preprocess) with the lead order the input
    expects, so the file is self-describing. Like a checkpoint, it is written readable by its
    owner only: a model trained on patient data is protected like the data.

    Uses the TorchScript exporter: the newer dynamo exporter needs onnxscript, which ecgfl does
    not depend on. The caller's model is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)  # before a byte is written, also when the file existed
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
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {"leads": ",".join(LEADS[:n_leads]), **(metadata or {})})
    onnx.save(proto, str(path))
    return path
