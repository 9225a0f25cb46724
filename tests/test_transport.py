import numpy as np
import torch
from flwr.app import ArrayRecord

from common.transport import from_wire, nbytes, to_wire


def test_float16_transport_halves_float_arrays_and_keeps_integers():
    record = ArrayRecord({"w": torch.randn(64, 32), "steps": torch.tensor(7)})
    wire = to_wire(record, "float16")
    assert wire["w"].dtype == "float16" and wire["steps"].dtype == "int64"
    assert nbytes(wire) == 64 * 32 * 2 + 8
    back = from_wire(wire)
    assert back["w"].dtype == "float32"
    np.testing.assert_allclose(back["w"].numpy(), record["w"].numpy(), rtol=1e-3, atol=1e-4)
    assert back["steps"].numpy() == 7


def test_float32_transport_is_untouched():
    record = ArrayRecord({"w": torch.randn(3)})
    assert to_wire(record, "float32") is record and from_wire(record) is record
