"""Review items of issue 10 that are not attacks of their own."""

import socket

import pytest

from cmlp import _frame, _netio


@pytest.mark.parametrize("timeout", [1e300, float("inf"), 9.3e9, -1.0])
def test_huge_timeouts_are_not_cast_out_of_int64(timeout):
    """``timeout * 1e9`` used to be cast to int64 unchecked (undefined behaviour: a
    negative deadline timed out at once).  Huge timeouts now mean "no deadline"."""
    a, b = socket.socketpair()
    try:
        assert _netio.send_all(a.fileno(), b"x" * 13, 13, timeout) == 13
        dec = _frame.FrameDecoder()
        assert dec.fill(b.fileno(), timeout) == 13
    finally:
        a.close()
        b.close()
