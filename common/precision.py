"""The number format training computes in: float32, or bfloat16 autocast where the hardware does
bfloat16 natively. On a CPU with AMX or AVX512-BF16 (Xeon since Cooper Lake / Sapphire Rapids)
bf16 autocast trains ribeiro_resnet about 2.2x faster than float32 (docs/benchmarks.md);
elsewhere bf16 is emulated and slower, so ``auto`` means float32 there. Weights, optimizer state,
the loss and evaluation stay float32: only the convolutions and matmuls of the forward pass (and
their gradients) run in bf16.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")
#: /proc/cpuinfo flags of CPUs that compute bf16 products in hardware.
_BF16_FLAGS = {"amx_bf16", "avx512_bf16"}


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (Linux: its flags; elsewhere: assume not)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(_BF16_FLAGS & set(line.split(":", 1)[1].split()))
    return False


def resolve(precision: str, device: torch.device, private: bool = False) -> str:
    """'fp32' or 'bf16' for ``device``: ``auto`` picks bf16 where it is native, and never under
    DP-SGD (Opacus computes per-record gradients in float32)."""
    if precision != "auto":
        return precision
    if private:
        return "fp32"
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()
    return "bf16" if native else "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward pass's context for a resolved ``precision``."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
