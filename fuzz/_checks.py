"""Invariants shared by several harnesses (imported after ``_harness.setup``)."""

from __future__ import annotations

import math

from cmlp.errors import CmlpError
from cmlp.transport.wire import DType, Tensor


def check_tensor(payload) -> Tensor | None:
    """Decode a tensor payload; on success check it is self-consistent and round-trips.

    Returns None when the payload is rejected with a typed error (expected);
    any other exception or a broken invariant propagates as a finding.
    """
    try:
        tensor = Tensor.from_payload(payload)
    except CmlpError:
        return None
    raw = bytes(payload)
    dtype = DType(tensor.dtype)
    assert isinstance(tensor.shape, tuple) and len(tensor.shape) <= 32, tensor.shape
    assert tensor.data.dtype == dtype.numpy, (tensor.data.dtype, dtype)
    assert tensor.data.size == math.prod(tensor.shape), (tensor.data.shape, tensor.shape)
    if len(tensor.shape) != 1:
        assert tensor.data.shape == tensor.shape, (tensor.data.shape, tensor.shape)
    assert tensor.nbytes == tensor.data.size * dtype.itemsize
    # data is the tail of the payload, and re-encoding gives the same bytes
    assert tensor.data.tobytes() == raw[len(raw) - tensor.nbytes :]
    assert tensor.encode() == raw, "tensor re-encode differs from the decoded payload"
    return tensor
