"""What crosses the network: model arrays in float32, or float16 to halve the bytes.

Only floating-point arrays change type; the coordinator widens replies back to float32 before
aggregating, so rounding happens on the wire only, never in the running sums.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import Array, ArrayRecord

TRANSPORTS = ("float32", "float16")


def _cast(record: ArrayRecord, dtype: str) -> ArrayRecord:
    out = {}
    for key, array in record.items():
        value = array.numpy()
        out[key] = Array(value.astype(dtype) if np.issubdtype(value.dtype, np.floating) else value)
    return ArrayRecord(out)


def to_wire(record: ArrayRecord, transport: str) -> ArrayRecord:
    return record if transport == "float32" else _cast(record, transport)


def from_wire(record: ArrayRecord) -> ArrayRecord:
    """Floating-point arrays back to float32 (a no-op for float32 transport)."""
    if all(a.dtype != "float16" for a in record.values()):
        return record
    return _cast(record, "float32")


def nbytes(record: ArrayRecord) -> int:
    """Payload size of the arrays (what dominates a message), from their shapes and types:
    the coordinator counts every reply, and decoding one to count it costs milliseconds."""
    return sum(math.prod(array.shape) * np.dtype(array.dtype).itemsize for array in record.values())
